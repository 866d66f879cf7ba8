"""ReAct parsing: a table of real-world malformed outputs, and a property that parsing never crashes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hanlin import ParseError, tool
from hanlin.plugins.protocols.react_parser import parse_react
from tests.conftest import requires_smollm2
from tests.test_grammar import matcher, raw_smollm2  # noqa: F401  (fixtures: llama.cpp's grammar matcher)


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


# ---- the step grammars, checked by llama.cpp's own matcher --------------------------------------------------------
def _grammars_seen(protocol: str, replies: list) -> list[str]:
    """The grammars a run under ``protocol`` asks the model for, step by step."""
    from hanlin import Agent, ScriptedModel

    grammars: list[str] = []

    def reply(messages, params):
        grammars.append(params.constraint.grammar if params.constraint else "")
        return replies[len(grammars) - 1]

    Agent(ScriptedModel(reply), [calculator], protocol=protocol).run("q")
    return grammars


@requires_smollm2
def test_step_grammars_allow_the_newline_that_models_write_with_the_closing_brace(matcher) -> None:
    # '"}\n' and '}]\n' are single tokens to Qwen2.5; a grammar that ends right after the JSON refuses them, and
    # Qwen2.5-Coder-0.5B, refused, put a stray '}' inside the code string ("print(n)}") in most python steps.
    react = matcher(_grammars_seen("react", ["Thought: t\nFinal Answer: 4"])[0])
    step = 'Thought: add\nAction: calculator\nAction Input: {"expression": "2+2"}'
    assert react.accepts(step) and react.accepts(step + "\n")
    assert react.accepts("Thought: t\nFinal Answer: 4\n") and not react.accepts(step + "\nThought: more")
    rewoo = matcher(_grammars_seen("rewoo", ['Plan: add\n#E1 = calculator[{"expression": "2+2"}]', "4"])[0])
    plan = 'Plan: add\n#E1 = calculator[{"expression": "2+2"}]'
    assert rewoo.accepts(plan) and rewoo.accepts(plan + "\n") and not rewoo.accepts(plan + "\n\n")


@requires_smollm2
def test_native_step_after_a_repeat_is_one_line_of_words(matcher) -> None:
    from hanlin import Completion, ToolCall

    call = Completion(tool_calls=[ToolCall(name="calculator", arguments={"expression": "2+2"})])
    grammar = _grammars_seen("tools", [call, call, "4"])[2]
    words = matcher(grammar)
    assert words.accepts("The answer is 4.")
    for call_text in ('{"name": "calculator", "arguments": {"expression": "2+2"}}', '```json\n{"name": "x"}\n```',
                      "<tool_call>", '[{"name": "calculator"}]', "4\nand more"):
        assert not words.accepts(call_text), call_text


@requires_smollm2
def test_rewoo_plan_grammar_holds_each_call_to_its_tools_schema(matcher) -> None:
    # With any JSON object allowed, 45% of Qwen2.5-Coder-0.5B's planned calls on the tooluse set were invalid.
    rewoo = matcher(_grammars_seen("rewoo", ['Plan: add\n#E1 = calculator[{"expression": "2+2"}]', "4"])[0])
    assert rewoo.accepts('Plan: add\n#E1 = calculator[{"expression": "2+2"}]\nPlan: more\n'
                         '#E2 = calculator[{"expression": "#E1 * 3"}]')
    assert not rewoo.accepts('Plan: add\n#E1 = calculator[{"question": "2+2"}]')
    assert not rewoo.accepts('Plan: add\n#E1 = calculator[{"expression": "2+2", "type": "string"}]')


def test_a_stray_closing_brace_at_the_end_of_a_string_argument_is_dropped() -> None:
    """Qwen2.5 writes ')}' as one token: {"code": "print(n)}"} followed by a second '}' was a SyntaxError each time."""
    step = parse_react('Thought: count\nAction: python\nAction Input: {"code": "n = 3\\nprint(n)}"\n    }\n')
    assert step.arguments == {"code": "n = 3\nprint(n)"}
    # a brace the string itself opened is kept
    kept = parse_react('Thought: d\nAction: python\nAction Input: {"code": "d = {1: 2}", "note": "x"}')
    assert kept.arguments == {"code": "d = {1: 2}", "note": "x"}


@tool
def python(code: str) -> str:
    """Run Python code.

    Args:
        code: the source
    """
    return ""


def test_a_code_tools_input_is_read_from_a_python_block() -> None:
    """In a JSON string Qwen2.5-Coder-0.5B crammed loops onto one line (SyntaxErrors); in a fence it writes them."""
    text = "Thought: count\nAction: python\nAction Input:\n```python\nn = 0\nfor i in range(3):\n    n += i\nprint(n)\n```"
    step = parse_react(text, {"python": python, "calculator": calculator})
    assert step.action == "python" and step.arguments == {"code": "n = 0\nfor i in range(3):\n    n += i\nprint(n)"}
    json_step = parse_react('Thought: t\nAction: python\nAction Input: {"code": "print(1)"}', {"python": python})
    assert json_step.arguments == {"code": "print(1)"}  # JSON still reads


def test_a_python_block_cut_by_the_stop_sequence_is_read_whole() -> None:
    """The model wrote "Observation:" where the closing fence belonged; the step stops there, inside the block. Read
    as a bare value, only "def is_prime(n):" reached the kernel (python-01)."""
    program = "def is_prime(n):\n    return n > 1\n\ncount = 0\nfor k in range(10):\n    count += is_prime(k)"
    step = parse_react(f"Thought: count\nAction: python\nAction Input:\n```python\n{program}", {"python": python})
    assert step.arguments == {"code": program}
    # a fence of another language, or two openings, is not taken for an unclosed python block
    with pytest.raises(ParseError):
        parse_react("Thought: t\nAction: python\nAction Input:\n```json\n{", {"python": python})


def test_a_final_answer_line_inside_a_python_block_is_not_sent_as_code() -> None:
    """The model re-sent its cell with "Final Answer: 12" as the last line: a SyntaxError it repeated (python-13)."""
    cell = "words = 'a b c'.split()\nprint(len(words))"
    text = f"Thought: t\nAction: python\nAction Input:\n```python\n{cell}\nFinal Answer: 3\n```"
    assert parse_react(text, {"python": python}).arguments == {"code": cell}
    # a variable that merely holds the words stays code
    kept = "final_answer = 3\nprint(final_answer)"
    assert parse_react(f"Thought: t\nAction: python\nAction Input:\n```python\n{kept}\n```",
                       {"python": python}).arguments == {"code": kept}
    with pytest.raises(ParseError, match="only a 'Final Answer:' line"):
        parse_react("Thought: t\nAction: python\nAction Input:\n```python\nFinal Answer: 3\n```", {"python": python})


@requires_smollm2
def test_react_asks_a_code_tool_for_a_python_block(matcher) -> None:
    from hanlin import Agent, ScriptedModel

    seen = []

    def reply(messages, params):
        seen.append((messages[0].content, params.constraint.grammar))
        return "Thought: t\nFinal Answer: 4"

    Agent(ScriptedModel(reply), [calculator, python]).run("q")
    Agent(ScriptedModel(reply), [calculator]).run("q")
    (prompt, grammar), (plain_prompt, _) = seen
    assert "For python, Action Input is the code itself in a ```python block" in prompt
    assert "```python" not in plain_prompt
    step = matcher(grammar)
    block = "Thought: loop\nAction: python\nAction Input:\n```python\nfor i in range(3):\n    print(i)\n```"
    assert step.accepts(block) and step.accepts(block + "\n")
    assert not step.accepts('Thought: t\nAction: python\nAction Input: {"code": "print(1)"}')
    assert step.accepts('Thought: add\nAction: calculator\nAction Input: {"expression": "2+2"}')


@requires_smollm2
def test_rewoo_plan_grammar_takes_a_code_tools_input_as_a_python_block(matcher) -> None:
    """In a JSON string Qwen2.5-Coder-0.5B left the code open and the plan ran on inside it (tooluse python 1/21)."""
    from hanlin import Agent, ScriptedModel

    plan = ('Plan: count\n#E1 = python\n```python\nn = {"a": 1}\nfor i in range(3):\n    n["a"] += i\nprint(n)\n```\n'
            'Plan: add\n#E2 = calculator[{"expression": "#E1 + 1"}]')
    seen: list = []

    def reply(messages, params):
        seen.append((messages, params.constraint.grammar if params.constraint else ""))
        return [plan, "4"][len(seen) - 1]

    result = Agent(ScriptedModel(reply), [calculator, python], protocol="rewoo").run("q")
    assert result.status == "answered" and result.tool_calls[0].arguments["code"].endswith('n["a"] += i\nprint(n)')
    planner, grammar = seen[0]
    assert "#E1 = python\n```python\n<the code, printing what you need>\n```" in planner[0].content
    assert "#E1 = python\n```python\nn = {\"a\": 1}" in seen[1][0][-1].content  # the solver sees the block too
    assert "Use it as it is; do not work it out again. Reply with the answer only." in seen[1][0][0].content
    steps = matcher(grammar)
    assert steps.accepts(plan)
    assert not steps.accepts('Plan: count\n#E1 = python[{"code": "print(1)"}]')  # code goes in the block
    assert not steps.accepts("Plan: count\n#E1 = python\n```python\n```")  # at least one line
