"""The run's last step answers: once earlier steps have acted, the step at max_steps is asked for the answer only
(a call made there would run with no step left to read its result), and the results the step before returns carry a
note saying so. Loop logic on ScriptedModel, for react, tools and code; what it buys on the default model is
measured with `hanlin eval -d tooluse` (see the README)."""

from __future__ import annotations

import importlib.util

import pytest

from hanlin import Agent, Completion, ScriptedModel, ToolCall, tool
from hanlin.events import ToolResultEvent
from hanlin.protocols.context import LAST_CALL_NOTE


@tool
def divide(a: float, b: float) -> float:
    """Divide a by b.

    Args:
        a: the dividend
        b: the divisor
    """
    return a / b


def react_call(a: int, b: int) -> str:
    return f'Thought: divide\nAction: divide\nAction Input: {{"a": {a}, "b": {b}}}'


def test_react_last_step_offers_only_the_answer_and_the_step_before_says_so() -> None:
    model = ScriptedModel([react_call(3150, 42), react_call(3150, 75), "Thought: so\nFinal Answer: 75"])
    result = Agent(model, [divide], max_steps=3).run("How many minutes for 3150 pages at 42 a minute?")
    assert result.status == "answered" and result.output_text == "75"
    grammars = [p.constraint.grammar for _, p in model.calls]
    assert ["action ::=" in g for g in grammars] == [True, True, False]  # no tool on the last step
    seen = [m.content for m in model.calls[2][0] if m.role == "user" and m.content.startswith("Observation:")]
    assert LAST_CALL_NOTE not in seen[0] and LAST_CALL_NOTE.strip() in seen[1]
    # in the model's view only: the result the app sees is the tool's own
    shown = [e.content for e in result.events if isinstance(e, ToolResultEvent)]
    assert shown == ["75.0", "42.0"]


def test_a_single_step_run_keeps_its_tools() -> None:
    model = ScriptedModel([react_call(6, 3)])
    result = Agent(model, [divide], max_steps=1).run("6 / 3?")
    assert result.status == "gave_up" and "action ::=" in model.calls[0][1].constraint.grammar


def test_tools_protocol_last_step_offers_no_tools() -> None:
    first, second = (ToolCall(name="divide", arguments={"a": 3150, "b": b}) for b in (42, 75))
    model = ScriptedModel([Completion(tool_calls=[first]), Completion(tool_calls=[second]), "75"])
    result = Agent(model, [divide], protocol="tools", max_steps=3).run("minutes?")
    assert result.status == "answered" and result.output == "75"
    assert [bool(p.tools) for _, p in model.calls] == [True, True, False]
    assert model.calls[2][1].constraint is not None  # one line of words, as after a repeated call
    assert model.calls[2][0][-1].content.endswith(LAST_CALL_NOTE)


@pytest.mark.skipif(importlib.util.find_spec("ipykernel") is None, reason="pip install 'hanlin[tools]'")
def test_code_protocol_last_step_may_only_call_final_answer() -> None:
    cells = ["Thought: a\n```python\nx = 3150 / 42\nprint(x)\n```", "Thought: b\n```python\nprint(x + 0)\n```",
             "Thought: c\n```python\nfinal_answer(x)\n```"]
    model = ScriptedModel(cells)
    with Agent(model, [], protocol="code", max_steps=3) as agent:
        result = agent.run("minutes?")
    assert result.status == "answered" and result.output == "75.0"
    grammars = [p.constraint.grammar for _, p in model.calls]
    assert ['"final_answer("' in g for g in grammars] == [False, False, True]
    assert LAST_CALL_NOTE.strip() in model.calls[2][0][-1].content
