"""How many calls a reply makes (runtimes/call_count.py): the probe's arithmetic and the decision, no model (the
default model's parallel and one-call requests are in test_tool_calls_model.py)."""

from __future__ import annotations

import numpy as np
import pytest

from hanlin import GenerationParams, ToolCall
from hanlin.chat_model import Capabilities
from hanlin.runtimes import call_count
from hanlin.runtimes.tool_calls import FORMATS, parse_tool_calls, plan_tools

FIRST = ToolCall(name="convert", arguments={"value": -40, "unit": "°C"})
SECOND = ToolCall(name="convert", arguments={"value": 100, "unit": "°C"})
TOOL = {"type": "function", "function": {"name": "convert", "parameters": {"type": "object", "properties": {
    "value": {"type": "number"}, "unit": {"type": "string"}}, "required": ["value"]}}}


def test_the_probe_frames_the_calls_so_far_as_the_items_of_a_fenced_array() -> None:
    assert call_count.probe_text([FIRST]) == \
        '```json\n[\n  {"name": "convert", "arguments": {"value": -40, "unit": "°C"}}'
    assert call_count.probe_text([FIRST, SECOND]).count(",\n  {") == 1
    # the next call is written after the gap, and the whole reads back as both calls
    written = call_count.continuation_text([FIRST]) + '{"name": "convert", "arguments": {"value": 100, "unit": "°C"}}'
    calls = parse_tool_calls(written + "\n]\n```", [TOOL])[1]
    assert [(c.name, c.arguments) for c in calls] == [(c.name, c.arguments) for c in (FIRST, SECOND)]


def test_comma_mask_and_continue_probability() -> None:
    texts = [",", ",\n", " ,", "]", "\n", "},", "x"]
    mask = call_count.comma_mask(texts)
    assert mask.tolist() == [True, True, True, False, False, False, False]  # "}," closes an object first
    logits = np.log(np.array([0.2, 0.3, 0.1, 0.25, 0.05, 0.05, 0.05]))
    assert call_count.continue_probability(logits + 7.0, mask) == pytest.approx(0.6)  # shift-invariant softmax
    assert call_count.continue_probability(np.array([0.0, -1e9, -1e9, 50.0, 0, 0, 0]), mask) < 1e-6


THIRD = ToolCall(name="convert", arguments={"value": 0, "unit": "°C"})


def settle(written: list[ToolCall], answers: list[float | None], new: list[ToolCall | None]) -> tuple[list, list, int]:
    """call_count.settle with scripted probe answers and decoded calls: (kept values, probes seen, calls decoded)."""
    probes: list[int] = []
    queue = list(new)

    def p_another(kept: list[ToolCall]) -> float | None:
        probes.append(len(kept))
        return answers[len(probes) - 1]

    def write_next(kept: list[ToolCall]) -> ToolCall | None:
        return queue.pop(0)

    kept = call_count.settle(written, p_another, write_next)
    return [c.arguments["value"] for c in kept], probes, len(new) - len(queue)


def test_settle_asks_after_every_call() -> None:
    # one call meant, one written: asked once, nothing decoded
    assert settle([FIRST], [0.45], []) == ([-40], [1], 0)
    # the model means another: the next call is decoded, then it says stop
    assert settle([FIRST], [0.95, 0.2], [SECOND]) == ([-40, 100], [1, 2], 1)
    # the reply's own second call is kept while the model, asked, means it; a third is decoded after it
    assert settle([FIRST, SECOND], [0.9, 0.8, 0.1], [THIRD]) == ([-40, 100, 0], [1, 2, 3], 1)
    # a second call the model, asked, would not make: dropped (an unasked call runs an action)
    assert settle([FIRST, SECOND], [0.45], []) == ([-40], [1], 0)
    # and a third the reply wrote but the model would stop before
    assert settle([FIRST, SECOND, THIRD], [0.9, 0.3], []) == ([-40, 100], [1, 2], 0)
    # the threshold itself continues; a repeated or missing call ends the list
    assert settle([FIRST], [call_count.CONTINUE_AT], [FIRST]) == ([-40], [1], 1)
    assert settle([FIRST], [0.9], [None]) == ([-40], [1], 1)
    # no room left to ask (None): the reply's calls stand as written, nothing is decoded
    assert settle([FIRST, SECOND], [None], [THIRD]) == ([-40, 100], [1], 0)
    assert settle([FIRST, SECOND, THIRD], [0.9, None], []) == ([-40, 100, 0], [1, 2], 0)
    # a model that always means another call stops at MAX_CALLS
    many = [ToolCall(name="convert", arguments={"value": i}) for i in range(1, 20)]
    kept, probes, decoded = settle([FIRST], [0.99] * 20, many)
    assert len(kept) == call_count.MAX_CALLS and decoded == call_count.MAX_CALLS - 1


def test_only_auto_with_parallel_calls_plans_more_calls() -> None:
    caps = Capabilities(constraints=frozenset({"grammar"}), native_tools=True)
    fmt = FORMATS["hermes"]
    assert plan_tools(GenerationParams(tools=[TOOL]), fmt, caps).more_calls is not None
    assert plan_tools(GenerationParams(tools=[TOOL], parallel_tool_calls=False), fmt, caps).more_calls is None
    assert plan_tools(GenerationParams(tools=[TOOL], tool_choice="required"), fmt, caps).more_calls is None
    assert plan_tools(GenerationParams(tools=[TOOL], tool_choice="none"), fmt, caps).more_calls is None
    assert plan_tools(GenerationParams(tools=[TOOL]), fmt, Capabilities()).more_calls is None  # cannot constrain
