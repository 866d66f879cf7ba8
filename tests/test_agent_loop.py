"""The agent loop end to end with ScriptedModel: every protocol, every way a step can go wrong.

ScriptedModel stands in for the model only to drive the loop's logic here; the
real-model agent tests live with the runtimes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import re
import threading
import time

import pytest
from pydantic import BaseModel

from hanlin import (
    Agent,
    Completion,
    ConfigurationError,
    ErrorEvent,
    Message,
    ProtocolError,
    ScriptedModel,
    StepStarted,
    TokenDelta,
    Tool,
    ToolCall,
    ToolCallEvent,
    load_traces,
    tool,
)


@tool
def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: the first number
        b: the second number
    """
    return a + b


@tool
def explode(reason: str) -> str:
    """Always fails.

    Args:
        reason: why
    """
    raise RuntimeError(f"boom: {reason}")


@tool(timeout=0.2)
def slow(seconds: float) -> str:
    """Sleeps.

    Args:
        seconds: how long
    """
    time.sleep(seconds)
    return "woke up"


def react(action: str, args: dict) -> str:
    return f"Thought: I will use {action}\nAction: {action}\nAction Input: {json.dumps(args)}"


def kinds(events) -> list[str]:
    return [e.type for e in events if e.type != "token"]


# ---- ReAct ----------------------------------------------------------------------------------------


def test_react_calls_tool_feeds_observation_and_answers() -> None:
    model = ScriptedModel([react("add", {"a": 2, "b": 3}), "Thought: done\nFinal Answer: 5"])
    result = Agent(model, [add]).run("What is 2 + 3?")
    assert result.status == "answered" and result.output == "5"
    assert kinds(result.events) == [
        "step_started", "tool_call", "tool_result", "step_started", "final_answer", "run_finished"
    ]
    call = next(e for e in result.events if isinstance(e, ToolCallEvent)).call
    assert call.name == "add" and call.arguments == {"a": 2, "b": 3}
    # the observation reached the model in its second prompt
    second_prompt = model.calls[1][0]
    assert second_prompt[-1].role == "user" and second_prompt[-1].content.startswith("Observation: 5\n")
    # the trace keeps the tool call structured, and the tool turn answers it
    roles = [m.role for m in result.messages]
    assert roles == ["user", "assistant", "tool", "assistant"]
    assert result.messages[2].tool_call_id == result.messages[1].tool_calls[0].id
    # tokens were streamed, and joined they are the model's text
    tokens = "".join(e.text for e in result.events if isinstance(e, TokenDelta) and e.step == 1)
    assert tokens == result.messages[1].content


def test_react_asks_for_stop_sequence_and_grammar() -> None:
    model = ScriptedModel(["Thought: x\nFinal Answer: ok"])
    Agent(model, [add]).run("hi")
    params = model.calls[0][1]
    assert "Observation:" in "".join(params.stop)
    assert params.constraint is not None and params.constraint.grammar is not None
    assert '"add"' in params.constraint.grammar
    # with constraints switched off, none is sent
    model = ScriptedModel(["Thought: x\nFinal Answer: ok"])
    Agent(model, [add], constrained=False).run("hi")
    assert model.calls[0][1].constraint is None


def test_sync_and_async_agree() -> None:
    script = [react("add", {"a": 1, "b": 1}), "Thought: ok\nFinal Answer: 2"]
    sync = Agent(ScriptedModel(script), [add]).run("1+1")
    async_ = asyncio.run(Agent(ScriptedModel(script), [add]).arun("1+1"))
    streamed = list(Agent(ScriptedModel(script), [add]).stream("1+1"))

    async def collect():
        return [e async for e in Agent(ScriptedModel(script), [add]).astream("1+1")]

    astreamed = asyncio.run(collect())
    assert sync.output == async_.output == "2"
    assert kinds(sync.events) == kinds(async_.events) == kinds(streamed) == kinds(astreamed)
    assert [m.content for m in sync.messages] == [m.content for m in async_.messages]


def test_run_works_inside_a_running_event_loop() -> None:
    async def main():
        return Agent(ScriptedModel(["Thought: x\nFinal Answer: yes"]), [add]).run("q")

    assert asyncio.run(main()).output == "yes"


def test_stream_can_be_abandoned_early() -> None:
    agent = Agent(ScriptedModel([react("add", {"a": 1, "b": 2}), "Final Answer: 3"]), [add])
    stream = agent.stream("q")
    first = next(stream)
    assert isinstance(first, StepStarted)
    stream.close()
    # the background loop's thread is gone once close() returns: nothing left running for the abandoned run
    assert not [t for t in threading.enumerate() if t.name == "hanlin-agent-stream"]


def test_concurrent_runs_of_one_session_keep_both_turns() -> None:
    def reply(messages, params):
        time.sleep(0.2)  # both runs are in flight together
        return f"Final Answer: answer to {messages[-1].content}"

    agent = Agent(ScriptedModel(reply), [add])
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda task: agent.run(task, session_id="s"), ["one", "two"]))
    assert sorted(r.output for r in results) == ["answer to one", "answer to two"]
    users = [m.content for m in agent.history("s") if m.role == "user"]
    assert sorted(users) == ["one", "two"]  # the later run saw the earlier turn and stored both
    assert len(agent.history("s")) == 4


# ---- failures the loop must survive ---------------------------------------------------------------


def test_tool_that_raises_becomes_an_observation() -> None:
    model = ScriptedModel([react("explode", {"reason": "test"}), "Thought: it failed\nFinal Answer: could not"])
    result = Agent(model, [explode]).run("go")
    assert result.status == "answered"
    tool_msg = result.messages[2]
    assert tool_msg.is_error and "RuntimeError: boom: test" in tool_msg.content
    assert model.calls[1][0][-1].content.startswith("Observation: Error: tool 'explode' raised RuntimeError")
    assert any(isinstance(e, ErrorEvent) and e.kind == "tool_failed" for e in result.events)


def test_tool_timeout_becomes_an_observation() -> None:
    model = ScriptedModel([react("slow", {"seconds": 2}), "Final Answer: gave up waiting"])
    started = time.perf_counter()
    result = Agent(model, [slow]).run("go")
    assert time.perf_counter() - started < 1.5
    assert result.status == "answered"
    assert "did not finish within 0.2 s" in result.messages[2].content


def test_unknown_tool_and_invalid_arguments_are_corrected() -> None:
    model = ScriptedModel(
        [
            react("multiply", {"a": 2}),
            react("add", {"a": "two", "b": 3}),
            react("add", {"a": 2, "b": 3}),
            "Final Answer: 5",
        ]
    )
    result = Agent(model, [add]).run("2+3")
    assert result.status == "answered" and result.output == "5"
    errors = [e for e in result.events if isinstance(e, ErrorEvent)]
    assert [e.kind for e in errors] == ["unknown_tool", "invalid_arguments"]
    assert "no tool named 'multiply'. Available tools: add" in model.calls[1][0][-1].content
    assert "invalid arguments for tool 'add': a:" in model.calls[2][0][-1].content


def test_arguments_are_coerced_before_the_call() -> None:
    model = ScriptedModel([react("add", {"a": "2", "b": 3.0}), "Final Answer: 5"])
    result = Agent(model, [add]).run("2+3")
    assert result.messages[2].content == "5"


def test_malformed_output_retries_then_gives_up_keeping_everything() -> None:
    model = ScriptedModel(["I think it's 5", "Still 5", "5!"])
    result = Agent(model, [add], max_retries=2).run("2+3")
    assert result.status == "gave_up"
    assert "could not be parsed 3 times" in (result.error or "")
    assert len(model.calls) == 3
    # every attempt and every correction is in the transcript
    assert [m.content for m in result.messages if m.role == "assistant"] == ["I think it's 5", "Still 5", "5!"]
    final_errors = [e for e in result.events if isinstance(e, ErrorEvent) and not e.recoverable]
    assert len(final_errors) == 1 and result.events[-1].status == "gave_up"


def test_a_good_step_resets_the_retry_budget() -> None:
    model = ScriptedModel(["nonsense", react("add", {"a": 1, "b": 1}), "nonsense", "Final Answer: 2"])
    result = Agent(model, [add], max_retries=1).run("1+1")
    assert result.status == "answered"


def test_model_looping_until_max_steps() -> None:
    model = ScriptedModel(lambda messages, params: react("add", {"a": 1, "b": 1}))
    result = Agent(model, [add], max_steps=4).run("loop")
    assert result.status == "gave_up" and result.steps == 4
    assert "max_steps=4" in result.error
    assert sum(1 for m in result.messages if m.role == "tool") == 4


def test_model_failure_ends_in_error_state() -> None:
    model = ScriptedModel([react("add", {"a": 1, "b": 1})])  # runs out after one reply
    result = Agent(model, [add]).run("q")
    assert result.status == "error"
    assert "ScriptedModel 'scripted' was called 2 times" in result.error
    assert [m.role for m in result.messages] == ["user", "assistant", "tool"]


def test_bad_agent_configuration() -> None:
    with pytest.raises(ConfigurationError, match="max_steps"):
        Agent(ScriptedModel([]), [add], max_steps=0)
    with pytest.raises(ConfigurationError, match="unknown protocol 'reactt'.*Did you mean 'react'"):
        Agent(ScriptedModel([]), [add], protocol="reactt")


# ---- structured output ------------------------------------------------------------------------


class Answer(BaseModel):
    value: int
    unit: str


def test_output_type_validates_and_retries() -> None:
    model = ScriptedModel(
        ['Final Answer: {"value": "lots"}', 'Thought: fix\nFinal Answer: ```json\n{"value": 5, "unit": "kg"}\n```']
    )
    result = Agent(model, [add], output_type=Answer).run("weight?")
    assert result.status == "answered"
    assert result.output == Answer(value=5, unit="kg")
    assert "must be JSON matching this schema" in model.calls[1][0][-1].content
    record = result.to_record()
    assert record["output"] == {"value": 5, "unit": "kg"}


# ---- sessions and traces ----------------------------------------------------------------------


def test_session_memory_across_runs(tmp_path) -> None:
    model = ScriptedModel(["Final Answer: Hello Ada", "Final Answer: Your name is Ada"])
    agent = Agent(model, [add])
    agent.run("My name is Ada", session_id="s1")
    second = agent.run("What is my name?", session_id="s1")
    prompt = model.calls[1][0]
    assert any(m.content == "My name is Ada" for m in prompt)
    assert [m.content for m in second.messages if m.role == "user"] == ["My name is Ada", "What is my name?"]
    agent.reset("s1")
    assert agent.history("s1") == []


def test_trace_roundtrip(tmp_path) -> None:
    model = ScriptedModel([react("add", {"a": 2, "b": 2}), "Final Answer: 4"])
    result = Agent(model, [add]).run("2+2")
    path = result.save_trace(tmp_path / "runs.jsonl")
    result.save_trace(path)  # appending builds a dataset
    loaded = load_traces(path)
    assert len(loaded) == 2
    assert loaded[0].messages == result.messages
    kept = [e.type for e in result.events if e.type != "token"]
    assert "token" in [e.type for e in result.events]
    assert [e.type for e in loaded[0].events] == kept  # the trace grows with steps, not with tokens
    full = load_traces(result.save_trace(tmp_path / "full.jsonl", token_deltas=True))[0]
    assert [e.type for e in full.events] == [e.type for e in result.events]
    # the messages are OpenAI-convertible as they are
    assert loaded[0].messages[1].to_openai()["tool_calls"][0]["function"]["name"] == "add"
    (tmp_path / "bad.jsonl").write_text('{"messages": []}\nnot json\n')
    with pytest.raises(ConfigurationError, match="bad.jsonl:1"):
        load_traces(tmp_path / "bad.jsonl")


# ---- ReWOO ------------------------------------------------------------------------------------


def test_rewoo_runs_independent_steps_concurrently() -> None:
    spans: dict[str, tuple[float, float]] = {}

    @tool
    async def fetch(key: str) -> str:
        """Fetch a value.

        Args:
            key: which value
        """
        start = time.perf_counter()
        await asyncio.sleep(0.3)
        spans[key] = (start, time.perf_counter())
        return {"a": "3", "b": "4"}[key]

    plan = (
        'Plan: get a\n#E1 = fetch[{"key": "a"}]\n'
        'Plan: get b\n#E2 = fetch[{"key": "b"}]\n'
        'Plan: add\n#E3 = add[{"a": "#E1", "b": "#E2"}]'
    )
    model = ScriptedModel([plan, "7"])
    result = Agent(model, [fetch, add], protocol="rewoo").run("a + b?")
    assert result.status == "answered" and result.output == "7"
    (a0, a1), (b0, b1) = spans["a"], spans["b"]
    assert a0 < b1 and b0 < a1, "the two independent fetches did not overlap"
    tool_msgs = [m for m in result.messages if m.role == "tool"]
    assert [m.content for m in tool_msgs] == ["3", "4", "7"]
    solver_prompt = model.calls[1][0][-1].content
    assert "#E3 = add" in solver_prompt and "Evidence: 7" in solver_prompt
    phases = [e.phase for e in result.events if isinstance(e, StepStarted)]
    assert phases == ["plan", "work", "solve"]


def test_rewoo_replans_after_malformed_plan_and_skips_dependents_of_failures() -> None:
    plan = 'Plan: fail\n#E1 = explode[{"reason": "x"}]\nPlan: use it\n#E2 = add[{"a": "#E1", "b": 1}]'
    model = ScriptedModel(["#E1 = nothing here", plan, "it failed"])
    result = Agent(model, [explode, add], protocol="rewoo").run("q")
    assert result.status == "answered"
    tool_msgs = [m for m in result.messages if m.role == "tool"]
    assert tool_msgs[0].is_error and "boom" in tool_msgs[0].content
    assert tool_msgs[1].is_error and "depends on #E1, which failed" in tool_msgs[1].content
    assert "That plan could not be used" in model.calls[1][0][-1].content


def test_rewoo_gives_up_after_bounded_replans() -> None:
    model = ScriptedModel(["#E1 bad"] * 3)
    result = Agent(model, [add], protocol="rewoo", max_retries=2).run("q")
    assert result.status == "gave_up" and len(model.calls) == 3


# ---- native tool calling --------------------------------------------------------------------------


def test_native_tool_calling() -> None:
    calls = [ToolCall(name="add", arguments={"a": 20, "b": 22}), ToolCall(name="add", arguments={"a": 1, "b": 1})]
    model = ScriptedModel([Completion(tool_calls=calls), "42 and 2"])
    result = Agent(model, [add], protocol="tools").run("sums")
    assert result.status == "answered" and result.output == "42 and 2"
    params = model.calls[0][1]
    assert params.tools[0]["function"]["name"] == "add"
    second = model.calls[1][0]
    assert [m.role for m in second[-3:]] == ["assistant", "tool", "tool"]
    # each result carries the native protocol's nudge towards the answer (small models re-issue answered calls)
    from hanlin.plugins.protocols.native import RESULT_NUDGE

    assert [m.content for m in second[-2:]] == [f"42\n{RESULT_NUDGE}", f"2\n{RESULT_NUDGE}"]


@pytest.mark.parametrize("reply,answer", [
    ("Final Answer: 1411381", "1411381"),
    ("The Final Answer: 50", "50"),
    ("final answer is: pear\nbecause", "pear\nbecause"),
    ("Final Answer:", "Final Answer:"),  # a label with nothing after it stays as it was
    ("My final answer: 7", "My final answer: 7"),  # only at the head of the reply
])
def test_native_answer_loses_reacts_label(reply: str, answer: str) -> None:
    model = ScriptedModel([Completion(tool_calls=[ToolCall(name="add", arguments={"a": 1, "b": 2})]), reply])
    assert Agent(model, [add], protocol="tools").run("sum").output == answer


def test_native_call_written_as_text_while_tools_are_withdrawn_is_corrected() -> None:
    # Qwen2.5-Coder-0.5B repeats the answered call; with the tools withdrawn it writes the call as text, which is not
    # an answer: the model is told so, and its next reply is the answer.
    call = ToolCall(name="add", arguments={"a": 20, "b": 22})
    model = ScriptedModel([Completion(tool_calls=[call]), Completion(tool_calls=[call.model_copy(update={"id": "c2"})]),
                           '{"name": "add", "arguments": {"a": 20, "b": 22}}', "42"])
    result = Agent(model, [add], protocol="tools").run("sum")
    assert result.status == "answered" and result.output == "42"
    assert model.calls[2][1].tools is None  # the repeat withdrew the tools for that step
    assert "No tool can be called now" in model.calls[3][0][-1].content


def test_native_repeat_withdraws_the_tools_so_the_model_answers() -> None:
    call = ToolCall(name="add", arguments={"a": 20, "b": 22})
    model = ScriptedModel([Completion(tool_calls=[call]), Completion(tool_calls=[call]), "42"])
    result = Agent(model, [add], protocol="tools").run("sum")
    assert result.status == "answered" and result.output == "42"
    assert [bool(p.tools) for _, p in model.calls] == [True, True, False]


def test_native_protocol_asks_for_one_call_per_reply() -> None:
    # The runtimes frame a fenced call as an array when several are allowed; Qwen2.5-Coder-0.5B, forced to open "[",
    # wrote broken code ("print(i)}"). The loop runs a call a step, so the protocol asks for one call per reply.
    model = ScriptedModel([Completion(tool_calls=[ToolCall(name="add", arguments={"a": 1, "b": 2})]), "3"])
    Agent(model, [add], protocol="tools").run("sum")
    assert [p.parallel_tool_calls for _, p in model.calls] == [False, False]


def test_native_call_to_an_unknown_tool_written_as_text_is_corrected_not_answered() -> None:
    # The runtime leaves a call naming no offered tool in the text; in a run it is a mistake, not the final answer.
    model = ScriptedModel(['```json\n{"name": "Harbor Wi-Fi", "arguments": {"query": "guest network"}}\n```', "42"])
    result = Agent(model, [add], protocol="tools").run("sum")
    assert result.status == "answered" and result.output == "42"
    assert "no tool named 'Harbor Wi-Fi'" in model.calls[1][0][-1].content
    plain = ScriptedModel(['The JSON {"name": "x"} has no arguments, so this is an answer.'])
    assert Agent(plain, [add], protocol="tools").run("q").status == "answered"


def test_native_call_to_an_unknown_name_whose_arguments_fit_one_tool_calls_that_tool() -> None:
    @tool
    def knowledge_base(query: str) -> str:
        """Search.

        Args:
            query: what to find
        """
        return f"found {query}"

    class Loose(BaseModel):  # pydantic's default: unknown keys ignored, so any dict validates
        verbose: bool = False

    def status(verbose: bool = False) -> str:
        return "ok"

    misnamed = '{"name": "lumen_harbor_travel_policy", "arguments": {"query": "hotel limit"}}'
    model = ScriptedModel([misnamed, "140 euros"])
    loose = Tool(status, description="Status.", args_model=Loose)
    result = Agent(model, [add, knowledge_base, loose], protocol="tools").run("hotel?")
    assert result.status == "answered" and result.output == "140 euros"
    call = result.messages[1].tool_calls[0]
    assert (call.name, call.arguments) == ("knowledge_base", {"query": "hotel limit"})
    assert result.messages[2].content == "found hotel limit" and result.messages[2].tool_call_id == call.id
    # arguments that fit no tool, or several, are still a mistake to correct
    for tools in ([add], [knowledge_base, Tool(knowledge_base.fn, name="search")]):
        model = ScriptedModel([misnamed, "42"])
        assert Agent(model, tools, protocol="tools").run("q").output == "42"
        assert "no tool named 'lumen_harbor_travel_policy'" in model.calls[1][0][-1].content


def test_native_step_after_a_repeat_may_only_write_words() -> None:
    # Offered no tools after a repeated call, the model kept writing the call as text; that step is constrained to one
    # line that cannot open JSON, a fence or a tag (on runtimes with grammars), and only that step.
    call = ToolCall(name="add", arguments={"a": 20, "b": 22})
    model = ScriptedModel([Completion(tool_calls=[call]), Completion(tool_calls=[call]), "42"])
    assert Agent(model, [add], protocol="tools").run("sum").output == "42"
    constraints = [p.constraint for _, p in model.calls]
    assert constraints[:2] == [None, None] and constraints[2] is not None
    first_char = re.match(r"root ::= \[\^([^\]]*)\]", constraints[2].grammar)
    assert first_char and all(c in first_char.group(1) for c in ("{", "\\[", "`", "<"))


def test_native_protocol_refuses_a_model_without_tool_calls() -> None:
    with pytest.raises(ProtocolError, match="use protocol='react'"):
        Agent(ScriptedModel([], native_tools=False), [add], protocol="tools")


def test_openai_dict_messages_are_accepted_by_models() -> None:
    model = ScriptedModel(["hi"])
    completion = model.generate([{"role": "user", "content": "hello"}], stop="x", max_tokens=5)
    assert completion.text == "hi" and model.calls[0][0] == [Message.user("hello")]
    with pytest.raises(ConfigurationError, match="role must be one of"):
        model.generate([{"role": "robot", "content": "x"}])


def test_constrained_steps_get_the_grammar_budget_unless_the_app_sets_max_tokens() -> None:
    from hanlin import Constraint
    from hanlin.grammar import STEP_MAX_TOKENS

    seen: list[tuple[int | None, Constraint | None]] = []

    def reply(messages, params):
        seen.append((params.max_tokens, params.constraint))
        return "Thought: done\nFinal Answer: ok"

    Agent(ScriptedModel(reply), [add]).run("hi")
    Agent(ScriptedModel(reply), [add], params={"max_tokens": 64}).run("hi")
    Agent(ScriptedModel(reply), [add], constrained=False).run("hi")
    (budget, constraint), (app_set, _), (unconstrained, none) = seen
    assert budget == STEP_MAX_TOKENS and 'thought ::= [^\\n]{1,300}' in constraint.grammar
    assert app_set == 64 and unconstrained is None and none is None


def test_a_full_context_ends_the_run_with_a_clear_error_not_retries() -> None:
    import dataclasses

    from hanlin import Completion, Usage

    calls = []

    def reply(messages, params):
        calls.append(1)
        return Completion(text="Thought: and so on and so on", finish_reason="length",
                          usage=Usage(prompt_tokens=95, completion_tokens=5))

    model = ScriptedModel(reply)
    model.capabilities = dataclasses.replace(model.capabilities, context_length=100)
    result = Agent(model, [add]).run("hi")
    assert result.status == "error" and len(calls) == 1
    assert "filled the model's context (100 of 100 tokens)" in result.error and "new session" in result.error

    # cut by max_tokens with room left in the context is the model's mistake: retried as usual
    calls.clear()
    model = ScriptedModel(lambda m, p: (calls.append(1), Completion(
        text="Thought: and so on", finish_reason="length", usage=Usage(prompt_tokens=10, completion_tokens=5)))[1])
    model.capabilities = dataclasses.replace(model.capabilities, context_length=100)
    assert Agent(model, [add], max_retries=2).run("hi").status == "gave_up" and len(calls) == 3


def test_a_call_repeated_from_the_previous_step_is_not_rerun_and_only_the_answer_is_left() -> None:
    runs: list[int] = []

    @tool
    def counter(n: int) -> int:
        """Count.

        Args:
            n: a number
        """
        runs.append(n)
        return n + 1

    grammars: list[str] = []

    def reply(messages, params):
        grammars.append(params.constraint.grammar)
        if len(grammars) <= 2:
            return 'Thought: count\nAction: counter\nAction Input: {"n": 1}'
        return "Thought: done\nFinal Answer: 2"

    result = Agent(ScriptedModel(reply), [counter]).run("count from 1")
    assert result.status == "answered" and runs == [1]  # the repeat was answered from the first result
    observations = [m.content for m in result.messages if m.role == "tool"]
    assert observations[0] == "2" and observations[1].startswith("2\n[The same counter call as in your previous step")
    assert "Action: " in grammars[0] and "Action: " in grammars[1] and "Action: " not in grammars[2]
    assert "Final Answer: " in grammars[2]


@tool
def python(code: str) -> str:
    """Run Python code.

    Args:
        code: the source
    """
    return f"ran {code!r}"


def test_tools_protocol_runs_the_shown_code_beside_a_json_call_to_no_tool_and_refuses_an_echoed_correction() -> None:
    # python-11: code in a ```python block, then the output it expected as a ```json "call" to count_s
    shown = ("You can count it:\n```python\nprint('mississippi'.count('s'))\n```\nIt outputs:\n"
             '```json\n{"name": "count_s", "arguments": {"count": 2}}\n```')
    model = ScriptedModel([shown, "4"])
    result = Agent(model, [python, add], protocol="tools").run("How many s in mississippi? Use Python.")
    assert result.status == "answered" and result.output == "4"
    assert [c.name for c in result.messages[1].tool_calls] == ["python"]
    # corrected, the model replied with the correction itself: not its answer
    unknown = '```json\n{"name": "count_s", "arguments": {"count": 2}}\n```'
    echo = ("The last reply could not be used: there is no tool named 'count_s'. Call one of: python, add; or reply "
            "with your final answer in plain words.")
    model = ScriptedModel([unknown, echo, "4"])
    result = Agent(model, [python, add], protocol="tools").run("q")
    assert result.status == "answered" and result.output == "4"
    assert "that was the message about your previous reply, not an answer" in model.calls[2][0][-1].content
    said = ScriptedModel([unknown, "There is no tool named count_s, so: 4."])  # mentioning the tool is an answer
    assert Agent(said, [python, add], protocol="tools").run("q").output == "There is no tool named count_s, so: 4."


def test_tools_protocol_refuses_a_reply_that_repeats_the_note_on_a_repeated_call() -> None:
    # python-10: the same call twice, then the repeat note given back as the answer
    call = Completion(text="", tool_calls=[ToolCall(id="c1", name="python", arguments={"code": "print(1)"})])
    again = Completion(text="", tool_calls=[ToolCall(id="c2", name="python", arguments={"code": "print(1)"})])
    echo = "The same python call as in your previous step, so it was not run again; its result is above."
    model = ScriptedModel([call, again, echo, "pear"])
    result = Agent(model, [python], protocol="tools", max_steps=6).run("Which word comes last? Use Python.")
    assert result.status == "answered" and result.output == "pear"
    assert "that sentence was a note about your call, not an answer" in model.calls[3][0][-1].content
    # the note again after the correction is no answer either (python-10 then ended "answered" with the note)
    model = ScriptedModel([call, again, echo, echo, "pear"])
    result = Agent(model, [python], protocol="tools", max_steps=6).run("Which word comes last? Use Python.")
    assert result.status == "answered" and result.output == "pear"
    result = Agent(ScriptedModel([call, again, echo, echo, echo]), [python], protocol="tools",
                   max_steps=8).run("Which word comes last? Use Python.")
    assert result.status == "gave_up" and "repeated the note on the tool result" in result.error
    # inside prose, with the tool's name capitalised (python-05: "...modify the code to run the same Python call as
    # in your previous step, so it was not run again; ...")
    prose = ("To fix this, modify the code to run the same Python call as in your previous step, so it was not run "
             "again.")
    model = ScriptedModel([call, again, prose, "pear"])
    result = Agent(model, [python], protocol="tools", max_steps=6).run("Which word comes last? Use Python.")
    assert result.status == "answered" and result.output == "pear"
    # a reply that only shares words with the note is an answer
    model = ScriptedModel([call, again, "It was not run again, but the result above says pear."])
    result = Agent(model, [python], protocol="tools", max_steps=6).run("Which word comes last? Use Python.")
    assert result.output == "It was not run again, but the result above says pear."


def test_tools_protocol_corrects_a_call_cut_off_at_the_token_limit() -> None:
    cut = Completion(text='{"name": "add", "arguments": {"a": 240, "b": 1' + "0" * 300, finish_reason="length")
    model = ScriptedModel([cut, cut, "42"])  # a loop of zeros: decoded again with a penalty first (test_runaway)
    result = Agent(model, [add], protocol="tools").run("sum")
    assert result.status == "answered" and result.output == "42"
    assert model.calls[1][1].frequency_penalty and "cut off at the length limit" in model.calls[2][0][-1].content
    words = Completion(text="The sum of the numbers is forty-two, as", finish_reason="length")  # text cut off: an answer
    assert Agent(ScriptedModel([words]), [add], protocol="tools").run("sum").status == "answered"


def test_tools_protocol_runs_python_code_the_model_showed_instead_of_calling_the_tool() -> None:
    shown = "To find out, you can use:\n```python\nprint(2 + 3)\n```\nThis prints the sum."
    model = ScriptedModel([shown, "The sum is 5.", f"Done: {shown}"])
    result = Agent(model, [python, add], protocol="tools").run("What is 2 + 3? Use Python.")
    assert result.status == "answered" and result.output == "The sum is 5."
    assistant, observation = result.messages[1], result.messages[2]
    assert [(c.name, c.arguments) for c in assistant.tool_calls] == [("python", {"code": "print(2 + 3)"})]
    assert observation.tool_call_id == assistant.tool_calls[0].id and observation.content == "ran 'print(2 + 3)'"
    # what the reply said after its block guessed at the output; the model's next step sees the reply up to the block
    assert assistant.content == "To find out, you can use:\n```python\nprint(2 + 3)\n```"
    assert [m.content for m in model.calls[1][0] if m.role == "assistant"] == [assistant.content]

    # a question that names the code tool is told a fenced block is a call, so a block after a result is the next call
    assert "you can write the code itself in a ```python block" in model.calls[0][0][0].content
    called = Completion(text="", tool_calls=[ToolCall(id="c1", name="python", arguments={"code": "1"})])
    model = ScriptedModel([called, shown, "5"])
    result = Agent(model, [python], protocol="tools").run("What is 2 + 3? Run Python.")
    assert result.status == "answered" and result.output == "5"
    assert [c.arguments["code"] for m in result.messages for c in m.tool_calls] == ["1", "print(2 + 3)"]
    # otherwise the line is not shown, and once the code tool has returned a result code in a reply illustrates the
    # answer
    model = ScriptedModel([called, shown])
    result = Agent(model, [python], protocol="tools").run("What is 2 + 3?")
    assert result.status == "answered" and result.output == shown
    assert "python block" not in model.calls[0][0][0].content
    # without a tool that runs code, or with two blocks, the reply is the answer
    assert Agent(ScriptedModel([shown]), [add], protocol="tools").run("q").output == shown
    two = shown + "\nor:\n```python\nprint(5)\n```"
    assert Agent(ScriptedModel([two]), [python], protocol="tools").run("q").output == two
