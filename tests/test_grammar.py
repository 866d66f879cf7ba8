"""JSON Schema -> GBNF: every grammar parses in llama.cpp, and constrained output validates."""

from __future__ import annotations

import json
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from hanlin import ConfigurationError
from hanlin.grammar import GrammarBuilder, gbnf_literal, json_schema_grammar
from tests.conftest import requires_llama, requires_smollm2


class Address(BaseModel):
    city: str
    zip: str | None = None


class Person(BaseModel):
    name: str
    age: int
    role: Literal["admin", "user"]
    tags: list[str] = Field(default_factory=list, max_length=3)  # maxItems: a small model repeats list items forever otherwise
    address: Address
    score: float | None = None


SCHEMAS = {
    "flat": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"}}, "required": ["a", "b"]},
    "all_optional": {"type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "boolean"}}},
    "enum": {"type": "string", "enum": ["red", "green", "blue"]},
    "array": {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 4},
    "nullable": {"anyOf": [{"type": "string"}, {"type": "null"}]},
    "type_list": {"type": ["integer", "null"]},
    "pydantic": Person.model_json_schema(),
    "any": {},
}


def test_literal_escaping() -> None:
    assert gbnf_literal('a"b\\c\nd') == '"a\\"b\\\\c\\nd"'


def test_unresolvable_ref_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match="cannot resolve \\$ref '#/\\$defs/Missing'"):
        json_schema_grammar({"$ref": "#/$defs/Missing"})


def test_two_schemas_with_same_def_names_coexist() -> None:
    builder = GrammarBuilder()
    a = builder.schema({"$defs": {"T": {"type": "integer"}}, "$ref": "#/$defs/T"}, "first")
    b = builder.schema({"$defs": {"T": {"type": "string"}}, "$ref": "#/$defs/T"}, "second")
    assert a != b and builder.rules[a] != builder.rules[b]


def assert_parses(llm, grammar: str) -> None:
    """Compile the grammar in llama.cpp itself (LlamaGrammar.from_string only stores the text)."""
    import llama_cpp

    sampler = llama_cpp.llama_sampler_init_grammar(llm._model.vocab, grammar.encode(), b"root")
    assert sampler, f"llama.cpp rejected the grammar:\n{grammar}"
    llama_cpp.llama_sampler_free(sampler)


@requires_llama
@requires_smollm2
@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_llama_cpp_accepts_every_grammar(raw_smollm2, name: str) -> None:
    assert_parses(raw_smollm2, json_schema_grammar(SCHEMAS[name]))


@requires_llama
@requires_smollm2
def test_llama_cpp_rejects_a_broken_grammar(raw_smollm2) -> None:
    with pytest.raises(AssertionError, match="rejected"):
        assert_parses(raw_smollm2, "root ::= undefined-rule")


def _validate(schema_name: str, value) -> None:
    if schema_name == "pydantic":
        Person.model_validate(value)
    elif schema_name == "flat":
        assert isinstance(value["a"], int) and isinstance(value["b"], str) and set(value) == {"a", "b"}
    elif schema_name == "all_optional":
        assert set(value) <= {"x", "y"}
    elif schema_name == "enum":
        assert value in ("red", "green", "blue")
    elif schema_name == "array":
        assert 1 <= len(value) <= 4 and all(isinstance(v, int) for v in value)
    elif schema_name == "nullable":
        assert value is None or isinstance(value, str)
    elif schema_name == "type_list":
        assert value is None or isinstance(value, int)


@requires_llama
@requires_smollm2
@pytest.mark.parametrize("name", ["flat", "all_optional", "enum", "array", "nullable", "type_list", "pydantic"])
def test_constrained_generation_validates(raw_smollm2, name: str) -> None:
    import llama_cpp

    grammar = llama_cpp.LlamaGrammar.from_string(json_schema_grammar(SCHEMAS[name]), verbose=False)
    out = raw_smollm2.create_completion(
        f"Write a JSON value for this schema: {json.dumps(SCHEMAS[name])}\nJSON:",
        grammar=grammar, max_tokens=160, temperature=0.0,
    )
    text = out["choices"][0]["text"]
    assert out["choices"][0]["finish_reason"] == "stop", f"grammar did not complete within the token budget: {text!r}"
    _validate(name, json.loads(text))


simple_schemas = st.recursive(
    st.sampled_from([{"type": t} for t in ("string", "integer", "number", "boolean", "null")] + [{}]),
    lambda inner: st.one_of(
        st.builds(lambda items: {"type": "array", "items": items}, inner),
        st.builds(
            lambda props, req: {"type": "object", "properties": props, "required": [k for k in props if req]},
            st.dictionaries(st.from_regex(r"[a-z_][a-z0-9_ ]{0,8}", fullmatch=True), inner, max_size=4),
            st.booleans(),
        ),
        st.builds(lambda alts: {"anyOf": alts}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda vals: {"enum": vals}, st.lists(st.one_of(st.integers(), st.text(max_size=5)), min_size=1, max_size=4)),
    ),
    max_leaves=8,
)


@requires_llama
@requires_smollm2
@settings(max_examples=60, deadline=None)
@given(schema=simple_schemas)
def test_random_schemas_always_give_a_grammar_llama_cpp_parses(raw_smollm2, schema) -> None:
    assert_parses(raw_smollm2, json_schema_grammar(schema))
