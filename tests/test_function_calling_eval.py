"""Function-calling evaluation: the AST-style checker by table, the shipped set's integrity, bad rows, scripted runs
scored by hand (python API and the real CLI) with the cache and resume, and a short real SmolLM2 run."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from hanlin import Completion, ScriptedModel, ToolCall
from hanlin.errors import ConfigurationError, ModelError
from hanlin.plugins.evaluators.base import DatasetError
from hanlin.plugins.evaluators.datasets import open_dataset
from hanlin.plugins.evaluators.fc_checker import check_calls, normalize_string
from hanlin.plugins.evaluators.function_calling import (FunctionCallingDataset, evaluate_function_calling, lost_call,
                                                        shipped_path)
from hanlin.plugins.evaluators.runner import EvalSettings, PredictionCache
from tests.conftest import requires_llama, requires_smollm2


def fn(name: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "description": name.replace("_", " "),
                                             "parameters": {"type": "object", "properties": properties,
                                                            "required": required}}}


WEATHER = fn("get_weather", {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
             ["city"])
AREA = fn("circle_area", {"radius": {"type": "number"}, "precise": {"type": "boolean"}}, ["radius"])
STATS = fn("stats", {"numbers": {"type": "array", "items": {"type": "number"}}}, ["numbers"])
INVOICE = fn("invoice", {"lines": {"type": "array", "items": {"type": "object", "properties": {
    "what": {"type": "string"}, "qty": {"type": "integer"}}}}}, ["lines"])
FUNCTIONS = [WEATHER, AREA, STATS, INVOICE]
PARIS = {"get_weather": {"city": ["Paris", "Paris, France"], "unit": ["celsius", ""]}}
LYON = {"get_weather": {"city": ["Lyon"], "unit": ["celsius", ""]}}

CHECKS: list[tuple[str, list[tuple[str, dict[str, Any]]], list[dict[str, Any]], bool, str]] = [
    ("exact", [("get_weather", {"city": "Paris", "unit": "celsius"})], [PARIS], True, ""),
    ("optional absent", [("get_weather", {"city": "Paris"})], [PARIS], True, ""),
    ("string: case, spaces, punctuation", [("get_weather", {"city": "  paris,FRANCE "})], [PARIS], True, ""),
    ("string: other value", [("get_weather", {"city": "Parisian"})], [PARIS], False,
     "wrong value for 'city': 'Parisian' not in ['Paris', 'Paris, France']"),
    ("optional present, wrong", [("get_weather", {"city": "Paris", "unit": "kelvin"})], [PARIS], False,
     "wrong value for 'unit': 'kelvin' not in ['celsius']"),
    ("missing required", [("get_weather", {"unit": "celsius"})], [PARIS], False, "missing required argument 'city'"),
    ("unknown argument", [("get_weather", {"city": "Paris", "country": "FR"})], [PARIS], False,
     "unknown argument 'country'"),
    ("argument the answer does not use", [("circle_area", {"radius": 2, "precise": True})],
     [{"circle_area": {"radius": [2.0]}}], False, "unexpected argument 'precise'"),
    ("int for float", [("circle_area", {"radius": 2})], [{"circle_area": {"radius": [2.0]}}], True, ""),
    ("float for int", [("circle_area", {"radius": 2.0})], [{"circle_area": {"radius": [2]}}], True, ""),
    ("number by value", [("circle_area", {"radius": 2.5})], [{"circle_area": {"radius": [2]}}], False,
     "wrong value for 'radius': 2.5 not in [2]"),
    ("a string is not a number", [("circle_area", {"radius": "2"})], [{"circle_area": {"radius": [2]}}], False,
     "'2' not in [2]"),
    ("a bool is not a number", [("circle_area", {"radius": True})], [{"circle_area": {"radius": [1]}}], False,
     "wrong value for 'radius'"),
    ("boolean", [("circle_area", {"radius": 1, "precise": False})],
     [{"circle_area": {"radius": [1], "precise": [True, ""]}}], False,
     "wrong value for 'precise': False not in [True]"),
    ("list in order", [("stats", {"numbers": [1, 2.0, 3]})], [{"stats": {"numbers": [[1.0, 2, 3]]}}], True, ""),
    ("list out of order", [("stats", {"numbers": [3, 2, 1]})], [{"stats": {"numbers": [[1, 2, 3]]}}], False,
     "wrong value for 'numbers': item 0: 3 != 1"),
    ("list of another length", [("stats", {"numbers": [1, 2]})], [{"stats": {"numbers": [[1, 2, 3]]}}], False,
     "a list of 2 items where 3 are expected"),
    ("nested dict", [("invoice", {"lines": [{"what": "Seat", "qty": 3}]})],
     [{"invoice": {"lines": [[{"what": ["seat", "seats"], "qty": [3]}]]}}], True, ""),
    ("nested dict, wrong inner value", [("invoice", {"lines": [{"what": "seat", "qty": 4}]})],
     [{"invoice": {"lines": [[{"what": ["seat"], "qty": [3]}]]}}], False,
     "item 0: wrong value for 'qty': 4 not in [3]"),
    ("nested dict, unknown key", [("invoice", {"lines": [{"what": "seat", "qty": 3, "vat": 1}]})],
     [{"invoice": {"lines": [[{"what": ["seat"], "qty": [3]}]]}}], False, "unexpected argument 'vat'"),
    ("wrong function", [("circle_area", {"radius": 1})], [PARIS], False,
     "called 'circle_area' where 'get_weather' is expected"),
    ("too many calls", [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Paris"})], [PARIS], False,
     "expected 1 call(s), got 2"),
    ("too few calls", [("get_weather", {"city": "Paris"})], [PARIS, LYON], False, "expected 2 call(s), got 1"),
    ("no call", [], [PARIS], False, "no call made"),
    ("parallel, same order", [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Lyon"})], [PARIS, LYON],
     True, ""),
    ("parallel, other order", [("get_weather", {"city": "Lyon"}), ("get_weather", {"city": "Paris"})], [PARIS, LYON],
     True, ""),
    # a greedy first-fit would pair the first call with the first (looser) answer and then fail the second
    ("parallel, needs a real matching", [("get_weather", {"city": "Paris", "unit": "celsius"}),
                                         ("get_weather", {"city": "Paris"})],
     [{"get_weather": {"city": ["Paris"], "unit": ["celsius", ""]}},
      {"get_weather": {"city": ["Paris"], "unit": ["celsius"]}}],
     True, ""),
    ("parallel, one wrong", [("get_weather", {"city": "Lyon"}), ("get_weather", {"city": "Nice"})], [PARIS, LYON],
     False, "call 1 of 2: get_weather: wrong value for 'city': 'Nice' not in ['Paris', 'Paris, France']"),
    ("parallel multiple, other order", [("circle_area", {"radius": 3}), ("get_weather", {"city": "Paris"})],
     [PARIS, {"circle_area": {"radius": [3]}}], True, ""),
    ("irrelevance: no call", [], [], True, ""),
    ("irrelevance: a call", [("get_weather", {"city": "Paris"})], [], False,
     "no offered function fits, yet 1 call(s) were made: get_weather"),
]


@pytest.mark.parametrize("calls, ground_truth, correct, reason", [c[1:] for c in CHECKS], ids=[c[0] for c in CHECKS])
def test_checker_table(calls, ground_truth, correct, reason) -> None:
    verdict = check_calls(calls, ground_truth, FUNCTIONS)
    assert verdict.correct is correct, verdict.reason
    assert reason in verdict.reason
    assert (verdict.reason == "") is correct  # every failure says why


def test_string_normalisation() -> None:
    assert normalize_string("New York, NY") == normalize_string("new york ny") == "newyorkny"
    assert normalize_string("Zürich") == normalize_string("ZÜRICH") != normalize_string("Zurich")


def test_lost_call_detection() -> None:
    names = ["get_weather", "circle_area"]
    assert lost_call('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>', names)
    assert lost_call('Calling {"name": "circle_area", "arguments": {"radius": 2}}', names) == '"name": "circle_area"'
    assert lost_call('{"name": "send_email"}', names) is None  # not an offered tool
    assert lost_call("It is sunny in Paris.", names) is None


# ---- the shipped set ---------------------------------------------------------------------------------------------
MINIMUM = {"simple": 40, "multiple": 40, "parallel": 25, "parallel_multiple": 20, "irrelevance": 30}
JSON_TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "array": list, "object": dict}


def fits(value: Any, schema: dict[str, Any]) -> bool:
    """An independent JSON-schema type check of one expected value (dicts in the ground truth are in allowed form)."""
    kind = schema.get("type")
    if kind is not None:
        if isinstance(value, bool) and kind != "boolean":
            return False
        if not isinstance(value, JSON_TYPES[kind]) or (kind == "integer" and not float(value).is_integer()):
            return False
    if "enum" in schema and value not in schema["enum"]:
        return False
    if isinstance(value, list) and "items" in schema:
        return all(fits(v, schema["items"]) for v in value)
    if isinstance(value, dict):
        props = schema.get("properties", {})
        return all(k in props and all(fits(v, props[k]) for v in allowed if v != "") for k, allowed in value.items())
    return True


def shipped_rows() -> list[dict[str, Any]]:
    return [json.loads(line) for line in shipped_path().read_text(encoding="utf-8").splitlines() if line.strip()]


def test_the_shipped_set_is_complete_and_consistent() -> None:
    rows = shipped_rows()
    assert len(rows) >= 150
    counts = Counter(r["category"] for r in rows)
    assert set(counts) == set(MINIMUM) and all(counts[c] >= n for c, n in MINIMUM.items()), counts
    assert len({r["id"] for r in rows}) == len(rows) and len({r["question"] for r in rows}) == len(rows)
    for row in rows:
        offered = {f["function"]["name"]: f["function"]["parameters"] for f in row["functions"]}
        assert all(f["type"] == "function" and f["function"]["description"] for f in row["functions"]), row["id"]
        assert (row["ground_truth"] == []) is (row["category"] == "irrelevance"), row["id"]
        for entry in row["ground_truth"]:
            (name, args), = entry.items()
            assert name in offered, (row["id"], name)
            params = offered[name]
            for required in params["required"]:
                assert required in args and "" not in args[required], (row["id"], required)
            for arg, allowed in args.items():
                assert arg in params["properties"] and isinstance(allowed, list) and allowed, (row["id"], arg)
                for value in allowed:
                    assert value == "" or fits(value, params["properties"][arg]), (row["id"], arg, value)
        names = [next(iter(e)) for e in row["ground_truth"]]
        shape = {"simple": len(offered) == 1 and len(names) == 1, "multiple": len(offered) >= 2 and len(names) == 1,
                 "parallel": len(names) >= 2 and len(set(names)) == 1,
                 "parallel_multiple": len(set(names)) >= 2, "irrelevance": not names}
        assert shape[row["category"]], row["id"]


def gold_calls(ground_truth: list[dict[str, Any]]) -> list[ToolCall]:
    """The first allowed form of every expected call, leaving out what may be absent."""
    def first(allowed: list[Any]) -> Any:
        return value(next(a for a in allowed if a != ""))

    def value(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: first(a) for k, a in v.items() if any(x != "" for x in a)}
        return [value(x) for x in v] if isinstance(v, list) else v

    return [ToolCall(name=name, arguments=value(args)) for entry in ground_truth for name, args in entry.items()]


def test_the_shipped_set_loads_interleaved_and_its_own_answers_score_full_marks() -> None:
    dataset = open_dataset("function_calling")
    items = dataset.items()
    assert isinstance(dataset, FunctionCallingDataset) and dataset.kind == "function_calling"
    assert len(items) == len(shipped_rows())
    assert [i.group for i in items[:5]] == list(MINIMUM)  # any --limit mixes the categories
    rng = random.Random(0)
    for item in items:
        calls = gold_calls(item.extra["ground_truth"])
        rng.shuffle(calls)
        verdict = check_calls([(c.name, c.arguments) for c in calls], item.extra["ground_truth"],
                              item.extra["functions"])
        assert verdict.correct, (item.id, verdict.reason)
    with pytest.raises(ConfigurationError, match="takes no subset"):
        open_dataset("function_calling:simple")


# ---- user datasets -----------------------------------------------------------------------------------------------
def row(ident: str, category: str, gt: list[dict[str, Any]], functions: list[dict[str, Any]] | None = None) -> str:
    return json.dumps({"id": ident, "category": category, "question": f"question {ident}",
                       "functions": functions or [WEATHER], "ground_truth": gt})


def test_a_user_file_in_this_shape_is_found_and_interleaved(tmp_path: Path) -> None:
    path = tmp_path / "my_calls.jsonl"
    path.write_text("\n".join([row("a", "simple", [PARIS]), row("b", "simple", [LYON]), row("c", "irrelevance", []),
                               row("d", "mine", [PARIS])]) + "\n")
    dataset = open_dataset(str(path))
    assert isinstance(dataset, FunctionCallingDataset) and dataset.name == "my_calls"
    assert [i.id for i in dataset.items()] == ["a", "c", "d", "b"]


def test_bad_rows_are_reported_with_their_line_and_what_is_wrong(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join([
        row("ok", "simple", [PARIS]),
        row("unknown-fn", "simple", [{"get_time": {"zone": ["UTC"]}}]),
        row("missing-required", "simple", [{"get_weather": {"unit": ["celsius"]}}]),
        row("bad-type", "simple", [{"get_weather": {"city": [42]}}]),
        row("bad-enum", "simple", [{"get_weather": {"city": ["Oslo"], "unit": ["kelvin"]}}]),
        "{not json",
        row("not-irrelevant", "irrelevance", [PARIS]),
        row("not-a-list", "simple", [{"get_weather": {"city": "Paris"}}]),
        json.dumps({"id": "no-functions", "category": "simple", "question": "q", "ground_truth": []}),
        row("bad-spec", "simple", [], functions=[{"name": "x"}]),
    ]) + "\n")
    with pytest.raises(DatasetError) as caught:
        open_dataset(str(path)).items()
    message = str(caught.value)
    assert "9 bad rows" in message and "line 1:" not in message
    for expected in ["line 2: ground_truth[0]: 'get_time' is not among the offered functions ['get_weather']",
                     "line 3: ground_truth[0]: get_weather's required parameter 'city' has no expected value",
                     "line 4: ground_truth[0].get_weather.city: 42 is not of type string",
                     "line 5: ground_truth[0].get_weather.unit: 'kelvin' is not one of the enum",
                     "line 6: not valid JSON",
                     "line 7: category 'irrelevance' needs no call expected",
                     "line 8: ground_truth[0].get_weather.city: the allowed values must be a non-empty list",
                     "line 9: functions: Field required",
                     'line 10: functions[0] must be {"type": "function"']:
        assert expected in message, message


# ---- scripted runs -----------------------------------------------------------------------------------------------
LIMIT = 10  # the first ten interleaved items: two of each category


def plan() -> dict[str, Completion]:
    """What the scripted model answers to each of the first ten items, and whether it is right."""
    items = FunctionCallingDataset().select(LIMIT)
    by_id = {i.id: i for i in items}
    assert sorted(by_id) == sorted(f"{c}-00{n}" for c in ("simple", "multiple", "parallel", "parallel-multiple",
                                                          "irrelevance") for n in (1, 2))

    def right(ident: str, reverse: bool = False) -> Completion:
        calls = gold_calls(by_id[ident].extra["ground_truth"])
        return Completion(tool_calls=calls[::-1] if reverse else calls, finish_reason="tool_calls")

    wrong_fn = right("multiple-001").tool_calls[0].model_copy(update={"name": "get_weather_forecast"})
    return {
        "simple-001": right("simple-001"),
        "simple-002": Completion(text='<tool_call>\n{"name": "get_current_weather", "arguments": {"city": '
                                      '"Minneapolis", "unit": "fahrenheit"}}\n</tool_call>'),  # lost to parsing
        "multiple-001": Completion(tool_calls=[wrong_fn]),
        "multiple-002": right("multiple-002"),
        "parallel-001": right("parallel-001", reverse=True),
        "parallel-002": right("parallel-002"),
        "parallel-multiple-001": Completion(tool_calls=right("parallel-multiple-001").tool_calls[:1]),
        "parallel-multiple-002": right("parallel-multiple-002", reverse=True),
        "irrelevance-001": Completion(text="Gabriel García Márquez wrote it."),
        "irrelevance-002": Completion(tool_calls=[ToolCall(name="translate_text", arguments={
            "text": "autumn leaves", "target_language": "English"})]),
    }


RIGHT = {"simple-001", "multiple-002", "parallel-001", "parallel-002", "parallel-multiple-002", "irrelevance-001"}


def scripted(fail: set[str] = frozenset(), native_tools: bool = True) -> ScriptedModel:
    answers = plan()
    questions = {i.question: i.id for i in FunctionCallingDataset().select(LIMIT)}

    def reply(messages, params) -> Completion:
        ident = questions[messages[-1].content]
        if ident in fail:
            raise ModelError(f"scripted failure on {ident}")
        return answers[ident]

    return ScriptedModel(reply, native_tools=native_tools)


def test_scores_by_hand_then_the_cache_answers_everything(tmp_path: Path) -> None:
    cache = PredictionCache(tmp_path / "cache.sqlite")
    model = scripted()
    result = evaluate_function_calling(model, FunctionCallingDataset(), EvalSettings(limit=LIMIT), cache)
    by_id = {p.id: p for p in result.predictions}
    assert {i for i, p in by_id.items() if p.correct} == RIGHT
    accuracy = result.metrics["accuracy"]
    assert accuracy.value == 0.6 and accuracy.n == 10 and math.isclose(accuracy.stderr, math.sqrt(0.6 * 0.4 / 9))
    assert result.metrics["lost_calls"].value == 0.1
    assert {g: s.value for g, s in result.groups.items()} == {"simple": 0.5, "multiple": 0.5, "parallel": 1.0,
                                                             "parallel_multiple": 0.5, "irrelevance": 0.5}
    assert list(result.groups) == list(MINIMUM)
    assert "called 'get_weather_forecast' where 'get_air_quality' is expected" in by_id["multiple-001"].detail
    assert "expected 2 call(s), got 1" in by_id["parallel-multiple-001"].detail
    assert "call lost to parsing" in by_id["simple-002"].detail and "1 of 10 replies" in result.notes[0]
    assert "no offered function fits" in by_id["irrelevance-002"].detail
    assert json.loads(by_id["parallel-001"].extracted)[0]["name"] == "get_current_weather"
    messages, params = model.calls[0]
    assert [m.role for m in messages] == ["system", "user"] and params.tool_choice == "auto"
    assert params.temperature == 0 and params.max_tokens == 256 and params.tools[0]["type"] == "function"
    assert result.model_calls == 10 and result.cached == 0

    again = evaluate_function_calling(ScriptedModel([]), FunctionCallingDataset(), EvalSettings(limit=LIMIT), cache)
    assert again.model_calls == 0 and again.cached == 10 and again.errors == 0
    assert again.metrics == result.metrics and again.groups == result.groups
    cache.close()


def test_failed_items_are_not_cached_and_a_rerun_asks_only_those(tmp_path: Path) -> None:
    cache = PredictionCache(tmp_path / "cache.sqlite")
    first = evaluate_function_calling(scripted(fail={"simple-001", "parallel-002"}), FunctionCallingDataset(),
                                      EvalSettings(limit=LIMIT), cache)
    assert first.errors == 2 and first.metrics["accuracy"].value == 0.4
    model = scripted()
    second = evaluate_function_calling(model, FunctionCallingDataset(), EvalSettings(limit=LIMIT), cache)
    assert len(model.calls) == second.model_calls == 2 and second.cached == 8
    assert second.metrics["accuracy"].value == 0.6 and second.errors == 0
    cache.close()


def test_a_model_without_native_tool_calling_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="no native tool calling.*tooluse --protocol react"):
        evaluate_function_calling(scripted(native_tools=False), FunctionCallingDataset(), EvalSettings(limit=2))


def test_hanlin_eval_cli_writes_per_category_scores_and_resumes(tmp_path: Path, monkeypatch) -> None:
    from typer.testing import CliRunner

    import hanlin.loading
    from hanlin.cli import app
    from hanlin.plugin_manager import plugins

    plugins().add_commands(app)
    monkeypatch.setenv("HANLIN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hanlin.loading, "load_model", lambda name, runtime=None: scripted())
    out = tmp_path / "out"
    command = ["eval", "-m", "scripted", "-d", "function_calling", "--limit", str(LIMIT), "--out", str(out)]
    ran = CliRunner().invoke(app, command)
    assert ran.exit_code == 0, ran.output
    table = [line.split() for line in ran.stdout.splitlines() if line.startswith("scripted ")]
    assert ["scripted", "function_calling", "accuracy", "0.6000", "±", "0.1633", "10"] == table[0][:7]
    assert ["scripted", "function_calling", "lost_calls", "0.1000"] == table[1][:4]
    assert [row[2:4] for row in table[2:]] == [["simple", "0.5000"], ["multiple", "0.5000"], ["parallel", "1.0000"],
                                              ["parallel_multiple", "0.5000"], ["irrelevance", "0.5000"]]
    assert "1 of 10 replies held a call in their text" in ran.stdout
    record = json.loads((out / "scores.json").read_text())["models"]["scripted"]["datasets"]["function_calling"]
    assert record["kind"] == "function_calling" and record["metrics"]["lost_calls"]["value"] == 0.1
    assert {g: s["value"] for g, s in record["groups"].items()}["parallel_multiple"] == 0.5
    predictions = [json.loads(x) for x in (out / record["predictions"]).read_text().splitlines()]
    prompts = [json.loads(x) for x in (out / record["prompts"]).read_text().splitlines()]
    assert len(predictions) == len(prompts) == LIMIT and prompts[0]["prompt"]["tools"][0]["type"] == "function"
    assert sum(p["correct"] for p in predictions) == 6 and all(p["detail"] for p in predictions if not p["correct"])
    assert "scripted,function_calling,parallel,accuracy,1.0," in (out / "scores.csv").read_text()

    monkeypatch.setattr(hanlin.loading, "load_model", lambda name, runtime=None: ScriptedModel([]))
    again = CliRunner().invoke(app, command)
    assert again.exit_code == 0, again.output
    record = json.loads((out / "scores.json").read_text())["models"]["scripted"]["datasets"]["function_calling"]
    assert record["model_calls"] == 0 and record["cached"] == LIMIT and record["metrics"]["accuracy"]["value"] == 0.6

    monkeypatch.setattr(hanlin.loading, "load_model", lambda name, runtime=None: scripted(native_tools=False))
    refused = CliRunner().invoke(app, ["eval", "-m", "scripted", "-d", "function_calling", "--limit", "2"])
    assert refused.exit_code == 2 and "no native tool calling" in refused.output


# ---- a real model ------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.model
@requires_llama
@requires_smollm2
def test_smollm2_runs_three_items_and_the_report_is_well_formed(smollm2, tmp_path: Path) -> None:
    from hanlin.plugins.evaluators.report import summary_table, write_outputs

    settings = EvalSettings(limit=3, max_tokens=96)
    result = evaluate_function_calling(smollm2, FunctionCallingDataset(), settings, PredictionCache(tmp_path / "c.db"))
    assert result.model_calls == 3 and len(result.predictions) == 3 and result.errors == 0
    assert set(result.groups) == {"simple", "multiple", "parallel"}
    for score in (result.metrics["accuracy"], result.metrics["lost_calls"], *result.groups.values()):
        assert 0.0 <= score.value <= 1.0
    assert all(p.extracted is not None and (p.correct or p.detail) for p in result.predictions)
    write_outputs(tmp_path / "out", [result], settings, model=smollm2.name, runtime="cpu")
    record = json.loads((tmp_path / "out" / "scores.json").read_text())["models"][smollm2.name]["datasets"]
    assert record["function_calling"]["metrics"]["accuracy"]["n"] == 3
    assert "function_calling  accuracy" in summary_table([result])
