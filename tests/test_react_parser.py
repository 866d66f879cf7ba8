"""ReAct parsing: a table of real-world malformed outputs, and a property that parsing never crashes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hanlin import ParseError, tool
from hanlin.plugins.protocols.react_parser import parse_react


@tool
def calculator(expression: str) -> str:
    """Evaluate arithmetic.

    Args:
        expression: the expression
    """
    return expression


@tool
def search(query: str, limit: int = 3) -> str:
    """Search.

    Args:
        query: what to look for
        limit: how many results
    """
    return query


TOOLS = {"calculator": calculator, "search": search}

# (model output, expected action, expected arguments, expected final) — None action means a final answer
GOOD = [
    ('Thought: add\nAction: calculator\nAction Input: {"expression": "2+2"}', "calculator", {"expression": "2+2"}, None),
    ('thought: add\naction: calculator\naction input: {"expression": "2+2"}', "calculator", {"expression": "2+2"}, None),
    ('**Thought:** add\n**Action:** calculator\n**Action Input:** {"expression": "1"}', "calculator", {"expression": "1"}, None),
    # JSON followed by chatter: the object is taken, the chatter ignored
    ('Action: calculator\nAction Input: {"expression": "3*3"} I hope this helps!', "calculator", {"expression": "3*3"}, None),
    # a code fence around the arguments
    ('Thought: x\nAction: calculator\nAction Input: ```json\n{"expression": "5"}\n```', "calculator", {"expression": "5"}, None),
    # a bare value for a one-parameter tool fills that parameter
    ("Thought: x\nAction: calculator\nAction Input: 37 * 91 + 5", "calculator", {"expression": "37 * 91 + 5"}, None),
    # the tool name in backticks or with call parentheses
    ('Action: `calculator`\nAction Input: {"expression": "1"}', "calculator", {"expression": "1"}, None),
    ('Action: calculator()\nAction Input: {"expression": "1"}', "calculator", {"expression": "1"}, None),
    # two actions: the second was invented without an observation; the first is used
    (
        'Action: calculator\nAction Input: {"expression": "1"}\nAction: search\nAction Input: {"query": "x"}',
        "calculator",
        {"expression": "1"},
        None,
    ),
    # a hallucinated observation and everything after it is dropped
    (
        'Action: search\nAction Input: {"query": "q"}\nObservation: made up\nFinal Answer: 42',
        "search",
        {"query": "q"},
        None,
    ),
    ("Thought: I know it\nFinal Answer: 3372", None, None, "3372"),
    ("final answer: Paris", None, None, "Paris"),
    ("Thought: done\nFinal Answer: line one\nline two", None, None, "line one\nline two"),
    # a final answer written before an action wins: the action after it is ignored
    ("Final Answer: 4\nAction: calculator\nAction Input: {}", None, None, "4"),
]

BAD = [
    ("", "empty"),
    ("   \n ", "empty"),
    ("The answer is probably 4.", "neither"),
    ("Thought: I should use a tool\nAction: calculator", "no 'Action Input:'"),
    ('Thought: x\nAction:\nAction Input: {"a": 1}', "not followed by a tool name"),
    ('Action: calculator\nAction Input: {"expression": "2+2"', "not valid JSON"),
    ("Action: search\nAction Input: cats and dogs", "not a JSON object"),
    ("Action: calculator\nAction Input:", "empty"),
    ("Thought: x\nFinal Answer:", "followed by nothing"),
]


@pytest.mark.parametrize("text,action,arguments,final", GOOD)
def test_good_outputs(text: str, action: str | None, arguments: dict | None, final: str | None) -> None:
    step = parse_react(text, TOOLS)
    assert step.action == action
    if action is not None:
        assert step.arguments == arguments
    assert step.final == final


@pytest.mark.parametrize("text,fragment", BAD)
def test_bad_outputs_explain_themselves(text: str, fragment: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_react(text, TOOLS)
    assert fragment in str(info.value)
    assert info.value.hint  # the model always gets something to act on


def test_thought_is_kept() -> None:
    step = parse_react('Thought: multiply first\nAction: calculator\nAction Input: {"expression": "2*3"}', TOOLS)
    assert step.thought == "multiply first"


LABELS = st.sampled_from(["Thought:", "Action:", "Action Input:", "Final Answer:", "Observation:", "\n", "{", "}", '"', "```", "**"])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=20), LABELS), max_size=12).map("".join))
def test_any_text_parses_or_raises_parse_error(text: str) -> None:
    try:
        step = parse_react(text, TOOLS)
    except ParseError:
        return
    assert (step.action is None) != (step.final is None)
    assert isinstance(step.arguments, dict)
