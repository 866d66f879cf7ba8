"""GBNF grammars from JSON schemas: what makes a small model's tool call well formed.

GBNF (llama.cpp's grammar format) is the constraint language hanlin's
protocols speak. ``GrammarBuilder`` lets a protocol combine fixed text with
JSON that must match a tool's schema, e.g. ``"Action: " ("add" "\\nAction
Input: " add-args)``.

Naming: a schema added under ``name`` gets exactly that rule; its sub-rules
are called ``name--<part>``. User-facing names never contain ``--`` (they are
cleaned to single dashes), so several tools' argument grammars and the
protocol's own rules cannot collide.

Bounds: whitespace runs and number lengths are bounded so a constrained model
cannot pad forever. Keywords the walk does not understand make the grammar
*more* permissive (it may accept JSON the schema rejects), never less: a tool
call the schema allows is always producible. Two deliberate narrowings keep
small models on rails: object properties come in one fixed order (required
first, then optional, each in declared order) with no extra keys, and
``enum``/``const`` values match in their canonical ``json.dumps`` spelling.
Unsatisfiable schemas and unresolvable ``$ref`` raise ConfigurationError.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hanlin.errors import ConfigurationError

# Shared rules, added once on first use. `char` is one JSON string character: raw control characters are excluded.
_PRIMITIVES = {
    "ws": "[ \\t\\n]{0,20}",
    "char": '[^"\\\\\\x00-\\x1f] | "\\\\" (["\\\\/bfnrt] | "u" [0-9a-fA-F]{4})',
    "string": '"\\"" char* "\\""',
    "integer": '"-"? ("0" | [1-9] [0-9]{0,18})',
    "number": 'integer ("." [0-9]{1,24})? ([eE] [-+]? [0-9]{1,3})?',
    "boolean": '"true" | "false"',
    "null": '"null"',
    "value": "object | array | string | number | boolean | null",
    "object": '"{" ws ( string ws ":" ws value ( ws "," ws string ws ":" ws value )* )? ws "}"',
    "array": '"[" ws ( value ( ws "," ws value )* )? ws "]"',
}
_DEPENDS = {
    "string": ("char",), "number": ("integer",), "object": ("ws", "string", "value"), "array": ("ws", "value"),
    "value": ("object", "array", "string", "number", "boolean", "null"),
}
_TYPE_RULE = {"string": "string", "integer": "integer", "number": "number", "boolean": "boolean", "null": "null"}
_MAX_BOUNDED = 32  # larger item-count bounds are left open: llama.cpp expands {m,n} into m..n copies of the item
# A string is repeated *characters*: llama.cpp's expansion of char{0,n} stays cheap there (measured: 1,000 bounded
# characters cost the same per token as an unbounded string on SmolLM2), so string lengths keep much larger bounds.
_MAX_BOUNDED_CHARS = 4096
# Bounds for agent steps (see GrammarBuilder). A small model's runaway is one line or one argument string that
# repeats itself; bounded, it ends as a well-formed step. An ASCII character is at least one token's worth of text,
# so a step of one bounded line plus one runaway string always fits in STEP_MAX_TOKENS (measured: SmolLM2 looped
# inside "expression" until the runtime's default 512 tokens on 15 of 29 constrained steps before these bounds;
# with 1,000-character strings its 2,048-token context then filled after two runaway steps).
STEP_LINE_CHARS = 300  # a Thought / Plan line
STEP_STRING_CHARS = 500  # an open JSON string in a tool's arguments (a tool's own maxLength wins), a final answer
STEP_MAX_TOKENS = 2048  # the step's max_tokens when the app sets none (Constraint.max_tokens)


def line_rule(max_chars: int = STEP_LINE_CHARS) -> str:
    """GBNF for one non-empty line of at most ``max_chars`` characters (no newline)."""
    return f"[^\\n]{{1,{max_chars}}}"


_IDENT = re.compile(r"[A-Za-z0-9-]+")
_NOT_RULE_NAMES = re.compile(r'"(?:[^"\\]|\\.)*"|\[(?:[^\]\\]|\\.)*\]|\{[^}]*\}')  # literals, classes, repeats


def gbnf_literal(text: str) -> str:
    """``text`` as a GBNF string literal.

    Non-ASCII stays as UTF-8 (llama.cpp matches code points); control
    characters become escapes so the grammar text stays one rule per line.
    """
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _rule_name(name: str) -> str:
    """A valid GBNF rule name without ``--`` (reserved for sub-rules)."""
    cleaned = re.sub(r"[^a-zA-Z0-9]+", "-", str(name)).strip("-")
    return cleaned or "rule"


def _json_literal(value: Any) -> str:
    return gbnf_literal(json.dumps(value, ensure_ascii=False, separators=(", ", ": ")))


def _count(schema: dict[str, Any], key: str) -> int | None:
    """A usable non-negative count, or None: a malformed bound is ignored (more permissive), not fatal."""
    value = schema.get(key)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _bounds(schema: dict[str, Any], low_key: str, high_key: str, limit: int = _MAX_BOUNDED) -> tuple[int, int | None]:
    """(low, high) as a repetition can enforce them; bounds too large to expand are dropped (more permissive)."""
    low, high = _count(schema, low_key) or 0, _count(schema, high_key)
    if high is not None and low > high:
        raise ConfigurationError(f"{low_key}={low} is larger than {high_key}={high}: no value can match")
    if high is not None and high > limit:
        high = None
    if low > limit:
        low = 0
    return low, high


class GrammarBuilder:
    """Collects named rules and renders them as one grammar.

    ``max_string_chars`` bounds every JSON string the schemas leave open. A grammar forces the *shape* of the
    output but cannot make a small model stop a runaway string; a bound can, so an agent step always finishes as
    a well-formed call (whose odd argument the tool then reports) instead of running until max_tokens.
    """

    def __init__(self, max_string_chars: int | None = None) -> None:
        if max_string_chars is not None and not 1 <= max_string_chars <= _MAX_BOUNDED_CHARS:
            raise ConfigurationError(f"max_string_chars must be between 1 and {_MAX_BOUNDED_CHARS}, got {max_string_chars}")
        self.max_string_chars = max_string_chars
        self.rules: dict[str, str] = {}
        self._root_schema: dict[str, Any] = {}
        self._refs: dict[str, str] = {}  # $ref -> rule, for the schema being added
        self._left: set[str] = set()  # $refs entered since the last consumed character: re-entry is left recursion
        self._top = "schema"  # the rule of the schema being added: $ref rules are named under it

    # ---- public ----------------------------------------------------------------------------
    def add(self, name: str, body: str) -> str:
        """Define (or redefine) rule ``name``; returns the cleaned name to refer to it by."""
        name = _rule_name(name)
        if name in _PRIMITIVES:
            raise ConfigurationError(f"rule name {name!r} is reserved for the shared JSON rules; pick another name")
        self.rules[name] = body
        return name

    def schema(self, schema: dict[str, Any] | bool, name: str) -> str:
        """Add rules for JSON text matching ``schema`` as rule ``name`` (sub-rules ``name--*``); returns ``name``."""
        top = _rule_name(name)
        if top in _PRIMITIVES or top in self.rules:
            raise ConfigurationError(f"rule {top!r} already exists; give each schema its own name")
        self._root_schema = schema if isinstance(schema, dict) else {}
        self._refs, self._left, self._top = {}, set(), top
        before = dict(self.rules)
        self.rules[top] = ""  # reserved while the walk names sub-rules
        try:
            self.rules[top] = self._body(schema, top)
        except BaseException:
            self.rules = before  # a failed schema leaves the builder as it was
            raise
        return top

    def render(self, root: str = "root") -> str:
        """The grammar text, ``root`` first; every rule a body mentions must exist."""
        if root not in self.rules:
            raise ConfigurationError(f"grammar has no rule named {root!r}; add it before rendering")
        missing = sorted(
            {ref for body in self.rules.values() for ref in _IDENT.findall(_NOT_RULE_NAMES.sub(" ", body))}
            - set(self.rules)
        )
        if missing:
            raise ConfigurationError(f"grammar rules refer to undefined rules {missing}; add them before rendering")
        order = [root, *(n for n in self.rules if n != root)]
        return "\n".join(f"{n} ::= {self.rules[n]}" for n in order) + "\n"

    # ---- naming ----------------------------------------------------------------------------
    def _primitive(self, name: str) -> str:
        if name not in self.rules:
            self.rules[name] = _PRIMITIVES[name]
            if name == "string" and self.max_string_chars is not None:
                self.rules[name] = f'"\\"" char{{0,{self.max_string_chars}}} "\\""'
            for dep in _DEPENDS.get(name, ()):
                self._primitive(dep)
        return name

    def _reserve(self, parent: str, part: str) -> str:
        base = f"{parent}--{_rule_name(part)}" if "--" not in parent else f"{parent}-{_rule_name(part)}"
        name, n = base, 2
        while name in self.rules:
            name, n = f"{base}-{n}", n + 1
        self.rules[name] = ""
        return name

    def _child(self, schema: Any, parent: str, part: str) -> str:
        """A rule name matching ``schema``: a shared primitive, a $ref rule, or a new sub-rule."""
        name = self._reserve(parent, part)
        body = self._body(schema, name)
        if _IDENT.fullmatch(body):  # an alias: use the target directly
            del self.rules[name]
            return body
        self.rules[name] = body
        return name

    @contextmanager
    def _consumed(self) -> Iterator[None]:
        """Inside brackets or quotes input has been consumed, so recursion there is fine."""
        saved, self._left = self._left, set()
        try:
            yield
        finally:
            self._left = saved

    # ---- the schema walk: each returns a rule body -----------------------------------------
    def _body(self, schema: Any, name: str) -> str:
        if schema is True:
            return self._primitive("value")
        if schema is False:
            raise ConfigurationError(f"schema for {name!r} is `false`: nothing can match it")
        if not isinstance(schema, dict):
            raise ConfigurationError(f"a JSON schema must be an object or a boolean, got {schema!r} for {name!r}")
        if "$ref" in schema:
            return self._ref(schema["$ref"])
        if "const" in schema:
            return _json_literal(schema["const"])
        if "enum" in schema:
            if not isinstance(schema["enum"], list) or not schema["enum"]:
                raise ConfigurationError(f"enum for {name!r} must be a non-empty list, got {schema['enum']!r}")
            return " | ".join(dict.fromkeys(_json_literal(v) for v in schema["enum"]))
        for key in ("anyOf", "oneOf"):
            if key in schema:
                alternatives = schema[key]
                if not isinstance(alternatives, list) or not alternatives:
                    raise ConfigurationError(f"{key} for {name!r} must be a non-empty list, got {alternatives!r}")
                return " | ".join(dict.fromkeys(self._child(sub, name, str(i)) for i, sub in enumerate(alternatives)))
        if "allOf" in schema:
            parts = schema["allOf"]
            if isinstance(parts, list) and len(parts) == 1:
                return self._body(parts[0], name)
            return self._primitive("value")  # merging schemas is out of scope: accept any JSON
        kind = schema.get("type")
        if isinstance(kind, list):
            if not kind:
                return self._primitive("value")
            return " | ".join(dict.fromkeys(self._child({**schema, "type": t}, name, str(t)) for t in kind))
        if kind == "object" or (kind is None and "properties" in schema):
            with self._consumed():
                return self._object(schema, name)
        if kind == "array":
            with self._consumed():
                return self._array(schema, name)
        if kind == "string":
            return self._string(schema)
        if kind in _TYPE_RULE:
            return self._primitive(_TYPE_RULE[kind])
        return self._primitive("value")  # no type, or one we do not know: any JSON

    def _ref(self, ref: Any) -> str:
        if ref in self._left:
            raise ConfigurationError(f"$ref {ref!r} refers back to itself before any input: the grammar would loop")
        if ref in self._refs:
            return self._refs[ref]
        target = self._resolve(ref)
        name = self._reserve(self._top, ref.rsplit("/", 1)[-1] or "root")
        self._refs[ref] = name
        self._left.add(ref)
        try:
            body = self._body(target, name)
        finally:
            self._left.discard(ref)
        self.rules[name] = body
        return name

    def _resolve(self, ref: Any) -> Any:
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise ConfigurationError(
                f"cannot resolve $ref {ref!r}: only local references ('#/$defs/Name') are supported"
            )
        node: Any = self._root_schema
        for raw in [p for p in ref[1:].split("/") if p]:
            key = raw.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and key in node:
                node = node[key]
            elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            else:
                raise ConfigurationError(f"cannot resolve $ref {ref!r}: {key!r} is not in the schema")
        return node

    def _object(self, schema: dict[str, Any], name: str) -> str:
        props = schema.get("properties")
        props = dict(props) if isinstance(props, dict) else {}
        required = schema.get("required")
        required = [r for r in required if isinstance(r, str)] if isinstance(required, list) else []
        for extra in required:
            props.setdefault(extra, {})  # required but undeclared: any value
        for key in [k for k, v in props.items() if v is False]:  # may never appear
            if key in required:
                raise ConfigurationError(f"property {key!r} of {name!r} is required but its schema is `false`")
            del props[key]
        ws = self._primitive("ws")
        if not props:
            extra = schema.get("additionalProperties")
            if extra is False:
                return f'"{{" {ws} "}}"'
            if isinstance(extra, dict) and extra:  # a mapping such as dict[str, int]
                pair = f'{self._primitive("string")} {ws} ":" {ws} {self._child(extra, name, "value")}'
                return f'"{{" {ws} ( {pair} ( {ws} "," {ws} {pair} )* )? {ws} "}}"'
            return self._primitive("object")
        pair = {
            key: f'{_json_literal(key)} {ws} ":" {ws} {self._child(sub, name, key)}' for key, sub in props.items()
        }
        must = [k for k in props if k in required]
        optional = [k for k in props if k not in required]
        # rest[i] matches any ordered subset of optional[i:], each preceded by a comma: linear in rule count.
        rest: list[str] = [""] * (len(optional) + 1)
        for i in range(len(optional) - 1, -1, -1):
            rest[i] = self._reserve(name, f"rest{i}")
            self.rules[rest[i]] = f'( {ws} "," {ws} {pair[optional[i]]} )? {rest[i + 1]}'.strip()
        if must:
            body = f' {ws} "," {ws} '.join(pair[k] for k in must) + (f" {rest[0]}" if optional else "")
        else:
            body = "( " + " | ".join(f"{pair[k]} {rest[i + 1]}".strip() for i, k in enumerate(optional)) + " )?"
        return f'"{{" {ws} {body} {ws} "}}"'

    def _array(self, schema: dict[str, Any], name: str) -> str:
        ws = self._primitive("ws")
        items = schema.get("items", {})
        prefix = schema.get("prefixItems")
        low, high = _bounds(schema, "minItems", "maxItems")
        if isinstance(prefix, list) and prefix:
            fixed = len(prefix) <= _MAX_BOUNDED and low >= len(prefix) and (items is False or high == len(prefix))
            if not fixed:
                return self._primitive("array")  # variable tuples: any array
            parts = [self._child(sub, name, f"item{i}") for i, sub in enumerate(prefix)]
            return f'"[" {ws} ' + f' {ws} "," {ws} '.join(parts) + f' {ws} "]"'
        if items is False or high == 0:
            return f'"[" {ws} "]"'
        item = self._child(items if items is not None else {}, name, "item")
        more = f'( {ws} "," {ws} {item} )'
        if high is not None:
            tail = f"{more}{{{max(low - 1, 0)},{high - 1}}}"
        else:
            tail = f"{more}{{{low - 1},}}" if low > 1 else f"{more}*"
        inner = f"{item} {tail}" if low else f"( {item} {tail} )?"
        return f'"[" {ws} {inner} {ws} "]"'

    def _string(self, schema: dict[str, Any]) -> str:
        string = self._primitive("string")
        low, high = _bounds(schema, "minLength", "maxLength", _MAX_BOUNDED_CHARS)
        if self.max_string_chars is not None and high is None:  # an explicit maxLength or minLength wins over the cap
            explicit = _count(schema, "maxLength")
            cap = min(explicit, _MAX_BOUNDED_CHARS) if explicit is not None else self.max_string_chars
            high = max(low, cap)
        if not low and high in (None, self.max_string_chars):
            return string
        reps = f"{{{low},{high}}}" if high is not None else f"{{{low},}}"
        return f'"\\"" char{reps} "\\""'


def json_schema_grammar(schema: dict[str, Any] | bool) -> str:
    """A whole grammar whose root is JSON text matching ``schema``."""
    builder = GrammarBuilder()
    builder.schema(schema, "root")
    return builder.render("root")
