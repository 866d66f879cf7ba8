"""GBNF grammars from JSON schemas: what makes a small model's tool call well formed.

GBNF (llama.cpp's grammar format) is the constraint language hanlin's
protocols speak. ``GrammarBuilder`` lets a protocol combine fixed text with
JSON that must match a tool's schema, e.g. ``"Action: " ("add" "\\nAction
Input: " add-args)``. Rules are named after their schema so several tools'
argument grammars coexist in one grammar. Whitespace and number lengths are
bounded so a constrained model cannot pad forever.
"""

from __future__ import annotations

import json
import re
from typing import Any

from hanlin.errors import ConfigurationError

_PRIMITIVES = {
    "ws": "[ \\t\\n]{0,20}",
    "char": '[^"\\\\\\x00-\\x1f] | "\\\\" (["\\\\/bfnrt] | "u" [0-9a-fA-F]{4})',
    "string": '"\\"" char* "\\""',
    "integer": '"-"? ("0" | [1-9] [0-9]{0,17})',
    "number": 'integer ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,3})?',
    "boolean": '"true" | "false"',
    "null": '"null"',
    "value": "object | array | string | number | boolean | null",
    "object": '"{" ws ( string ws ":" ws value ( ws "," ws string ws ":" ws value )* )? ws "}"',
    "array": '"[" ws ( value ( ws "," ws value )* )? ws "]"',
}
_TYPE_RULE = {"string": "string", "integer": "integer", "number": "number", "boolean": "boolean", "null": "null"}
_MAX_BOUNDED = 32  # repetition bounds above this are left open (llama.cpp expands {m,n} into rules)


def gbnf_literal(text: str) -> str:
    """``text`` as a GBNF string literal."""
    escaped = (
        text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    )
    return f'"{escaped}"'


def _rule_name(name: str) -> str:
    cleaned = re.sub(r"[^a-zA-Z0-9-]+", "-", name).strip("-").lower()
    return cleaned or "rule"


class GrammarBuilder:
    """Collects named rules and renders them as one grammar."""

    def __init__(self) -> None:
        self.rules: dict[str, str] = {}
        self._root_schema: dict[str, Any] = {}
        self._scope = "schema"  # $ref rules are named within the schema being added

    def add(self, name: str, body: str) -> str:
        name = _rule_name(name)
        self.rules[name] = body
        return name

    def _primitive(self, name: str) -> str:
        if name not in self.rules:
            deps = {"string": ["char"], "number": ["integer"], "value": ["object", "array", "string", "number", "boolean", "null"],
                    "object": ["ws", "string", "value"], "array": ["ws", "value"]}
            self.rules[name] = _PRIMITIVES[name]
            for dep in deps.get(name, []):
                self._primitive(dep)
        return name

    def schema(self, schema: dict[str, Any] | bool, name: str) -> str:
        """Add rules for JSON matching ``schema`` under rule ``name``; returns the rule name."""
        self._root_schema = schema if isinstance(schema, dict) else {}
        self._scope = _rule_name(name)
        return self._visit(schema, self._scope)

    def render(self, root: str = "root") -> str:
        if root not in self.rules:
            raise ConfigurationError(f"grammar has no rule named {root!r}; add it before rendering")
        order = [root, *(n for n in self.rules if n != root)]
        return "\n".join(f"{n} ::= {self.rules[n]}" for n in order) + "\n"

    # ---- the schema walk -------------------------------------------------------------------
    def _visit(self, schema: dict[str, Any] | bool, name: str) -> str:
        if schema is True or schema == {}:
            return self._primitive("value")
        if schema is False:
            raise ConfigurationError(f"schema for {name!r} is `false`: nothing can match it")
        if "$ref" in schema:
            return self._ref(schema["$ref"])
        if "const" in schema:
            return self.add(name, gbnf_literal(json.dumps(schema["const"], ensure_ascii=False)))
        if "enum" in schema:
            options = [gbnf_literal(json.dumps(v, ensure_ascii=False)) for v in schema["enum"]]
            return self.add(name, " | ".join(options) or '"null"')
        for key in ("anyOf", "oneOf"):
            if key in schema:
                alts = [self._visit(sub, f"{name}-{i}") for i, sub in enumerate(schema[key])]
                return self.add(name, " | ".join(alts))
        if "allOf" in schema:
            parts = schema["allOf"]
            if len(parts) == 1:
                return self._visit(parts[0], name)
            return self._primitive("value")  # merging schemas is out of scope: accept any JSON
        kind = schema.get("type")
        if isinstance(kind, list):
            alts = [self._visit({**schema, "type": t}, f"{name}-{t}") for t in kind]
            return self.add(name, " | ".join(alts))
        if kind == "object" or (kind is None and "properties" in schema):
            return self._object(schema, name)
        if kind == "array":
            return self._array(schema, name)
        if kind == "string":
            return self._string(schema, name)
        if kind in _TYPE_RULE:
            return self._primitive(_TYPE_RULE[kind])
        return self._primitive("value")

    def _ref(self, ref: str) -> str:
        match = re.fullmatch(r"#/(\$defs|definitions)/(.+)", ref)
        target = (self._root_schema.get(match.group(1), {}) or {}).get(match.group(2)) if match else None
        if target is None:
            raise ConfigurationError(f"cannot resolve $ref {ref!r}: only local '#/$defs/...' references are supported")
        name = _rule_name(f"{self._scope}-ref-{match.group(2)}")
        if name not in self.rules:
            self.rules[name] = '"null"'  # placeholder: breaks recursion, replaced right below
            self.rules[name] = self.rules.pop(self._visit(target, name + "-body"))
        return name

    def _object(self, schema: dict[str, Any], name: str) -> str:
        props: dict[str, Any] = schema.get("properties") or {}
        if not props:
            return self._primitive("object")
        self._primitive("ws")
        required = [p for p in props if p in set(schema.get("required", []))]
        optional = [p for p in props if p not in required]
        pair = {
            p: f'{gbnf_literal(json.dumps(p, ensure_ascii=False))} ws ":" ws {self._visit(props[p], f"{name}-{p}")}'
            for p in props
        }
        # rest_i: optionally ", <optional i>" then rest_{i+1}; keeps the rule count linear.
        rest = ""
        for i in range(len(optional) - 1, -1, -1):
            rest_name = self.add(f"{name}-rest{i}", f'( ws "," ws {pair[optional[i]]} )? {rest}'.strip())
            rest = rest_name
        if required:
            body = ' ws "," ws '.join(pair[p] for p in required) + (f" {rest}" if rest else "")
        else:
            firsts = []
            for i, p in enumerate(optional):
                following = self.rules.get(_rule_name(f"{name}-rest{i + 1}")) and _rule_name(f"{name}-rest{i + 1}")
                firsts.append(f"{pair[p]} {following or ''}".strip())
            body = f"( {' | '.join(firsts)} )?"
        return self.add(name, f'"{{" ws {body} ws "}}"')

    def _array(self, schema: dict[str, Any], name: str) -> str:
        item = self._visit(schema.get("items", {}), f"{name}-item")
        self._primitive("ws")
        low = int(schema.get("minItems", 0))
        high = schema.get("maxItems")
        more = f'( ws "," ws {item} )'
        if high is not None and int(high) <= _MAX_BOUNDED:
            high = int(high)
            if high == 0:
                return self.add(name, '"[" ws "]"')
            tail = f"{more}{{{max(low - 1, 0)},{high - 1}}}"
        else:
            tail = f"{more}{{{max(low - 1, 0)},}}" if low > 1 else f"{more}*"
        inner = f"{item} {tail}"
        if low == 0:
            inner = f"( {inner} )?"
        return self.add(name, f'"[" ws {inner} ws "]"')

    def _string(self, schema: dict[str, Any], name: str) -> str:
        self._primitive("string")
        low, high = schema.get("minLength"), schema.get("maxLength")
        if low is None and high is None:
            return "string"
        low = int(low or 0)
        if high is not None and int(high) <= _MAX_BOUNDED:
            reps = f"{{{low},{int(high)}}}"
        else:
            reps = f"{{{low},}}" if low else "*"
        return self.add(name, f'"\\"" char{reps} "\\""')


def json_schema_grammar(schema: dict[str, Any]) -> str:
    """A whole grammar whose root is JSON text matching ``schema``."""
    builder = GrammarBuilder()
    top = builder.schema(schema, "root-value")
    builder.add("root", top)
    return builder.render("root")
