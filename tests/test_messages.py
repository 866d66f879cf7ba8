"""The message schema and its OpenAI wire form."""

from __future__ import annotations

import pytest

from hanlin import ConfigurationError, ToolCall, Usage, parse_event
from hanlin.events import ToolCallEvent
from hanlin.messages import to_messages


def test_openai_roundtrip_with_tool_calls() -> None:
    wire = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "2+2?"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "calc", "arguments": '{"e": "2+2"}'}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "4"},
    ]
    messages = to_messages(wire)
    assert messages[1].content == "2+2?"
    assert messages[2].tool_calls == [ToolCall(id="c1", name="calc", arguments={"e": "2+2"})]
    back = [m.to_openai() for m in messages]
    assert back[2]["tool_calls"][0]["function"]["arguments"] == '{"e": "2+2"}'
    assert back[3] == {"role": "tool", "content": "4", "tool_call_id": "c1"}
    assert to_messages(back) == messages


@pytest.mark.parametrize(
    "bad,fragment",
    [
        ({"role": "wizard", "content": "x"}, "role must be one of"),
        ({"role": "user", "content": 5}, "content must be a string"),
        ({"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]}, "not valid JSON"),
        ({"role": "assistant", "tool_calls": [{"function": {"arguments": "{}"}}]}, "no function name"),
        ("just a string in a list", "must be a Message or a dict"),
        # each of these raised TypeError/AttributeError (a 500 from the server) before they were checked
        ({"role": "user", "content": [{"type": "text", "text": None}]}, "needs 'text' as a string"),
        ({"role": "user", "content": ["a bare string part"]}, "content part must be an object"),
        ({"role": "user", "content": {}}, "content must be a string"),
        ({"role": "assistant", "tool_calls": "abc"}, "'tool_calls' must be a list"),
        ({"role": "assistant", "tool_calls": ["abc"]}, "a tool call must be an object"),
        ({"role": "assistant", "tool_calls": [{"function": "f"}]}, "'function' must be an object"),
        ({"role": "assistant", "tool_calls": [{"function": {"name": 5, "arguments": "{}"}}]}, "no function name"),
        ({"role": "assistant", "tool_calls": [{"id": 7, "function": {"name": "f", "arguments": "{}"}}]}, "'id' must be a string"),
        ({"role": "tool", "content": "4", "tool_call_id": ["c1"]}, "'tool_call_id' must be a string"),
    ],
)
def test_bad_wire_messages(bad, fragment) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        to_messages([bad])


def test_usage_adds_up() -> None:
    total = Usage(prompt_tokens=10, completion_tokens=2, prompt_tokens_evaluated=10, prompt_tokens_reused=0) + Usage(
        prompt_tokens=15, completion_tokens=3, prompt_tokens_evaluated=5, prompt_tokens_reused=10
    )
    assert (total.prompt_tokens, total.completion_tokens, total.total_tokens) == (25, 5, 30)
    assert (total.prompt_tokens_evaluated, total.prompt_tokens_reused) == (15, 10)
    assert (Usage() + Usage()).prompt_tokens_evaluated is None


def test_events_roundtrip_through_json() -> None:
    event = ToolCallEvent(step=2, call=ToolCall(name="calc", arguments={"e": "1"}))
    assert parse_event(event.model_dump_json()) == event
    assert parse_event(event.model_dump()) == event
