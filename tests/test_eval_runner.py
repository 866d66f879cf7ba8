"""The runner under the conditions that broke it: models that differ only in their weights, a batch with one prompt
the model refuses, and scores of several samples per item."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from hanlin import ScriptedModel
from hanlin.errors import ContextOverflowError
from hanlin.plugins.evaluators.base import Dataset, EvalItem
from hanlin.plugins.evaluators.runner import EvalSettings, PredictionCache, evaluate_dataset
from hanlin.plugins.evaluators.user_dataset import load_user_dataset

DATA = Path(__file__).parent / "data" / "eval"


def _answer_b(messages, params) -> str:
    return "The answer is B."


class FolderModel(ScriptedModel):
    """Shaped like the gpu runtime's model: its weights are an HF folder in ``folder`` (no ``path``)."""

    def __init__(self, folder: Path) -> None:
        super().__init__(_answer_b, name="merged")
        self.folder = folder


class FileModel(ScriptedModel):
    """Shaped like the cpu runtime's model: one GGUF file in ``path``."""

    def __init__(self, path: Path) -> None:
        super().__init__(_answer_b, name="tuned")
        self.path = path


class RemoteModel(ScriptedModel):
    def __init__(self, base_url: str) -> None:
        super().__init__(_answer_b, name="served")
        self.base_url = base_url


def _hf_folder(where: Path, weights: bytes) -> Path:
    where.mkdir(parents=True)
    (where / "config.json").write_text('{"model_type": "llama"}')
    (where / "model.safetensors").write_bytes(weights)
    return where


def _calls(model: ScriptedModel, cache: PredictionCache) -> int:
    evaluate_dataset(model, load_user_dataset(DATA / "capitals.jsonl"), EvalSettings(limit=2), cache)
    return len(model.calls)


# ---- the cache keys on what the weights hold ----------------------------------------------------------------
def test_two_folders_named_merged_do_not_share_cached_outputs(tmp_path: Path) -> None:
    cache = PredictionCache(tmp_path / "cache.sqlite")
    first = _hf_folder(tmp_path / "run1" / "merged", b"\x01" * 4096)
    second = _hf_folder(tmp_path / "run2" / "merged", b"\x02" * 4096)
    assert _calls(FolderModel(first), cache) == 2
    assert _calls(FolderModel(first), cache) == 0  # the same weights: every output from the cache
    assert _calls(FolderModel(second), cache) == 2  # other weights under the same name: asked again


def test_weights_changed_in_place_with_the_same_size_and_time_are_asked_again(tmp_path: Path) -> None:
    cache = PredictionCache(tmp_path / "cache.sqlite")
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + b"\x00" * (3 << 20))
    before = gguf.stat()
    assert _calls(FileModel(gguf), cache) == 2
    with open(gguf, "r+b") as f:  # retrained in place: the first tensor changed, size and time put back
        f.seek(1000)
        f.write(b"\xff" * 16)
    os.utime(gguf, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert gguf.stat().st_size == before.st_size and gguf.stat().st_mtime_ns == before.st_mtime_ns
    assert _calls(FileModel(gguf), cache) == 2
    folder = _hf_folder(tmp_path / "hf", b"\x03" * 4096)
    assert _calls(FolderModel(folder), cache) == 2
    (folder / "config.json").write_text('{"model_type": "qwen2"}')  # same size, another architecture
    os.utime(folder / "config.json", ns=(before.st_atime_ns, before.st_mtime_ns))
    assert _calls(FolderModel(folder), cache) == 2


def test_remote_models_are_told_apart_by_their_endpoint(tmp_path: Path) -> None:
    cache = PredictionCache(tmp_path / "cache.sqlite")
    assert _calls(RemoteModel("http://127.0.0.1:8000/v1"), cache) == 2
    assert _calls(RemoteModel("http://127.0.0.1:8000/v1"), cache) == 0
    assert _calls(RemoteModel("http://127.0.0.1:9000/v1"), cache) == 2


# ---- one refused prompt does not abort a batched run --------------------------------------------------------
class BatchingModel(ScriptedModel):
    """A runtime with ``generate_batch`` whose context a prompt naming Germany does not fit."""

    def __init__(self) -> None:
        super().__init__(self._reply, name="batching")
        self.batches: list[int] = []

    @staticmethod
    def _reply(messages, params) -> str:
        return "The answer is B."

    def generate_batch(self, prompts, params=None):
        self.batches.append(len(prompts))
        if any("Germany" in str(p) for p in prompts):
            raise ContextOverflowError("the prompt is 9000 tokens but the model has a context of 8192")
        return [self.generate(p, params).text for p in prompts]


def test_an_oversized_prompt_fails_its_item_and_the_batch_goes_on(tmp_path: Path) -> None:
    dataset = load_user_dataset(DATA / "capitals.jsonl")
    cache = PredictionCache(tmp_path / "cache.sqlite")
    model = BatchingModel()
    result = evaluate_dataset(model, dataset, EvalSettings(batch_size=4), cache)
    failed = [p for p in result.predictions if p.error is not None]
    assert [p.id for p in failed] == ["capitals/3"]  # the Germany question, third line
    assert "context of 8192" in failed[0].error and not failed[0].correct
    assert len(result.predictions) == 6 and result.metrics["accuracy"].n == 6
    assert model.batches == [4, 1, 1, 1, 1, 2]  # the refused batch, then its prompts one at a time
    again = BatchingModel()  # the others were cached; the failed one is asked again
    evaluate_dataset(again, dataset, EvalSettings(batch_size=4), cache)
    assert again.batches == [1]


# ---- several samples of one item are not independent --------------------------------------------------------
class Grouped(Dataset):
    name = "grouped"
    kind = "choice"

    def load(self) -> list[EvalItem]:
        return [EvalItem(f"{g}{n}", f"Question {g}{n}", "A", ("yes", "no"), group=g) for g in "xy" for n in range(2)]

    def extract(self, output: str, item: EvalItem) -> str | None:
        return output.strip()[-1:]


def test_group_scores_with_samples_take_their_error_over_items() -> None:
    def reply(messages, params) -> str:  # the first question of each group always right, the second never
        return "A" if messages[-1].content.splitlines()[0].endswith("0") else "B"

    result = evaluate_dataset(ScriptedModel(reply, name="grouped"), Grouped(),
                              EvalSettings(samples=4, temperature=0.7), None)
    for group in ("x", "y"):
        score = result.groups[group]
        assert score.value == 0.5 and score.n == 2  # two items, not eight samples
        assert math.isclose(score.stderr, 0.5)  # per-item means 1 and 0: sqrt(0.5 / 2)
    overall = result.metrics["accuracy"]
    assert (overall.value, overall.n) == (0.5, 4) and math.isclose(overall.stderr, math.sqrt(1 / 3 / 4))


def test_group_scores_with_one_sample_are_plain_accuracy() -> None:
    result = evaluate_dataset(ScriptedModel(lambda m, p: "A", name="grouped"), Grouped(), EvalSettings(), None)
    assert {g: (s.value, s.n) for g, s in result.groups.items()} == {"x": (1.0, 2), "y": (1.0, 2)}


@pytest.mark.parametrize("verdicts, expected", [([("a", True), ("a", False), ("b", True)], (0.75, 2)),
                                                ([("a", True), ("b", False)], (0.5, 2))])
def test_clustered_accuracy_weighs_items_not_samples(verdicts, expected) -> None:
    from hanlin.plugins.evaluators.metrics import clustered_accuracy

    score = clustered_accuracy(verdicts)
    assert (score.value, score.n) == expected
