"""A final answer copied from the prompt's worked example is sent back once: ReAct's example answers 2000, and
Qwen2.5-Coder-0.5B gave "2000" to questions it had lost (python-18 had 717897987691852588770249 from its cell).
The detection is a pure function; the loop's handling runs on ScriptedModel for react, tools and code."""

from __future__ import annotations

import importlib.util

import pytest

from hanlin import Agent, Completion, Message, ScriptedModel, ToolCall, tool
from hanlin.events import ErrorEvent
from hanlin.plugins.protocols.native import NATIVE_EXAMPLE
from hanlin.plugins.protocols.react import EXAMPLE_ANSWER, EXAMPLE_VALUES, REACT_EXAMPLE
from hanlin.protocols.example_guard import copied_example_answer, example_answer_hint


@tool
def digits(n: int) -> str:
    """The decimal digits of n.

    Args:
        n: a whole number
    """
    return str(n)


QUESTION = "What is the sum of the digits of 3**50?"


def run_of(*results: str) -> list[Message]:
    return [Message.user(QUESTION), *(Message.tool(r, tool_call_id=f"c{i}", name="digits") for i, r in enumerate(results))]


def test_the_example_answer_with_nothing_behind_it_is_a_copy() -> None:
    run = run_of("717897987691852588770249")
    for answer in ("2000", "2,000", "2000.0", "2000 people.", " 2000\n"):
        assert copied_example_answer(answer, ["2000"], run) == "2000", answer
    for answer in ("20000", "200", "2000 and 3", "144", "the year 2000 and 2001"):
        assert copied_example_answer(answer, ["2000"], run) is None, answer
    assert copied_example_answer("2000", [], run) is None  # no example shown


def test_the_example_answer_is_taken_when_the_run_produced_it() -> None:
    assert copied_example_answer("2000", ["2000"], run_of("1,000", "2000.0")) is None  # a tool gave it
    asked = [Message.user("What is 1000 + 1000 = 2000 minus nothing?")]
    assert copied_example_answer("2000", ["2000"], asked) is None  # the question holds it
    told = [*run_of("7"), Message.user("Observation: Error: " + example_answer_hint("2000"))]
    assert copied_example_answer("2000", ["2000"], told) is None  # told once: the second time it is the answer
    words = run_of("Brisk")
    assert copied_example_answer("Arvel", ["Arvel"], words) == "Arvel"
    assert copied_example_answer("Brisk", ["Brisk"], words) is None


def react_call(n: str) -> str:
    return f'Thought: digits\nAction: digits\nAction Input: {{"n": {n}}}'


def test_react_sends_the_copy_back_and_the_next_step_must_act() -> None:
    model = ScriptedModel([react_call("717897987691852588770249"),
                           f"Thought: done\nFinal Answer: {EXAMPLE_ANSWER}",
                           react_call("717897987691852588770249"),
                           "Thought: adding the digits\nFinal Answer: 144"])
    result = Agent(model, [digits], max_steps=6).run(QUESTION)
    assert result.status == "answered" and result.output_text == "144"
    errors = [e for e in result.events if isinstance(e, ErrorEvent)]
    assert [e.kind for e in errors] == ["example_answer"] and errors[0].recoverable
    assert model.calls[2][0][-1].content == "Observation: Error: " + example_answer_hint("2000")
    roots = [next(line for line in p.constraint.grammar.splitlines() if line.startswith("root ::=")) for _, p in model.calls]
    assert ["final" in root for root in roots] == [True, True, False, True]  # the step after may only act
    assert all("action" in root for root in roots)


def test_react_takes_the_example_answer_the_second_time() -> None:
    model = ScriptedModel([f"Thought: I know it\nFinal Answer: {EXAMPLE_ANSWER}", react_call("5"),
                           f"Thought: sure\nFinal Answer: {EXAMPLE_ANSWER}"])
    result = Agent(model, [digits], max_steps=6).run("Name a round number.")
    assert result.status == "answered" and result.output_text == "2000" and len(model.calls) == 3


def test_react_without_its_example_never_sends_2000_back() -> None:
    model = ScriptedModel([f"Thought: I know it\nFinal Answer: {EXAMPLE_ANSWER}"])
    result = Agent(model, [digits], examples=False).run(QUESTION)
    assert result.status == "answered" and result.output_text == "2000"


@pytest.mark.parametrize(("reply", "value"), [("2000", "2000"), ("Final Answer: 1200", "1200")])
def test_tools_protocol_sends_the_copy_back(reply: str, value: str) -> None:
    call = ToolCall(name="digits", arguments={"n": 717897987691852588770249})
    model = ScriptedModel([Completion(tool_calls=[call]), reply, "144"])
    result = Agent(model, [digits], protocol="tools").run(QUESTION)
    assert result.status == "answered" and result.output == "144"
    assert example_answer_hint(value) in model.calls[2][0][-1].content


@pytest.mark.skipif(importlib.util.find_spec("ipykernel") is None, reason="pip install 'hanlin[tools]'")
def test_code_protocol_sends_its_example_answer_back() -> None:
    from hanlin.plugins.protocols.code import EXAMPLE_ANSWER as CODE_EXAMPLE_ANSWER

    cells = [f"Thought: known\n```python\nfinal_answer({CODE_EXAMPLE_ANSWER})\n```",
             "Thought: compute\n```python\nprint(7 * 6 + 4)\n```",
             "Thought: done\n```python\nfinal_answer(46)\n```"]
    model = ScriptedModel(cells)
    with Agent(model, [], protocol="code", max_steps=5) as agent:
        result = agent.run("How many days are there from 2024-03-01 to 2024-04-16?")
    assert result.status == "answered" and result.output == "46" and len(model.calls) == 3
    assert example_answer_hint("46") in model.calls[1][0][-1].content


def test_the_values_sent_back_are_the_examples_own() -> None:
    import re

    for example in (REACT_EXAMPLE, NATIVE_EXAMPLE):
        assert set(EXAMPLE_VALUES) <= set(re.findall(r"\d+", example))
    assert f"Final Answer: {EXAMPLE_ANSWER}" in REACT_EXAMPLE and f"answer: {EXAMPLE_ANSWER}." in NATIVE_EXAMPLE


def test_without_a_retry_left_the_answer_is_taken() -> None:
    model = ScriptedModel([f"Thought: I know it\nFinal Answer: {EXAMPLE_ANSWER}"])
    result = Agent(model, [digits], max_retries=0).run(QUESTION)
    assert result.status == "answered" and result.output_text == "2000" and len(model.calls) == 1
