"""Getting the most out of a small model: the ReAct/ReWOO parsers' line-start labels and kept fences, the repeat guard
that withdraws tools for one step only, names for models and tools, self-consistency (samples=N) and the protocols'
worked examples. Loop logic runs on ScriptedModel; one short SmolLM2 run checks the sampling mechanics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import BaseModel

from hanlin import (Agent, Completion, ConfigurationError, FinalAnswer, ModelSpec, ParseError, RunFinished,
                    RuntimeSpec, ScriptedModel, ToolCall, get_plugin_manager, hookimpl, load_traces, tool)
from hanlin.agent import normalise_answer
from hanlin.plugins.protocols.react import EXAMPLE_CALC_TOOL, EXAMPLE_TOOL, REACT_EXAMPLE
from hanlin.plugins.protocols.react_parser import parse_react
from hanlin.plugins.protocols.rewoo import PLAN_EXAMPLE
from hanlin.plugins.protocols.rewoo_parser import parse_plan
from tests.conftest import requires_llama, requires_smollm2


@tool
def calc(expression: str) -> str:
    """Evaluate arithmetic.

    Args:
        expression: the expression
    """
    return expression


@tool
def python(code: str) -> str:
    """Run Python.

    Args:
        code: the code
    """
    return code


TOOLS = {"calc": calc, "python": python}


# ---- the ReAct parser: labels at line starts, fences kept inside JSON -------------------------------------------
def test_a_label_inside_a_thought_is_not_a_step() -> None:
    with pytest.raises(ParseError, match="neither an 'Action:' nor a 'Final Answer:' line"):
        parse_react("Thought: I need the final answer: soon", TOOLS)  # it used to end the run with 'soon'
    step = parse_react('Thought: the next action: multiply\nAction: calc\nAction Input: {"expression": "2*3"}', TOOLS)
    assert step.action == "calc" and step.arguments == {"expression": "2*3"}
    assert step.thought == "the next action: multiply"
    # an "Action:" inside the arguments' line is not a second action
    step = parse_react('Action: calc\nAction Input: {"expression": "1"} then Action: python', TOOLS)
    assert step.arguments == {"expression": "1"}
    # indented or emphasised labels at a line start still count
    assert parse_react("Thought: done\n  **Final Answer:** 7", TOOLS).final == "7"


def test_a_code_fence_inside_json_arguments_is_kept() -> None:
    code = 'doc = """\n```python\nprint(1)\n```\n"""\nprint(doc)'
    text = "Thought: run it\nAction: python\nAction Input: " + json.dumps({"code": code})
    assert parse_react(text, TOOLS).arguments == {"code": code}
    # fences around the arguments or the whole reply are still taken off
    fenced = 'Thought: x\nAction: calc\nAction Input:\n```json\n{"expression": "5"}\n```'
    assert parse_react(fenced, TOOLS).arguments == {"expression": "5"}
    assert parse_react('Action: calc\nAction Input: `{"expression": "1"}`', TOOLS).arguments == {"expression": "1"}
    wrapped = '```\nThought: x\nAction: calc\nAction Input: {"expression": "```"}\n```'
    assert parse_react(wrapped, TOOLS).arguments == {"expression": "```"}
    assert parse_react("```\nThought: x\nFinal Answer: 42\n```", TOOLS).final == "42"
    block = "Final Answer: run this:\n```python\nprint(1)\n```"
    assert parse_react(block, TOOLS).final == "run this:\n```python\nprint(1)\n```"  # a balanced block stays


def test_a_code_fence_inside_a_plan_argument_is_kept() -> None:
    args = {"code": "print('```')"}
    plan = parse_plan(f"```\nPlan: run\n#E1 = python[{json.dumps(args)}]\n```", TOOLS)
    assert [(s.tool, s.arguments) for s in plan] == [("python", args)]


def test_rewoo_never_works_past_max_steps() -> None:
    runs: list[int] = []
    model = ScriptedModel(["#E1 = counter(1)", 'Plan: count\n#E1 = counter[{"n": 1}]'])
    result = Agent(model, [_counter_tool(runs)], protocol="rewoo", max_steps=2).run("count")
    assert result.status == "gave_up" and result.steps == 2 and runs == []  # the plan came on the last step
    assert "before the plan could run" in result.error


# ---- the repeat guard: tools withdrawn for the next step only ---------------------------------------------------
def _counter_tool(runs: list[int]):
    @tool
    def counter(n: int) -> int:
        """Count.

        Args:
            n: a number
        """
        runs.append(n)
        return n + 1

    return counter


def test_the_repeat_guard_withdraws_the_tools_for_one_step_only_in_react() -> None:
    runs: list[int] = []
    grammars: list[str] = []
    replies = ['Thought: count\nAction: counter\nAction Input: {"n": 1}',
               'Thought: count\nAction: counter\nAction Input: {"n": 1}',  # the repeat: not run again
               "Thought: hmm",  # no answer either: a parse failure
               'Thought: count on\nAction: counter\nAction Input: {"n": 5}',
               "Thought: done\nFinal Answer: 6"]

    def reply(messages, params):
        grammars.append(params.constraint.grammar)
        return replies[len(grammars) - 1]

    result = Agent(ScriptedModel(reply), [_counter_tool(runs)]).run("count")
    assert result.status == "answered" and runs == [1, 5]
    offered = ["Action: " in g for g in grammars]
    assert offered == [True, True, False, True, True]  # only the step right after the repeat is answer-only


def test_the_repeat_guard_withdraws_the_tools_for_one_step_only_in_native_calling() -> None:
    runs: list[int] = []
    offered: list[bool] = []
    call = Completion(tool_calls=[ToolCall(name="counter", arguments={"n": 1})])
    replies = [call, call, Completion(text=""), Completion(tool_calls=[ToolCall(name="counter", arguments={"n": 2})]),
               Completion(text="3")]

    def reply(messages, params):
        offered.append(params.tools is not None)
        return replies[len(offered) - 1]

    result = Agent(ScriptedModel(reply), [_counter_tool(runs)], protocol="tools").run("count")
    assert result.status == "answered" and runs == [1, 2] and offered == [True, True, False, True, True]


# ---- names for models and tools ----------------------------------------------------------------------------------
class ClosingModel(ScriptedModel):
    closed = 0

    def close(self) -> None:
        type(self).closed += 1


class ToyPlugin:
    @hookimpl
    def register_models(self, register):
        register(ModelSpec(name="toy-levers", format="gguf", locate=lambda: Path("/nonexistent.gguf"),
                           installed=lambda: True))

    @hookimpl
    def register_runtimes(self, register):
        register(RuntimeSpec(name="toy-levers-runtime", formats=frozenset({"gguf"}), priority=0,
                             load=lambda spec, path, **config: ClosingModel(["Thought: ok\nFinal Answer: 4"]),
                             available=lambda: None))


def test_tools_by_name_mixed_with_objects_and_unknown_names_listed() -> None:
    agent = Agent(ScriptedModel([]), ["calculator", calc])
    assert [t.name for t in agent.tools] == ["calculator", "calc"]
    assert agent.tools[0].invoke({"expression": "6 * 7"}).content == "42"
    assert [t.name for t in Agent(ScriptedModel([]), "calculator").tools] == ["calculator"]
    with pytest.raises(ConfigurationError, match=r"unknown tool 'calculater'\. Did you mean 'calculator'\? "
                                                 r"Known tools: .*calculator.*python"):
        Agent(ScriptedModel([]), ["calculater"])


def test_a_model_loaded_by_name_is_closed_by_the_agent_and_one_passed_in_is_not() -> None:
    pm = get_plugin_manager()
    with pm.registered(ToyPlugin(), name="toy-levers"):
        ClosingModel.closed = 0
        with Agent("toy-levers", ["calculator"]) as agent:
            assert isinstance(agent.model, ClosingModel) and agent.run("2+2?").output == "4"
        assert ClosingModel.closed == 1
        with pytest.raises(ConfigurationError, match="unknown tool"):
            Agent("toy-levers", ["no_such_tool"])  # the constructor fails: the model it loaded is released
        assert ClosingModel.closed == 2
        mine = ClosingModel([])
        Agent(mine, ["calculator"]).close()
        assert ClosingModel.closed == 2  # the caller's model stays open
    with pytest.raises(ConfigurationError, match=r"unknown model 'toy-levers'.* Known models: "):
        Agent("toy-levers")


# ---- self-consistency --------------------------------------------------------------------------------------------
def _by_seed(answers: dict[int, str]):
    """A model whose reply depends on the sampling seed; records (temperature, seed) of each call."""
    seen: list[tuple[float | None, int | None]] = []

    def reply(messages, params):
        seen.append((params.temperature, params.seed))
        return answers[params.seed]

    return ScriptedModel(reply), seen


def test_samples_vote_by_value_and_keep_the_winning_run() -> None:
    model, seen = _by_seed({0: "Thought: a\nFinal Answer: 41", 1: "Thought: b\nFinal Answer: The total is 1,200.",
                            2: "Thought: c\nFinal Answer: 1200.0", 3: "no format at all"})
    result = Agent(model, [calc], samples=4, max_retries=0).run("total?")
    assert [s for _, s in seen] == [0, 1, 2, 3] and {t for t, _ in seen} == {0.7}  # greedy params: 0.7
    assert result.status == "answered" and result.output == "The total is 1,200." and result.samples == 4
    assert result.agreement == 0.5  # 2 of 4 runs; the one that never answered does not vote
    assert result.sample_answers == ["41", "The total is 1,200.", "1200.0", None]
    singles = [Agent(ScriptedModel([reply]), [calc], max_retries=0).run("total?") for reply in
               ("Thought: a\nFinal Answer: 41", "Thought: b\nFinal Answer: The total is 1,200.",
                "Thought: c\nFinal Answer: 1200.0", "no format at all")]
    assert result.usage.completion_tokens == sum(r.usage.completion_tokens for r in singles)
    # the stream is the winning run's events, closed by one RunFinished with everyone's usage
    finals = [e for e in result.events if isinstance(e, FinalAnswer)]
    assert [e.text for e in finals] == ["The total is 1,200."] and isinstance(result.events[-1], RunFinished)
    assert result.events[-1].usage == result.usage and sum(isinstance(e, RunFinished) for e in result.events) == 1


def test_sample_ties_go_to_the_first_answer_and_text_is_normalised(tmp_path: Path) -> None:
    model, seen = _by_seed({10: "Final Answer: Rome", 11: "Final Answer: PARIS!", 12: "Final Answer:  paris",
                            13: "Final Answer: rome."})
    agent = Agent(model, [calc], samples=4, params={"temperature": 0.3, "seed": 10})
    streamed = list(agent.stream("capital?"))
    result = agent.run("capital?")
    assert seen[:4] == [(0.3, 10), (0.3, 11), (0.3, 12), (0.3, 13)]
    assert result.output == "Rome" and result.agreement == 0.5
    assert [e.type for e in streamed] == [e.type for e in result.events]
    assert load_traces(result.save_trace(tmp_path / "t.jsonl"))[0].agreement == 0.5
    assert normalise_answer("Paris.") == normalise_answer(" paris ") != normalise_answer("Paris, France")
    assert normalise_answer("x = -0") == normalise_answer("0.0") and normalise_answer("1,200") == normalise_answer("1200")
    assert normalise_answer("2024-05-30") != normalise_answer("2024-05-31")  # several numbers: compared as text


def test_samples_without_any_answer_give_up_with_agreement_zero_and_one_sample_is_a_plain_run() -> None:
    model, seen = _by_seed({0: "mumble", 1: "mumble"})
    result = Agent(model, [calc], samples=2, max_retries=0).run("x")
    assert result.status == "gave_up" and result.agreement == 0.0 and result.sample_answers == [None, None]
    assert len(seen) == 2
    plain = ScriptedModel(["Final Answer: 3"])
    single = Agent(plain, [calc]).run("x")
    assert plain.calls[0][1].temperature is None and plain.calls[0][1].seed is None
    assert single.samples == 1 and single.agreement is None and single.sample_answers is None
    with pytest.raises(ConfigurationError, match="samples must be at least 1"):
        Agent(plain, [calc], samples=0)


def test_samples_keep_the_winning_transcript_in_the_session_and_vote_on_structured_output() -> None:
    class Total(BaseModel):
        value: int

    model, _ = _by_seed({0: 'Final Answer: {"value": 2}', 1: 'Final Answer: {"value":  3}',
                         2: 'Final Answer: {"value": 3}'})
    agent = Agent(model, [calc], samples=3, output_type=Total)
    result = agent.run("sum?", session_id="s")
    assert result.output == Total(value=3) and result.agreement == pytest.approx(2 / 3)
    assert [m.content for m in agent.history("s")] == [m.content for m in result.messages]
    assert agent.history("s")[-1].content == 'Final Answer: {"value":  3}'


# ---- worked examples ---------------------------------------------------------------------------------------------
def _system(protocol: str, tools: list, **options) -> str:
    reply = Completion(text="4") if protocol == "tools" else "Final Answer: 4"
    model = ScriptedModel([reply, "4"])
    Agent(model, tools, protocol=protocol, **options).run("2+2?")
    return model.calls[0][0][0].content


@pytest.mark.parametrize("protocol", ["react", "rewoo", "tools"])
def test_worked_examples_are_switchable_and_never_name_a_real_tool(protocol: str) -> None:
    assert EXAMPLE_TOOL in _system(protocol, [calc])
    assert EXAMPLE_TOOL not in _system(protocol, [calc], examples=False)

    @tool(name=EXAMPLE_TOOL)
    def lookup(town: str) -> int:
        """Population.

        Args:
            town: the town
        """
        return 1

    assert "Arvel" not in _system(protocol, [calc, lookup])  # a real tool with the made-up name: no example

    @tool(name=EXAMPLE_CALC_TOOL)
    def add(a: int, b: int) -> int:
        """Add.

        Args:
            a: a number
            b: another
        """
        return a + b

    if protocol != "tools":  # react's and rewoo's examples also use a made-up tool that adds
        assert "Arvel" not in _system(protocol, [calc, add])  # nor with the example's other made-up tool's name


def test_the_worked_examples_are_in_the_format_the_parsers_read() -> None:
    body = REACT_EXAMPLE.split("Question:", 1)[1].split("\n", 1)[1]
    steps = [parse_react(part if i == 0 else part.split("\n", 1)[1]) for i, part in enumerate(body.split("Observation:"))]
    assert [(s.action, s.arguments) for s in steps[:3]] == [
        (EXAMPLE_TOOL, {"town": "Arvel"}), (EXAMPLE_TOOL, {"town": "Brisk"}), (EXAMPLE_CALC_TOOL, {"a": 1200, "b": 800})]
    # the looked-up facts are not the answer: the example computes with a tool before answering
    assert steps[3].final == "2000" and "2000" not in body.split("Observation: 2000")[0]
    plan = parse_plan(PLAN_EXAMPLE)
    assert [(s.tool, s.depends_on) for s in plan] == [(EXAMPLE_TOOL, set()), (EXAMPLE_TOOL, set()),
                                                      ("add_numbers", {1, 2})]


def test_react_repeats_the_question_after_each_observation() -> None:
    """After a long observation a small model loses a multi-step question from view (Qwen2.5-Coder-0.5B answered all
    14 look-up-then-calculate tooluse items with the looked-up fact): the observation turn restates the question. A
    correction turn in between is not taken for the question."""
    runs: list[int] = []
    model = ScriptedModel(['Thought: look\nAction: counter\nAction Input: {"n": 2}',
                           "Thought: hmm",  # unparseable: corrected with an 'Observation: Error' user turn
                           'Thought: again\nAction: counter\nAction Input: {"n": 3}',
                           "Thought: done\nFinal Answer: 4"])
    question = "What is  the   counter after 2,\nplus one?"
    result = Agent(model, [_counter_tool(runs)]).run(question)
    assert result.status == "answered" and runs == [2, 3]
    first, after_correction = model.calls[1][0][-1].content, model.calls[3][0][-1].content
    assert first.startswith("Observation: 3\nThe question was: What is the counter after 2, plus one?\n")
    assert first.endswith("\nIf this answers the question, reply with the Final Answer.")
    assert after_correction.startswith("Observation: 4\nThe question was: What is the counter after 2, plus one?")
    assert model.calls[2][0][-1].content.startswith("Observation: Error: ")


# ---- the evaluation's levers ------------------------------------------------------------------------------------
def test_eval_samples_and_examples_reach_the_agent_and_the_cache_key(tmp_path: Path) -> None:
    from hanlin.plugins.evaluators.agent_eval import AgentSettings, ToolUseDataset, evaluate_agent
    from hanlin.plugins.evaluators.runner import EvalSettings, PredictionCache

    cache = PredictionCache(tmp_path / "cache.sqlite")
    model = ScriptedModel(lambda m, p: "Thought: easy\nFinal Answer: 1411381")
    settings = EvalSettings(limit=1, samples=3, temperature=0.5)
    (result,) = evaluate_agent(model, ToolUseDataset(), settings, AgentSettings(kb_backend="bm25"), cache)
    assert len(model.calls) == 3 and [c[1].seed for c in model.calls] == [0, 1, 2]
    assert EXAMPLE_TOOL in model.calls[0][0][0].content
    assert result.metrics["agreement"].value == 1.0 and result.metrics["accuracy"].value == 1.0
    assert "3 samples agreed" in result.predictions[0].detail
    (plain,) = evaluate_agent(model, ToolUseDataset(), EvalSettings(limit=1, temperature=0.5),
                              AgentSettings(kb_backend="bm25"), cache)
    assert plain.cached == 0 and len(model.calls) == 4 and "agreement" not in plain.metrics  # samples: another key
    (bare,) = evaluate_agent(model, ToolUseDataset(), EvalSettings(limit=1, temperature=0.5),
                             AgentSettings(kb_backend="bm25", examples=False), cache)
    assert bare.cached == 0 and len(model.calls) == 5 and EXAMPLE_TOOL not in model.calls[-1][0][0].content
    cache.close()


def test_the_tool_use_set_interleaves_its_tools_and_has_unique_ids() -> None:
    from hanlin.plugins.evaluators.agent_eval import ToolUseDataset

    items = ToolUseDataset().items()
    assert len(items) >= 60 and len({i.id for i in items}) == len(items)
    first_tools = [i.extra["expected_tools"][0] for i in items]
    assert first_tools == ["calculator", "python", "knowledge_base"] * (len(items) // 3)


def test_the_cli_offers_the_levers() -> None:
    import typer
    from typer.testing import CliRunner

    from hanlin.cli import app
    from hanlin.plugin_manager import plugins

    with_plugins = typer.Typer()  # `hanlin eval` comes from the evaluators plugin (main() adds it to the real app)
    plugins().add_commands(with_plugins)
    runner = CliRunner()
    for cli, command in ((app, ["run", "--help"]), (with_plugins, ["eval", "--help"])):
        out = runner.invoke(cli, command, env={"COLUMNS": "200"}).output
        assert "--samples" in out and "--no-examples" in out, out


# ---- a real model ------------------------------------------------------------------------------------------------
@requires_llama
@requires_smollm2
def test_smollm2_samples_run_n_times_and_agreement_matches_the_votes(smollm2, monkeypatch) -> None:
    seen: list[tuple[float | None, int | None]] = []
    original = smollm2.astream

    def counting(messages, params):
        seen.append((params.temperature, params.seed))
        return original(messages, params)

    monkeypatch.setattr(smollm2, "astream", counting)
    agent = Agent(smollm2, [calc], samples=3, max_steps=2, max_retries=0, examples=False, params={"max_tokens": 40})
    result = agent.run("What is 6 times 7?")
    assert sorted({s for _, s in seen}) == [0, 1, 2] and {t for t, _ in seen} == {0.7}  # three sampled runs
    assert result.samples == 3 and len(result.sample_answers) == 3 and 0.0 <= result.agreement <= 1.0
    answered = [a for a in result.sample_answers if a is not None]
    if result.status == "answered":
        winner = normalise_answer(result.output_text)
        assert result.agreement == sum(normalise_answer(a) == winner for a in answered) / 3
    else:
        assert not answered and result.agreement == 0.0
