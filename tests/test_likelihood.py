"""Likelihood scoring: acc / acc_norm by hand, ChatModel.score on the three local runtimes (against each other and
a direct torch computation), and `hanlin eval --mode likelihood` end to end on SmolLM2 with resume."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from hanlin import ChatModel, ConfigurationError, ModelError, ScriptedModel
from hanlin.chat_model import Capabilities
from hanlin.plugins.evaluators.base import Dataset, EvalItem
from hanlin.plugins.evaluators.datasets import open_dataset
from hanlin.plugins.evaluators.likelihood import (ChoiceScore, continuation, evaluate_likelihood, likelihood_context,
                                                  likelihood_metrics, pick)
from hanlin.plugins.evaluators.runner import EvalSettings, PredictionCache, evaluate_dataset
from hanlin.plugins.evaluators.user_dataset import load_user_dataset
from tests.conftest import requires_llama, requires_smollm2
from tests.test_evaluators import requires_eval_data

DATA = Path(__file__).parent / "data" / "eval"
LIKELIHOOD = EvalSettings(mode="likelihood")


# ---- acc / acc_norm by hand ------------------------------------------------------------------------------------
def test_acc_takes_the_highest_sum_and_acc_norm_the_highest_per_byte() -> None:
    scores = [ChoiceScore(-10.0, 3, 5), ChoiceScore(-12.0, 4, 20), ChoiceScore(-30.0, 9, 30), ChoiceScore(-11.0, 3, 10)]
    # sums: -10 > -11 > -12 > -30; per byte: -2.0, -0.6, -1.0, -1.1
    assert pick(scores) == (0, 1)
    tied = [ChoiceScore(-4.0, 2, 2), ChoiceScore(-4.0, 2, 2)]
    assert pick(tied) == (0, 0)  # argmax: the first of equals
    metrics = likelihood_metrics([1, 0, 2], [(0, 1), (0, 0), (1, 2)])
    assert metrics["acc"].value == pytest.approx(1 / 3) and metrics["acc_norm"].value == pytest.approx(1.0)
    assert metrics["acc"].stderr == pytest.approx(math.sqrt((1 / 3) * (2 / 3) / 2)) and metrics["acc_norm"].stderr == 0
    assert metrics["acc"].n == 3


class TableScorer(ChatModel):
    """A scorer that reads log-probabilities from a table: the hand-made input of the runner tests."""

    def __init__(self, table: dict[str, list[float]], fail_on: str | None = None) -> None:
        self.name, self.table, self.fail_on = "table", table, fail_on
        self.capabilities = Capabilities(logprobs=True)
        self.calls: list[int] = []

    def score(self, requests: Sequence[tuple[str, str]]) -> list[list[float]]:
        self.calls.append(len(requests))
        if self.fail_on is not None and any(self.fail_on in context for context, _ in requests):
            raise ModelError("the prompt does not fit")
        return [self.table[cont] for _, cont in requests]


# capitals.jsonl, gold: France B Paris, Italy C Rome, Germany A Berlin, Spain D Madrid, Japan B Tokyo, Canada C Ottawa.
# Choices not in the table score -20 over two tokens. Sums / per byte of the contenders:
#   France  Paris -2 (-0.40)  Rome -2.5 (-0.63)        -> acc B, norm B: right, right
#   Italy   Rome -2.5 (-0.63) Madrid -4.5 (-0.75)      -> acc C, norm C: right, right
#   Germany Berlin -3 (-0.50), the rest -20            -> acc A, norm A: right, right
#   Spain   Madrid -4.5 (-0.75) Lisbon -5 (-0.83)      -> acc D, norm D: right, right
#   Japan   Osaka -5 (-1.00)  Tokyo -9 (-1.80)         -> acc A, norm A: wrong, wrong
#   Canada  Ottawa -6 (-1.00) Vancouver -8 (-0.89)     -> acc C, norm B: right, wrong
# acc = 5/6, acc_norm = 4/6.
TABLE = {" Paris": [-1.0, -1.0], " Rome": [-2.5], " Berlin": [-1.5, -1.5], " Madrid": [-2.0, -2.5], " Lisbon": [-5.0],
         " Osaka": [-5.0], " Tokyo": [-9.0], " Ottawa": [-6.0], " Vancouver": [-4.0, -4.0], " Toronto": [-11.0, -0.5]}


def test_runner_scores_constructed_logprobs_caches_each_choice_and_isolates_a_failing_item(tmp_path: Path) -> None:
    dataset = load_user_dataset(DATA / "capitals.jsonl")
    table = {continuation(c): TABLE.get(continuation(c), [-10.0, -10.0]) for i in dataset.items() for c in i.choices}
    model = TableScorer(table)
    cache = PredictionCache(tmp_path / "c.sqlite")
    result = evaluate_dataset(model, dataset, EvalSettings(mode="likelihood", batch_size=4), cache)
    assert model.calls == [16, 8]  # 4 items x 4 choices, then the last 2 items
    assert result.metrics["acc"].value == pytest.approx(5 / 6)
    assert result.metrics["acc_norm"].value == pytest.approx(4 / 6)
    assert result.metrics["acc_norm"].stderr == pytest.approx(math.sqrt((4 / 6) * (2 / 6) / 5))
    japan, canada = result.predictions[4], result.predictions[5]
    assert japan.extracted == "A" and not japan.correct and japan.detail == "acc picks A, acc_norm picks A"
    assert canada.extracted == "C" and canada.correct and canada.detail == "acc picks C, acc_norm picks B"
    assert "C -6.0000 (1, 6)" in canada.output
    assert result.prompts[0]["prompt"]["text"] == "Question: What is the capital of France?\nAnswer:"
    assert result.prompts[0]["continuations"] == [" London", " Paris", " Rome", " Berlin"]
    assert result.model_calls == 24 and result.info["mode"] == "likelihood"

    again = TableScorer(table)
    second = evaluate_dataset(again, dataset, EvalSettings(mode="likelihood"), cache)
    assert again.calls == [] and second.cached == 6 and second.metrics == result.metrics
    # the generation cache of the same items is a different key: nothing scored is taken for an answer
    assert evaluate_dataset(ScriptedModel(["B"] * 6), dataset, EvalSettings(), cache).cached == 0

    failing = TableScorer(table, fail_on="Spain")
    isolated = evaluate_dataset(failing, dataset, EvalSettings(mode="likelihood", batch_size=6), None)
    assert failing.calls == [24, 4, 4, 4, 4, 4, 4]  # the batch failed, then one item at a time
    spain = [p for p in isolated.predictions if p.error]
    assert len(spain) == 1 and "does not fit" in spain[0].error and not spain[0].correct
    assert isolated.metrics["acc"].value == pytest.approx(4 / 6)
    cache.close()


class Completions(Dataset):
    """A dataset plugin of sentence completions: it says itself how it is scored, hanlin knows nothing of it."""

    name, kind = "completions", "choice"

    def load(self) -> list[EvalItem]:
        return [EvalItem("c1", "The cat sat on the", "A", ("mat", "moon")),
                EvalItem("c2", "Water boils at one hundred", "B", ("miles", "degrees"))]

    def likelihood_cloze(self, item: EvalItem) -> str:
        return item.question

    def likelihood_header(self, item: EvalItem) -> str:
        return "Finish each sentence.\n\n"


def test_datasets_say_how_their_items_are_scored() -> None:
    dataset = Completions()
    first, second = dataset.items()
    assert likelihood_context(dataset, second, [first]) == \
        "Finish each sentence.\n\nThe cat sat on the mat\n\nWater boils at one hundred"
    plain = load_user_dataset(DATA / "capitals.jsonl")  # the default: lm-eval's cloze form, no header
    assert likelihood_context(plain, plain.items()[0], []) == "Question: What is the capital of France?\nAnswer:"


@requires_eval_data
def test_hellaswag_continues_its_text_and_mmlu_names_the_subject() -> None:
    hellaswag = open_dataset("hellaswag")
    item = hellaswag.items()[0]
    assert likelihood_context(hellaswag, item, []) == item.question
    mmlu = open_dataset("mmlu:astronomy")
    item = mmlu.items()[0]
    assert likelihood_context(mmlu, item, []) == ("The following are questions (with answers) about astronomy.\n\n"
                                                  f"Question: {item.question.strip()}\nAnswer:")


def test_acc_norm_differs_from_acc_when_a_long_choice_is_likelier_per_byte(tmp_path: Path) -> None:
    rows = [{"question": "Pick one", "choices": ["ab", "abcdefghij"], "answer": "B"}]
    path = tmp_path / "one.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    model = TableScorer({" ab": [-2.0], " abcdefghij": [-3.0, -1.0]})  # sums -2 > -4; per byte -1.0 < -0.4
    result = evaluate_likelihood(model, load_user_dataset(path))
    assert result.metrics["acc"].value == 0 and result.metrics["acc_norm"].value == 1


def test_likelihood_refuses_models_that_cannot_score_and_datasets_without_choices() -> None:
    dataset = load_user_dataset(DATA / "capitals.jsonl")
    with pytest.raises(ConfigurationError, match="cpu, gpu and transformers"):
        evaluate_dataset(ScriptedModel(["B"]), dataset, LIKELIHOOD)
    with pytest.raises(ConfigurationError, match="cpu, gpu and transformers runtimes can"):
        ScriptedModel(["B"]).score([("The capital of France is", " Paris")])
    with pytest.raises(ConfigurationError, match="has no answer choices.*--mode generation"):
        evaluate_dataset(TableScorer({}), load_user_dataset(DATA / "arithmetic.json"), LIKELIHOOD)
    with pytest.raises(ConfigurationError, match="mode must be 'generation' or 'likelihood'"):
        EvalSettings(mode="logits")
    with pytest.raises(ConfigurationError, match="likelihood scoring is deterministic"):
        evaluate_dataset(TableScorer({}), dataset, EvalSettings(mode="likelihood", samples=2, temperature=0.7))


@requires_eval_data
@pytest.mark.parametrize("extra, message", [
    (["-d", "gsm8k"], "dataset 'gsm8k' has no answer choices"),
    (["-d", "humaneval"], "dataset 'humaneval' has no answer choices"),
    (["-d", "hellaswag", "--circular", "cyclic"], "--circular does not apply to --mode likelihood"),
])
def test_cli_refuses_likelihood_where_it_cannot_apply_before_loading_a_model(extra: list[str], message: str) -> None:
    out = subprocess.run([sys.executable, "-m", "hanlin.cli", "eval", "-m", "no-such-model", "--mode", "likelihood",
                          *extra], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr and message in out.stderr, out.stderr


# ---- the runtimes ------------------------------------------------------------------------------------------------
PAIRS = [("The capital of France is", " Paris"), ("The capital of France is", " Tokyo"),
         ("Question: What is 2 + 2?\nAnswer:", " 4"), ("She opened the door and", " walked into the garden."),
         ("Hi", "!")]


def _direct(tf_model, context: str, continuation_text: str) -> list[float]:
    """The reference: one unpadded forward of the whole text in plain torch."""
    import torch

    ids = tf_model.tokenizer(context + continuation_text)["input_ids"]
    start = len(tf_model.tokenizer(context)["input_ids"])
    with torch.inference_mode():
        logits = tf_model.model(input_ids=torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    return [float(logp[p - 1, ids[p]]) for p in range(start, len(ids))]


def test_transformers_batched_scores_match_a_direct_torch_computation(tf_model) -> None:
    assert tf_model.capabilities.logprobs
    batched = tf_model.score(PAIRS)
    for (context, cont), got in zip(PAIRS, batched):
        assert got == pytest.approx(_direct(tf_model, context, cont), abs=1e-4)
        assert got == pytest.approx(tf_model.score([(context, cont)])[0], abs=1e-4)
    assert sum(batched[0]) > sum(batched[1])  # Paris over Tokyo
    with pytest.raises(ConfigurationError, match="empty continuation"):
        tf_model.score([("The capital", "")])


def test_gpu_runtime_scores_match_transformers(tf_model, tf_cache) -> None:
    from hanlin import load_model

    gpu = load_model("smollm2", runtime="gpu", cache_dir=tf_cache, num_blocks=64)
    try:
        assert gpu.capabilities.logprobs
        for got, expected in zip(gpu.score(PAIRS), tf_model.score(PAIRS)):
            assert got == pytest.approx(expected, abs=2e-3)
    finally:
        gpu.close()


@requires_eval_data
@requires_llama
@requires_smollm2
def test_cpu_runtime_ranks_choices_like_transformers_and_leaves_generation_alone(smollm2, tf_model) -> None:
    """The cpu runtime reads the Q4_1 GGUF with 8-bit activations, transformers its fp32 dequantization: the sums
    differ by up to about a nat, so the test compares which choice wins, and bounds the numbers by what was
    measured (2 cores, x86-64, llama-cpp-python of the cpu extra; both runs are deterministic, repeat scores are
    bit-equal): on these 4 items cpu vs transformers differ by at most 1.044 nats (also the most over 24 items),
    and llama.cpp's sum for a choice scored with its own item alone vs in the batch of all 4 items by at most 0.768
    (1.017 over 24 items; transformers: 2e-5). The bounds leave about 15% over those for other CPUs' kernels."""
    dataset = open_dataset("hellaswag")
    items = dataset.select(4)
    requests = [(likelihood_context(dataset, i, []), continuation(c)) for i in items for c in i.choices]
    prompt = "Write one word."
    before = smollm2.generate(prompt, max_tokens=4)
    cpu = [sum(v) for v in smollm2.score(requests)]
    ref = [sum(v) for v in tf_model.score(requests)]
    assert max(abs(a - b) for a, b in zip(cpu, ref)) < 1.2  # measured 1.044
    winners = [(max(range(4), key=lambda k: cpu[4 * n + k]), max(range(4), key=lambda k: ref[4 * n + k]))
               for n in range(len(items))]
    assert sum(a == b for a, b in winners) >= len(items) - 1
    # each item alone: its context evaluated once for its 4 choices; llama.cpp's numbers move with the batch
    alone = [sum(v) for k in range(len(items)) for v in smollm2.score(requests[4 * k:4 * k + 4])]
    assert max(abs(a - b) for a, b in zip(alone, cpu, strict=True)) < 0.9  # measured 0.768
    after = smollm2.generate(prompt, max_tokens=4)  # scoring ran on its own context: the KV cache is still there
    assert after.text == before.text and after.usage.prompt_tokens_reused > 0


# ---- end to end --------------------------------------------------------------------------------------------------
@requires_eval_data
@requires_llama
@requires_smollm2
def test_hanlin_eval_likelihood_end_to_end_scores_in_range_and_resumes(tmp_path: Path) -> None:
    env = {**os.environ, "HANLIN_CACHE": str(tmp_path / "cache")}
    out_dir = tmp_path / "out"

    def run(limit: int) -> dict:
        command = [sys.executable, "-m", "hanlin.cli", "eval", "-m", "smollm2-135m-instruct", "-r", "cpu", "--mode",
                   "likelihood", "-d", "hellaswag", "-d", "mmlu", "--limit", str(limit), "--out", str(out_dir)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stderr
        assert "acc_norm" in done.stdout
        return json.loads((out_dir / "scores.json").read_text())["models"]["smollm2-135m-instruct"]["datasets"]

    first = run(2)  # an "interrupted" run: it got through the first two items of each
    for name in ("hellaswag", "mmlu"):
        record = first[name]
        assert set(record["metrics"]) == {"acc", "acc_norm"} and record["settings"]["mode"] == "likelihood"
        assert all(0.0 <= s["value"] <= 1.0 and s["n"] == 2 for s in record["metrics"].values())
        assert record["model_calls"] == 8  # 2 items x 4 choices
    resumed = run(3)
    assert [resumed[n]["model_calls"] for n in ("hellaswag", "mmlu")] == [4, 4]  # only the third item of each
    assert [resumed[n]["cached"] for n in ("hellaswag", "mmlu")] == [2, 2]
    again = run(3)
    assert [again[n]["model_calls"] for n in ("hellaswag", "mmlu")] == [0, 0]
    assert again["mmlu"]["metrics"] == resumed["mmlu"]["metrics"]
    prompts = [json.loads(x) for x in (out_dir / again["mmlu"]["prompts"]).read_text().splitlines()]
    assert prompts[0]["prompt"]["text"].startswith("The following are questions (with answers) about ")
    assert prompts[0]["prompt"]["text"].endswith("\nAnswer:") and len(prompts[0]["continuations"]) == 4
