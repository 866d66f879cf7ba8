"""JSON Schema -> GBNF, checked by llama.cpp itself.

Three kinds of evidence: llama.cpp compiles every grammar; llama.cpp's own
grammar matcher accepts JSON the schema allows and rejects JSON it forbids
(`Matcher`, token by token as in decoding); and SmolLM2 constrained by the
grammar writes JSON that pydantic validates strictly.
"""

from __future__ import annotations

import ctypes
import json
import math
from typing import Annotated, Any, Literal

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from hanlin import ConfigurationError
from hanlin.grammar import GrammarBuilder, gbnf_literal, json_schema_grammar
from tests.conftest import requires_llama, requires_smollm2, smollm2_path


@pytest.fixture(scope="module")
def raw_smollm2():
    """SmolLM2 on llama-cpp-python directly: grammars are tested independently of hanlin's runtime.

    One thread: on a shared, busy CPU llama.cpp's spinning worker threads slow decoding by 10-30x.
    """
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(smollm2_path()), n_ctx=1024, n_threads=1, verbose=False, seed=0)
    yield llm
    llm.close()


class Matcher:
    """llama.cpp's grammar sampler asked, token by token, whether a text is allowed and complete."""

    def __init__(self, llm: Any, grammar: str) -> None:
        import llama_cpp

        self.lib, self.llm, self.grammar = llama_cpp, llm, grammar
        self.sampler = llama_cpp.llama_sampler_init_grammar(llm._model.vocab, grammar.encode(), b"root")
        assert self.sampler, f"llama.cpp rejected the grammar:\n{grammar}"
        self.one = (llama_cpp.llama_token_data * 1)()
        self.array = llama_cpp.llama_token_data_array(data=self.one, size=1, selected=-1, sorted=False)

    def _allowed(self, token: int) -> bool:
        self.one[0].id, self.one[0].logit, self.one[0].p = token, 1.0, 0.0
        self.array.size, self.array.selected = 1, -1
        self.lib.llama_sampler_apply(self.sampler, ctypes.byref(self.array))
        return not math.isinf(self.one[0].logit)

    def represents(self, text: str) -> bool:
        """Whether the tokenizer round-trips ``text`` (SmolLM2's loses e.g. some unassigned code points)."""
        return self.llm.detokenize(self.llm.tokenize(text.encode(), add_bos=False, special=False)) == text.encode()

    def accepts(self, text: str) -> bool:
        assert self.represents(text), f"the tokenizer cannot represent {text!r}; test another text"
        self.lib.llama_sampler_reset(self.sampler)
        for token in self.llm.tokenize(text.encode(), add_bos=False, special=False):
            if not self._allowed(token):
                return False
            self.lib.llama_sampler_accept(self.sampler, token)
        return self._allowed(self.llm.token_eos())  # end of text is allowed only where the grammar is complete

    def close(self) -> None:
        self.lib.llama_sampler_free(self.sampler)


@pytest.fixture
def matcher(raw_smollm2):
    made: list[Matcher] = []

    def make(schema_or_grammar: dict[str, Any] | str) -> Matcher:
        grammar = schema_or_grammar if isinstance(schema_or_grammar, str) else json_schema_grammar(schema_or_grammar)
        made.append(Matcher(raw_smollm2, grammar))
        return made[-1]

    yield make
    for m in made:
        m.close()


# ---- models whose schemas are generated against and validated strictly ------------------------
class Address(BaseModel):
    model_config = ConfigDict(extra="forbid")
    city: str
    zip: str | None = None


class Person(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    age: int
    role: Literal["admin", "user"]
    tags: list[str] = Field(default_factory=list, max_length=3)  # maxItems: small models repeat list items otherwise
    address: Address
    score: float | None = None


class Point(BaseModel):
    model_config = ConfigDict(extra="forbid")
    x: int
    y: int
    label: str


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    verbose: bool | None = None
    limit: int | None = None


class Node(BaseModel):
    name: str
    children: list[Node] = []


GENERATED: dict[str, Any] = {
    "nested_defs": Person,
    "flat": Point,
    "optional_fields": Options,
    "enum": TypeAdapter(Literal["red", "green", "blue"]),
    "array": TypeAdapter(Annotated[list[int], Field(min_length=1, max_length=4)]),
    "nullable": TypeAdapter(str | None),
}


def _schema(kind: Any) -> dict[str, Any]:
    return kind.model_json_schema() if isinstance(kind, type) else kind.json_schema()


FLAT = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"}}, "required": ["a", "b"]}
COMPILED = {
    **{name: _schema(kind) for name, kind in GENERATED.items()},
    "flat_required": FLAT,
    "type_list": {"type": ["integer", "null"]},
    "recursive": Node.model_json_schema(),
    "tuple": TypeAdapter(tuple[int, str]).json_schema(),
    "unsupported": {"type": "string", "pattern": "^a+$", "format": "email", "not": {"const": "x"}},
    "all_of_two": {"allOf": [{"type": "integer"}, {"minimum": 0}]},
    "any": {},
}


# ---- pure-Python behaviour ----------------------------------------------------------------------
def test_literal_escaping() -> None:
    assert gbnf_literal('a"b\\c\nd\te') == '"a\\"b\\\\c\\nd\\te"'
    assert gbnf_literal("\x01\x7f") == '"\\x01\\x7f"'
    assert gbnf_literal("héllo 世界") == '"héllo 世界"'


def test_unresolvable_ref_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match=r"cannot resolve \$ref '#/\$defs/Missing'"):
        json_schema_grammar({"$ref": "#/$defs/Missing"})
    with pytest.raises(ConfigurationError, match=r"only local references"):
        json_schema_grammar({"$ref": "https://example.com/schema.json"})


@pytest.mark.parametrize(
    "schema,message",
    [
        ({"$defs": {"A": {"anyOf": [{"$ref": "#/$defs/A"}, {"type": "null"}]}}, "$ref": "#/$defs/A"}, "refers back"),
        ({"type": "array", "minItems": 3, "maxItems": 1}, "minItems=3 is larger than maxItems=1"),
        ({"enum": []}, "non-empty list"),
        ({"type": "object", "properties": {"a": False}, "required": ["a"]}, "required but its schema is `false`"),
        (False, "nothing can match"),
        (["not", "a", "schema"], "must be an object or a boolean"),
    ],
)
def test_unsatisfiable_schemas_are_clear_errors(schema: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("$", r"\$")):
        json_schema_grammar(schema)


def test_builder_names_and_checks() -> None:
    builder = GrammarBuilder()
    first = builder.schema({"$defs": {"T": {"type": "integer"}}, "$ref": "#/$defs/T"}, "first")
    second = builder.schema({"$defs": {"T": {"type": "string"}}, "$ref": "#/$defs/T"}, "second")
    assert (first, second) == ("first", "second")
    own = [n for n in builder.rules if n not in ("ws", "string", "char", "integer")]
    assert own and all(n in (first, second) or n.startswith((f"{first}--", f"{second}--")) for n in own), own
    with pytest.raises(ConfigurationError, match="already exists"):
        builder.schema({"type": "integer"}, "first")
    rules_before = dict(builder.rules)
    with pytest.raises(ConfigurationError, match="cannot resolve"):
        builder.schema({"type": "object", "properties": {"a": {"$ref": "#/$defs/Nope"}}}, "third")
    assert builder.rules == rules_before  # a failed schema leaves nothing half-built behind
    with pytest.raises(ConfigurationError, match="reserved for the shared JSON rules"):
        builder.add("string", '"x"')
    builder.add("root", "first | second | nowhere")
    with pytest.raises(ConfigurationError, match=r"undefined rules \['nowhere'\]"):
        builder.render()


# ---- llama.cpp: compiles, accepts, rejects ----------------------------------------------------
@pytest.mark.parametrize("name", sorted(COMPILED))
@requires_llama
@requires_smollm2
def test_llama_cpp_compiles_every_grammar(matcher, name: str) -> None:
    matcher(COMPILED[name])


@requires_llama
@requires_smollm2
def test_matcher_reports_a_broken_grammar(raw_smollm2) -> None:
    with pytest.raises(AssertionError, match="rejected"):
        Matcher(raw_smollm2, "root ::= undefined-rule")


CASES: list[tuple[dict[str, Any], list[str], list[str]]] = [
    (
        FLAT,
        ['{"a": 1, "b": "x"}', '{"a":-12,"b":"say \\"hi\\"\\n"}', '{\n  "a": 0,\n  "b": "\\u00e9"\n}',
         '{"a": 1, "b": "é"}'],
        ['{"a": 1}', '{"a": 1, "b": "x", "c": 2}', '{"a": "1", "b": "x"}', '{"b": "x", "a": 1}',
         '{"a": 1, "b": "line\nbreak"}', '{"a": 01, "b": "x"}', '{"a": 1, "b": "x"} extra'],
    ),
    (
        {"type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "boolean"}}},
        ['{}', '{"y": true}', '{"x": 1.5e-3, "y": false}', '{"x": -0.30000000000000004}'],
        ['{"y": true, "x": 1}', '{"x": 1, "x": 2}', '{"x": 1,}', '{"z": 1}'],
    ),
    (
        {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 4},
        ["[1]", "[1, 2, 3, 4]"],
        ["[]", "[1, 2, 3, 4, 5]", "[1.5]", "[1,]"],
    ),
    ({"enum": ["red", 7, None, {"k": [1]}]}, ['"red"', "7", "null", '{"k": [1]}'], ['"pink"', "8", '{"k": [2]}']),
    ({"type": "string", "minLength": 2, "maxLength": 3}, ['"ab"', '"a\\nb"'], ['"a"', '"abcd"']),
    ({"anyOf": [{"type": "string"}, {"type": "null"}]}, ['"x"', "null"], ["1", '"x" null']),
    ({"type": ["integer", "null"]}, ["3", "null"], ["3.5", '"3"']),
    (
        Node.model_json_schema(),
        ['{"name": "a", "children": [{"name": "b", "children": [{"name": "c"}]}]}'],
        ['{"name": "a", "children": [{}]}'],
    ),
    (TypeAdapter(tuple[int, str]).json_schema(), ['[1, "a"]'], ['[1]', '[1, "a", 2]', '["a", 1]']),
    (TypeAdapter(dict[str, int]).json_schema(), ['{}', '{"a": 1, "b": 2}'], ['{"a": "1"}']),
    ({"type": "string", "pattern": "^a+$"}, ['"b"'], ["1"]),  # pattern unsupported: any string, never a non-string
    ({"allOf": [{"type": "integer"}, {"minimum": 0}]}, ["-1", '"any JSON"'], ["{"]),
    ({}, ['{"deep": [1, {"x": null}]}', "true"], ["tru", "[1,"]),
]


@pytest.mark.parametrize("schema,good,bad", CASES, ids=[str(i) for i in range(len(CASES))])
@requires_llama
@requires_smollm2
def test_grammar_accepts_what_the_schema_allows(matcher, schema, good: list[str], bad: list[str]) -> None:
    m = matcher(schema)
    assert [t for t in good if not m.accepts(t)] == []
    assert [t for t in bad if m.accepts(t)] == []


@requires_llama
@requires_smollm2
def test_whitespace_is_bounded(matcher) -> None:
    m = matcher({"type": "array", "items": {"type": "integer"}})
    assert m.accepts("[" + " " * 20 + "1]")
    assert not m.accepts("[" + " " * 21 + "1]")


@requires_llama
@requires_smollm2
def test_literals_match_exactly_in_llama_cpp(matcher) -> None:
    text = 'Action Input: "quoted" \\ back\ttab\nnew line — 世界 \x01'
    m = matcher(f"root ::= {gbnf_literal(text)}")
    assert m.accepts(text)
    assert not m.accepts(text.replace("世", "丗"))
    assert not m.accepts(text[:-1])


@requires_llama
@requires_smollm2
def test_several_tool_schemas_in_one_grammar(matcher) -> None:
    builder = GrammarBuilder()
    add = builder.schema({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}, "add")
    echo = builder.schema(Person.model_json_schema(), "add-x")  # a name that looks like a sub-rule of "add"
    builder.add("root", f'"add " {add} | "echo " {echo}')
    m = matcher(builder.render())
    assert m.accepts('add {"a": 2}')
    assert m.accepts('echo {"name": "n", "age": 1, "role": "user", "address": {"city": "c"}}')
    assert not m.accepts('add {"name": "n", "age": 1, "role": "user", "address": {"city": "c"}}')


@requires_llama
@requires_smollm2
def test_max_string_chars_bounds_open_strings_only(matcher) -> None:
    builder = GrammarBuilder(max_string_chars=5)
    schema = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string", "minLength": 7},
                                               "c": {"additionalProperties": True}}}
    builder.schema(schema, "root")
    m = matcher(builder.render())
    assert m.accepts('{"a": "12345"}') and not m.accepts('{"a": "123456"}')
    assert m.accepts('{"b": "1234567"}')  # the schema's own minLength wins over the cap
    huge = GrammarBuilder(max_string_chars=5)
    huge.schema({"type": "string", "maxLength": 100000}, "root")  # a tool's own large bound wins, as far as it can
    assert "char{0,4096}" in huge.render()
    assert m.accepts('{"c": {"k": "abcde"}}') and not m.accepts('{"c": {"k": "abcdef"}}')  # free values too
    with pytest.raises(ConfigurationError, match="max_string_chars"):
        GrammarBuilder(max_string_chars=0)


# ---- SmolLM2 under the grammar writes JSON that validates ----------------------------------------
@pytest.mark.parametrize("name", sorted(GENERATED))
@requires_llama
@requires_smollm2
def test_constrained_generation_validates(raw_smollm2, name: str) -> None:
    import llama_cpp

    kind = GENERATED[name]
    schema = _schema(kind)
    grammar = llama_cpp.LlamaGrammar.from_string(json_schema_grammar(schema), verbose=False)
    out = raw_smollm2.create_completion(
        f"Write a JSON value for this schema: {json.dumps(schema)}\nJSON:",
        grammar=grammar, max_tokens=160, temperature=0.0,
    )
    text = out["choices"][0]["text"]
    assert out["choices"][0]["finish_reason"] == "stop", f"grammar did not complete within the token budget: {text!r}"
    if isinstance(kind, type):
        kind.model_validate_json(text, strict=True)
    else:
        kind.validate_json(text, strict=True)


# ---- properties over random schemas ----------------------------------------------------------------
leaf_schemas = st.sampled_from([{"type": t} for t in ("string", "integer", "number", "boolean", "null")] + [{}])
# enum values are matched in their canonical json.dumps form, so keep their text ASCII (escapes are then identical)
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.text(st.characters(max_codepoint=126), max_size=5)
)
any_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=6)  # no lone surrogates: JSON text is UTF-8
simple_schemas = st.recursive(
    st.one_of(leaf_schemas, st.builds(lambda v: {"enum": v}, st.lists(json_scalars, min_size=1, max_size=4))),
    lambda inner: st.one_of(
        st.builds(lambda items, lo, extra: {"type": "array", "items": items, "minItems": lo, "maxItems": lo + extra},
                  inner, st.integers(0, 2), st.integers(0, 3)),
        st.builds(lambda items: {"type": "array", "items": items}, inner),
        st.dictionaries(st.from_regex(r"[a-zA-Z_][a-z0-9_ -]{0,8}", fullmatch=True), inner, max_size=4).flatmap(
            lambda props: st.builds(
                lambda keep: {"type": "object", "properties": props, "required": [k for k in props if keep[k]]},
                st.fixed_dictionaries({k: st.booleans() for k in props}),
            )
        ),
        st.builds(lambda alts: {"anyOf": alts}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda t: {"type": [t, "null"]}, st.sampled_from(["string", "integer", "boolean"])),
    ),
    max_leaves=8,
)


def instances(schema: dict[str, Any]) -> st.SearchStrategy[str]:
    """JSON text valid for a `simple_schemas` schema, object keys in the grammar's order (required first)."""

    def value(s: dict[str, Any]) -> st.SearchStrategy[Any]:
        if "enum" in s:
            return st.sampled_from(s["enum"])
        if "anyOf" in s:
            return st.one_of([value(a) for a in s["anyOf"]])
        kind = s.get("type")
        if isinstance(kind, list):
            return st.one_of([value({"type": t}) for t in kind])
        if kind == "array":
            return st.lists(value(s["items"]), min_size=s.get("minItems", 0), max_size=s.get("maxItems", 3))
        if kind == "object":
            keys = list(s["properties"])
            ordered = [k for k in keys if k in s["required"]] + [k for k in keys if k not in s["required"]]

            def build(chosen: list[bool], vals: list[Any]) -> dict[str, Any]:
                return {k: v for k, keep, v in zip(ordered, chosen, vals) if keep or k in s["required"]}

            return st.builds(build, st.lists(st.booleans(), min_size=len(ordered), max_size=len(ordered)),
                             st.tuples(*[value(s["properties"][k]) for k in ordered]).map(list))
        scalar = {"string": any_text, "integer": st.integers(-10**18, 10**18), "boolean": st.booleans(),
                  "number": st.floats(allow_nan=False, allow_infinity=False), "null": st.none()}
        return scalar.get(kind, json_scalars)

    return st.builds(lambda v, ascii_only: json.dumps(v, ensure_ascii=ascii_only), value(schema), st.booleans())


@settings(max_examples=150, deadline=None)
@given(schema=simple_schemas)
def test_random_schemas_never_raise(schema) -> None:
    text = json_schema_grammar(schema)
    assert text.startswith("root ::= ")


@requires_llama
@requires_smollm2
@settings(max_examples=150, deadline=None)
@given(data=st.data(), schema=simple_schemas)
def test_random_schemas_compile_and_accept_their_instances(raw_smollm2, data, schema) -> None:
    import llama_cpp

    grammar = json_schema_grammar(schema)
    llama_cpp.LlamaGrammar.from_string(grammar, verbose=False)  # the API protocols hand to llama-cpp-python
    m = Matcher(raw_smollm2, grammar)  # ... which only stores the text: compiling is what proves it parses
    try:
        for _ in range(3):
            text = data.draw(instances(schema))
            assume(m.represents(text))
            assert m.accepts(text), f"grammar rejects valid JSON {text!r}\n{grammar}"
    finally:
        m.close()
