"""Agent evaluation: the shipped tool-use set, its scores computed by hand for each protocol (scripted runs through
the real Agent and tools), the cache, and real SmolLM2 runs."""

from __future__ import annotations

import fnmatch
import json
import math
import os
import stat
import tomllib
from pathlib import Path

import pytest

from hanlin import Completion, ScriptedModel, ToolCall
from hanlin.errors import ConfigurationError
from hanlin.plugins.evaluators.agent_eval import (AgentSettings, ToolUseDataset, data_dir, evaluate_agent,
                                                  ratio_with_stderr)
from hanlin.plugins.evaluators.datasets import open_dataset
from hanlin.plugins.evaluators.runner import EvalSettings, PredictionCache
from tests.conftest import requires_llama, requires_smollm2

FAST = AgentSettings(kb_backend="bm25")  # the embedding model is not what these tests are about
PRIMES = 'print(sum(1 for n in range(2, 1000) if all(n % d for d in range(2, int(n ** 0.5) + 1))))'


def test_the_shipped_set_loads_as_a_registered_dataset() -> None:
    dataset = open_dataset("tooluse")
    items = dataset.items()
    assert isinstance(dataset, ToolUseDataset) and len(items) == 63 and dataset.kind == "agent"
    assert (data_dir() / "tool_use.jsonl").is_file() and len(list((data_dir() / "tool_use_kb").glob("*.md"))) == 4
    assert [i.group for i in items[:3]] == ["calculator", "python", "knowledge_base"]  # any --limit mixes tools
    assert sum("calculator" in i.extra["expected_tools"] for i in items) == 35
    assert dataset.fingerprint() == ToolUseDataset().fingerprint()
    with pytest.raises(ConfigurationError, match="takes no subset"):
        open_dataset("tooluse:hard")


def test_the_data_files_are_package_data_so_a_wheel_has_them() -> None:
    root = Path(__file__).resolve().parents[1]
    package_data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    for path in (root / "plugins" / "evaluators" / "data").rglob("*"):
        if path.is_file() and path.suffix != ".py" and "__pycache__" not in path.parts:
            package = "hanlin." + ".".join(path.parent.relative_to(root).parts)
            globs = package_data.get(package, [])
            assert any(fnmatch.fnmatch(path.name, g) for g in globs), f"{path} is not in package-data of {package}"


def test_bad_rows_are_reported_with_their_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "a", "question": "q", "answer": "1", "match": "number", "expected_tools": ["calculator"]})
                   + "\n" + json.dumps({"id": "b", "question": "q", "answer": "1", "match": "number",
                                        "expected_tools": ["browser"]}) + "\n")
    with pytest.raises(ConfigurationError, match=r"line 2: expected_tools: .*unknown tools \['browser'\]"):
        ToolUseDataset(bad).items()


def test_answers_are_judged_as_numbers_or_words() -> None:
    items = {i.id: i for i in ToolUseDataset().items()}
    judge = ToolUseDataset().judge
    assert judge("4817 * 293 = 1,411,381.", items["calc-01"]).correct
    assert not judge("About 1.4 million", items["calc-01"]).correct
    assert judge("The guest network is called **HarborGuest**.", items["kb-01"]).correct
    assert not judge("HarborStaff", items["kb-01"]).correct
    assert judge("It ships with firmware 4.2.1", items["kb-07"]).correct
    # floating-point round-off is the right answer (0.17 * 2350 in Python); any real difference is not
    assert judge("399.50000000000006", items["calc-05"]).correct
    assert not judge("399.5001", items["calc-05"]).correct and not judge("399", items["calc-05"]).correct


def test_ratio_standard_error_by_hand() -> None:
    score = ratio_with_stderr([1, 1, 0], [1, 3, 0])  # the third item made no attempt: it adds nothing
    # ratio 2/4; residuals 1 - 0.5 * 1 = 0.5 and 1 - 0.5 * 3 = -0.5 -> variance 0.5, mean denominator 2
    assert score.value == 0.5 and score.n == 2 and math.isclose(score.stderr, math.sqrt(0.5 / 2) / 2)
    assert math.isnan(ratio_with_stderr([0], [0]).value)


# ---- scripted runs: the loop's logic, scored by hand -------------------------------------------------------------
def _item_of(messages) -> str:
    text = " ".join(m.content for m in messages)
    return "calc" if "4817" in text else "python" if "prime numbers" in text else "kb"


def _turn(messages) -> int:
    return sum(m.role == "assistant" for m in messages)


def react_script(messages, params) -> str:
    steps = {
        "calc": ['Thought: multiply\nAction: calculator\nAction Input: {"expression": "4817 * 293"}',
                 "Thought: done\nFinal Answer: 1411381"],
        "python": ["I think there are about 170.",  # not a ReAct step: a parse failure
                   'Thought: try\nAction: calculator\nAction Input: {"expr": "1000"}',  # invalid arguments
                   'Thought: count\nAction: python\nAction Input: ' + json.dumps({"code": PRIMES}),
                   "Thought: done\nFinal Answer: 168"],
        "kb": ["Thought: I know this\nFinal Answer: HarborStaff"],  # no tool, and wrong
    }
    return steps[_item_of(messages)][_turn(messages)]


def rewoo_script(messages, params) -> str:
    item = _item_of(messages)
    if messages[0].content.startswith("You solve tasks"):
        return {"calc": "1411381", "python": "168", "kb": "The guest network is HarborGuest."}[item]
    plans = {
        "calc": ['Plan: multiply\n#E1 = calculator[{"expression": "4817 * 293"}]'],
        "python": ['Plan: count\n#E1 = python{"code": "1"}',  # not a valid step: a parse failure
                   'Plan: count\n#E1 = python[{"source": "print(168)"}]'],  # invalid arguments
        "kb": ['Plan: look up\n#E1 = knowledge_base[{"query": "guest Wi-Fi network"}]\n'
               'Plan: add\n#E2 = calculator[{"expression": "2 + 2"}]'],
    }
    return plans[item][_turn(messages)]


def native_script(messages, params) -> Completion:
    def call(name: str, **arguments) -> Completion:
        return Completion(tool_calls=[ToolCall(name=name, arguments=arguments)])

    steps = {
        "calc": [call("calculator", expression="4817 * 293"), Completion(text="1411381")],
        "python": [call("python_exec", code="print(1)"),  # unknown tool
                   Completion(text=""),  # neither text nor a call: a parse failure
                   call("python", code=PRIMES), Completion(text="There are 168.")],
        "kb": [call("knowledge_base", query="guest Wi-Fi"), Completion(text="I don't know.")],
    }
    return steps[_item_of(messages)][_turn(messages)]


@pytest.mark.parametrize("protocol, script, expected", [
    # accuracy, valid_calls (valid / (calls + parse failures), pooled), expected_tool, mean steps
    ("react", react_script, (2 / 3, (1 + 1 + 0) / (1 + 3 + 0), 2 / 3, (2 + 4 + 1) / 3)),
    ("rewoo", rewoo_script, (3 / 3, (1 + 0 + 2) / (1 + 2 + 2), 3 / 3, (3 + 4 + 3) / 3)),
    ("tools", native_script, (2 / 3, (1 + 1 + 1) / (1 + 3 + 1), 3 / 3, (2 + 4 + 2) / 3)),
])
def test_scripted_runs_score_as_computed_by_hand(protocol, script, expected, tmp_path: Path) -> None:
    cache = PredictionCache(tmp_path / "cache.sqlite")
    (result,) = evaluate_agent(ScriptedModel(script), ToolUseDataset(), EvalSettings(limit=3),
                               AgentSettings(protocols=(protocol,), kb_backend="bm25"), cache)
    m = result.metrics
    assert result.dataset == f"tooluse@{protocol}" and result.model_calls == 3
    assert [m["accuracy"].value, m["valid_calls"].value, m["expected_tool"].value, m["steps"].value] == \
        pytest.approx(list(expected))
    assert [p.id for p in result.predictions] == ["calc-01", "python-01", "kb-01"]
    assert all(p.finish_reason == "answered" for p in result.predictions)
    assert result.prompts[0]["prompt"]["protocol"] == protocol and result.prompts[0]["transcript"]
    again = evaluate_agent(ScriptedModel([]), ToolUseDataset(), EvalSettings(limit=3),
                           AgentSettings(protocols=(protocol,), kb_backend="bm25"), cache)[0]
    assert again.model_calls == 0 and again.cached == 3 and again.metrics["accuracy"] == m["accuracy"]
    cache.close()


def test_the_cache_key_includes_the_protocol(tmp_path: Path) -> None:
    cache = PredictionCache(tmp_path / "cache.sqlite")
    evaluate_agent(ScriptedModel(react_script), ToolUseDataset(), EvalSettings(limit=1), FAST, cache)
    other = ScriptedModel(rewoo_script)
    (result,) = evaluate_agent(other, ToolUseDataset(), EvalSettings(limit=1),
                               AgentSettings(protocols=("rewoo",), kb_backend="bm25"), cache)
    assert result.cached == 0 and len(other.calls) == 2  # planned and solved: nothing served from react's runs
    cache.close()


def test_a_run_without_any_call_attempt_reports_no_valid_call_rate() -> None:
    (result,) = evaluate_agent(ScriptedModel(["Thought: easy\nFinal Answer: 1411381"]), ToolUseDataset(),
                               EvalSettings(limit=1), FAST)
    assert set(result.metrics) == {"accuracy", "expected_tool", "steps"} and result.metrics["accuracy"].value == 1.0
    assert result.metrics["expected_tool"].value == 0.0 and any("valid_calls is not reported" in n for n in result.notes)


def test_the_tools_folder_lets_the_kernels_users_through(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run as root, each python kernel has a user of its own: a 0700 temporary folder broke absolute paths into
    it and warned on every tooluse run. Passable (o+x), not listable by others."""
    modes = []
    build = ToolUseDataset.build_tools

    def spy(self: ToolUseDataset, settings: AgentSettings, workdir: Path) -> list:
        modes.append(stat.S_IMODE(os.stat(workdir).st_mode))
        return build(self, settings, workdir)

    monkeypatch.setattr(ToolUseDataset, "build_tools", spy)
    evaluate_agent(ScriptedModel(["Thought: easy\nFinal Answer: 1411381"]), ToolUseDataset(), EvalSettings(limit=1),
                   FAST)
    assert len(modes) == 1 and modes[0] & stat.S_IXOTH and not modes[0] & (stat.S_IROTH | stat.S_IWOTH)


# ---- a real model ------------------------------------------------------------------------------------------------
@requires_llama
@requires_smollm2
def test_smollm2_runs_two_items_per_protocol_with_scores_in_range(smollm2, tmp_path: Path) -> None:
    settings = AgentSettings(protocols=("react", "rewoo"), max_steps=3, kb_backend="bm25")
    results = evaluate_agent(smollm2, ToolUseDataset(), EvalSettings(limit=2, max_tokens=32), settings,
                             PredictionCache(tmp_path / "cache.sqlite"))
    assert [r.dataset for r in results] == ["tooluse@react", "tooluse@rewoo"]
    for r in results:
        m = r.metrics
        assert all(0.0 <= m[k].value <= 1.0 for k in ("accuracy", "expected_tool")) and m["accuracy"].n == 2
        assert "valid_calls" not in m or 0.0 <= m["valid_calls"].value <= 1.0
        assert 1.0 <= m["steps"].value <= 3.0 and r.model_calls == 2
        assert all(p.finish_reason in ("answered", "gave_up", "error") for p in r.predictions)
    # SmolLM2's chat template has no tool calling: the runtime teaches it the hermes format, so native calling runs.
    [native] = evaluate_agent(smollm2, ToolUseDataset(), EvalSettings(limit=1, max_tokens=48),
                              AgentSettings(protocols=("tools",), max_steps=2, kb_backend="bm25"))
    assert native.dataset == "tooluse@tools" and native.model_calls == 1 and native.predictions[0].finish_reason != "error"
