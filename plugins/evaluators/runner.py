"""Run datasets through a model: prompts, generation (cached, resumable, parallel where the runtime allows), judging.

The orchestration only: outputs are stored and found again by ``cache.py`` (keyed on ``identity.py``'s
fingerprint of the model), and scored by ``metrics.py``. Judging (answer extraction, the HumanEval sandbox) is
never cached: it is cheap next to generation, and a fixed extractor should re-score old outputs. A model error on
one item (its prompt does not fit the context, say) scores that item wrong with the reason and the run goes on.

Two modes: generation (here) and likelihood scoring of multiple-choice items (``likelihood.py``, chosen with
``EvalSettings.mode``), which caches each choice's log-probability in the same store under keys that include the
mode.
"""

from __future__ import annotations

import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from hanlin.chat_model import ChatModel, GenerationParams, completion_from_chunks
from hanlin.errors import ConfigurationError, ModelError
from hanlin.messages import Message
from hanlin.plugins.evaluators.base import Dataset, EvalItem, Prompt
from hanlin.plugins.evaluators.cache import PredictionCache
from hanlin.plugins.evaluators.identity import model_identity
from hanlin.plugins.evaluators.metrics import Score, clustered_accuracy, group_scores, ks_for, pass_at_k_score
from hanlin.plugins.evaluators.results import DatasetResult, Prediction

__all__ = ["DatasetResult", "DatasetRun", "EvalSettings", "Prediction", "PredictionCache", "Progress", "build_prompt",
           "evaluate", "evaluate_dataset", "model_identity"]  # the last four names live elsewhere, kept importable

Progress = Callable[[str, int, int, int], None]  # (dataset, done, total, of which from the cache)


@dataclass(frozen=True, slots=True)
class EvalSettings:
    """How a run asks. ``samples`` > 1 (pass@k) needs sampling: ``temperature`` > 0, one seed per sample.
    ``mode`` is "generation" (the model answers, an extractor reads it) or "likelihood" (each choice of a
    multiple-choice item is scored; ``batch_size`` items per scoring call)."""

    shots: int = 0
    limit: int | None = None
    workers: int = 1
    max_tokens: int | None = None  # None: each dataset's own budget
    temperature: float = 0.0
    samples: int = 1
    seed: int = 0
    batch_size: int = 16  # prompts per call for runtimes with generate_batch (likelihood: items per score call)
    mode: str = "generation"
    only: str | None = None  # a regular expression: only the items whose id it matches (re.search)

    def __post_init__(self) -> None:
        checks = [(self.shots >= 0, f"shots must be 0 or more, got {self.shots}"),
                  (self.limit is None or self.limit >= 1, f"limit must be at least 1, got {self.limit}"),
                  (self.workers >= 1, f"workers must be at least 1, got {self.workers}"),
                  (self.samples >= 1, f"samples must be at least 1, got {self.samples}"),
                  (self.max_tokens is None or self.max_tokens >= 1, f"max_tokens must be positive, got {self.max_tokens}"),
                  (self.temperature >= 0, f"temperature must be 0 or more, got {self.temperature}"),
                  (self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}"),
                  (self.mode in ("generation", "likelihood"),
                   f"mode must be 'generation' or 'likelihood', got {self.mode!r}"),
                  (self.samples == 1 or self.temperature > 0,
                   f"{self.samples} samples per item need --temperature above 0: greedy decoding repeats one answer")]
        for ok, message in checks:
            if not ok:
                raise ConfigurationError(message)
        if self.only is not None:
            try:
                re.compile(self.only)
            except re.error as exc:
                raise ConfigurationError(f"--only {self.only!r} is not a regular expression ({exc}); "
                                         "e.g. --only 'kb-(0[89]|1)' or --only abstract_algebra") from None

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def build_prompt(dataset: Dataset, item: EvalItem, shots: int, chat: bool) -> Prompt:
    """The exact prompt for one item: chat turns for chat models, plain text for base models."""
    examples = dataset.fewshot_examples(item, shots)
    if chat:
        return {"messages": [m.to_openai() for m in dataset.chat_prompt(item, examples)]}
    return {"text": dataset.text_prompt(item, examples)}


def _generate(model: ChatModel, prompt: Prompt, params: GenerationParams) -> dict[str, Any]:
    if "messages" in prompt:
        done = model.generate([Message.from_openai(m) for m in prompt["messages"]], params)
    else:
        try:
            done = completion_from_chunks(model.stream_prompt(prompt["text"], params))
        except NotImplementedError:  # a chat-only endpoint: the plain text goes as one user turn
            done = model.generate(prompt["text"], params)
    return {"text": done.text, "finish_reason": done.finish_reason}


def chosen_items(dataset: Dataset, settings: EvalSettings) -> list[EvalItem]:
    """The items a run asks: ``--only`` keeps those whose id matches, then ``--limit`` takes the first N of them
    (questions, for a CircularEval dataset: each keeps all its variants)."""
    if settings.only is None:
        return dataset.select(settings.limit)
    origin = getattr(dataset, "origin", None)  # CircularEval: a variant's question id

    def question(item: EvalItem) -> str:
        return origin(item.id)[0] if origin is not None else item.id

    matched = [item for item in dataset.select(None) if re.search(settings.only, question(item))]
    if not matched:
        raise ConfigurationError(f"no item of dataset '{dataset.name}' has an id matching --only {settings.only!r}")
    keep = set(list(dict.fromkeys(question(item) for item in matched))[: settings.limit])
    return [item for item in matched if question(item) in keep]


class DatasetRun:
    """What every way of running one dataset on one model starts from: the selected items and the shot count."""

    def __init__(self, model: ChatModel, dataset: Dataset, settings: EvalSettings, cache: PredictionCache | None,
                 progress: Progress | None) -> None:
        self.model, self.dataset, self.settings, self.cache, self.progress = model, dataset, settings, cache, progress
        self.items = chosen_items(dataset, settings)
        if not self.items:
            raise ConfigurationError(f"dataset '{dataset.name}' has no items to evaluate")
        self.shots = settings.shots if dataset.supports_fewshot else 0
        self.identity = model_identity(model)


class _Run(DatasetRun):
    """Generation: the tasks (item x sample), their cache keys, and the counters."""

    def __init__(self, model: ChatModel, dataset: Dataset, settings: EvalSettings, cache: PredictionCache | None,
                 progress: Progress | None) -> None:
        super().__init__(model, dataset, settings, cache, progress)
        self.chat = model.capabilities.chat_template
        self.prompts = {item.id: build_prompt(dataset, item, self.shots, self.chat) for item in self.items}
        self.lock = threading.Lock()
        self.calls = self.done = self.from_cache = 0
        if progress is not None:
            progress(dataset.name, 0, len(self.items) * settings.samples, 0)

    def params(self, sample: int) -> GenerationParams:
        s = self.settings
        seed = s.seed + sample if s.temperature > 0 else None  # greedy output does not depend on a seed (nor its key)
        return GenerationParams(max_tokens=s.max_tokens or self.dataset.max_tokens, temperature=s.temperature,
                                seed=seed, stop=self.dataset.stop(self.chat))

    def key(self, item: EvalItem, sample: int) -> str:
        params = self.params(sample).model_dump(exclude_none=True, exclude_defaults=True)
        return PredictionCache.key(self.identity, self.prompts[item.id], params)

    def lookup(self, item: EvalItem, sample: int) -> dict[str, Any] | None:
        if self.cache is None:
            return None
        return self.cache.get(self.key(item, sample))

    def store(self, item: EvalItem, sample: int, record: dict[str, Any]) -> None:
        if self.cache is not None:
            self.cache.put(self.key(item, sample), record)

    def tick(self, cached: bool) -> None:
        with self.lock:
            self.done += 1
            self.from_cache += cached
            done, hits = self.done, self.from_cache
        if self.progress is not None:
            self.progress(self.dataset.name, done, len(self.items) * self.settings.samples, hits)

    def judge(self, item: EvalItem, sample: int, record: dict[str, Any], cached: bool) -> Prediction:
        verdict = self.dataset.judge(record["text"], item)
        return Prediction(item.id, sample, item.group, item.answer, record["text"], verdict.extracted, verdict.correct,
                          verdict.detail, cached, record.get("finish_reason", ""))

    def complete(self, item: EvalItem, sample: int, ready: dict[str, Any] | None = None) -> Prediction:
        """Output from ``ready`` (a batch made it, or failed on it), the cache or the model, then judged. A model
        error on one item (its prompt does not fit the context, say) scores that item wrong and is reported; it is
        not cached, so a re-run tries again."""
        record = ready or self.lookup(item, sample)
        cached = ready is None and record is not None
        if record is None:
            with self.lock:
                self.calls += 1
            try:
                record = _generate(self.model, self.prompts[item.id], self.params(sample))
            except ModelError as exc:
                record = _failure(exc)
            else:
                self.store(item, sample, record)
        if "error" in record:
            prediction = Prediction(item.id, sample, item.group, item.answer, "", None, False, "model error",
                                    error=record["error"])
        else:
            prediction = self.judge(item, sample, record, cached)
        if ready is None:
            self.tick(cached)
        return prediction


def _failure(exc: ModelError) -> dict[str, Any]:
    """The record of an item the model failed on: never stored, so a re-run asks again."""
    return {"error": f"{type(exc).__name__}: {exc}"}


def _run_parallel(fn: Callable[..., Prediction], tasks: Sequence[tuple[Any, ...]], workers: int) -> list[Prediction]:
    if workers == 1:
        return [fn(*task) for task in tasks]
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hanlin-eval")
    try:
        futures = [pool.submit(fn, *task) for task in tasks]
        finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for f in finished:
            if (exc := f.exception()) is not None:
                raise exc
        return [f.result() for f in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _batched(run: _Run, tasks: list[tuple[EvalItem, int]]) -> list[tuple[EvalItem, int, dict[str, Any] | None]]:
    """Generate what the cache lacks through the runtime's own batching (``generate_batch``), one batch of prompts
    at a time, storing each batch as it lands. Returns the tasks with the outputs made here (None: cached).

    A batch the model refuses (one prompt too long for the context fails the whole call) is asked again one prompt
    at a time, so only the prompts that fail alone are scored as failures, each with its reason."""
    made: dict[tuple[str, int], dict[str, Any]] = {}
    by_sample: dict[int, list[EvalItem]] = defaultdict(list)
    for item, sample in tasks:
        if run.lookup(item, sample) is None:
            by_sample[sample].append(item)  # cached ones are counted when they are judged
    for sample, items in by_sample.items():
        for start in range(0, len(items), run.settings.batch_size):
            chunk = items[start:start + run.settings.batch_size]
            try:
                outputs = _generate_batch(run, chunk, sample)
            except ModelError as exc:
                outputs = [_failure(exc)] if len(chunk) == 1 else [_generate_alone(run, i, sample) for i in chunk]
            for item, record in zip(chunk, outputs, strict=True):
                made[(item.id, sample)] = record
                if "error" not in record:
                    run.store(item, sample, record)
                run.tick(False)
    return [(item, sample, made.get((item.id, sample))) for item, sample in tasks]


def _generate_alone(run: _Run, item: EvalItem, sample: int) -> dict[str, Any]:
    try:
        return _generate_batch(run, [item], sample)[0]
    except ModelError as exc:
        return _failure(exc)


def _generate_batch(run: _Run, items: list[EvalItem], sample: int) -> list[dict[str, Any]]:
    prompts = [run.prompts[i.id] for i in items]
    batch = [[Message.from_openai(m) for m in p["messages"]] if "messages" in p else p["text"] for p in prompts]
    run.calls += len(items)
    texts = run.model.generate_batch(batch, run.params(sample))  # type: ignore[attr-defined]
    return [{"text": text, "finish_reason": ""} for text in texts]


def evaluate_dataset(model: ChatModel, dataset: Dataset, settings: EvalSettings = EvalSettings(),
                     cache: PredictionCache | None = None, progress: Progress | None = None) -> DatasetResult:
    """Ask every selected item (``samples`` times), judge the outputs, and score them; or, in likelihood mode,
    score each item's choices (``likelihood.evaluate_likelihood``)."""
    if settings.mode == "likelihood":
        from hanlin.plugins.evaluators.likelihood import evaluate_likelihood

        return evaluate_likelihood(model, dataset, settings, cache, progress)
    start = time.perf_counter()
    run = _Run(model, dataset, settings, cache, progress)
    notes = list(dataset.prepare())
    if settings.shots and not dataset.supports_fewshot:
        notes.append(f"{dataset.name} is zero-shot only; --shots {settings.shots} was not applied")
    tasks = [(item, sample) for item in run.items for sample in range(settings.samples)]
    if callable(getattr(model, "generate_batch", None)):
        predictions = _run_parallel(run.complete, _batched(run, tasks), settings.workers)
    else:
        predictions = _run_parallel(run.complete, tasks, settings.workers)
    return DatasetResult(
        dataset=dataset.name, kind=dataset.kind, model=model.name, metrics=_metrics(dataset, predictions, settings),
        groups=group_scores([(p.group, p.id, p.correct) for p in predictions]), predictions=predictions,
        prompts=[{"id": item.id, "prompt": run.prompts[item.id], "params": run.params(0).model_dump(exclude_none=True)}
                 for item in run.items],
        shots=run.shots, model_calls=run.calls, cached=sum(p.cached for p in predictions),
        elapsed_s=time.perf_counter() - start, info=dataset.describe(), notes=notes,
    )


def _metrics(dataset: Dataset, predictions: Sequence[Prediction], settings: EvalSettings) -> dict[str, Score]:
    if dataset.kind == "code":
        per_item: dict[str, list[bool]] = defaultdict(list)
        for p in predictions:
            per_item[p.id].append(p.correct)
        return {f"pass@{k}": pass_at_k_score(list(per_item.values()), k) for k in ks_for(settings.samples)}
    return {"accuracy": clustered_accuracy([(p.id, p.correct) for p in predictions])}


def evaluate(model: ChatModel, datasets: Sequence[Dataset], settings: EvalSettings = EvalSettings(),
             cache: PredictionCache | None = None, progress: Progress | None = None) -> list[DatasetResult]:
    return [evaluate_dataset(model, d, settings, cache, progress) for d in datasets]
