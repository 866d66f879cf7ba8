"""`hanlin eval --ray [ADDRESS]`: the generation datasets' items as partitions on Ray actors that hold the model.

Why actors: loading a model costs more than asking it a chunk of items, so each Ray worker loads it once (an actor,
one CPU or one GPU each) and is handed partitions (dataset x chunk of items) as it frees up, which also balances
fast and slow chunks. Each actor runs the local runner's own code on its chunk (``runner._Run.complete``: cache
lookup, generation, cache store, judging), so outputs land in the same prediction cache as a local run: a re-run,
local or on Ray, reuses them, and a run whose worker died resumes from what was stored (every output is committed
as soon as it exists). Ray restarts a dead actor and retries its partition (``max_restarts``,
``max_task_retries``); the driver assembles the DatasetResults exactly as ``evaluate_dataset`` does, so the result
folder is the same. On a cluster the cache must be on a filesystem every node sees (``HANLIN_CACHE``).

Ray is the optional extra ``ray``; without it the local worker pool runs as before and ``--ray`` says what to
install. Agent, function-calling, self-running datasets and likelihood mode stay on the local path (said clearly).
"""

from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hanlin.chat_model import ChatModel
from hanlin.errors import ConfigurationError, ModelError
from hanlin.plugins.evaluators.base import Dataset
from hanlin.plugins.evaluators.cache import PredictionCache
from hanlin.plugins.evaluators.metrics import group_scores
from hanlin.plugins.evaluators.results import DatasetResult, Prediction
from hanlin.plugins.evaluators.runner import EvalSettings, Progress, _batched, _metrics, _Run, chosen_items

ModelFactory = Callable[[], ChatModel]


def require_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigurationError("--ray needs Ray: pip install 'hanlin[ray]' (or drop --ray to use the local "
                                 "worker pool)") from None
    return ray


def check_rayable(datasets: Sequence[Dataset], settings: EvalSettings) -> None:
    """Refuse, before any model loads, what this executor does not distribute."""
    if settings.mode != "generation":
        raise ConfigurationError("--ray distributes generation; likelihood mode runs locally: drop --ray")
    for d in datasets:
        if d.kind in ("agent", "function_calling") or hasattr(d, "evaluate"):
            raise ConfigurationError(f"dataset '{d.name}' ({d.kind}) runs on the local path only; evaluate it in a "
                                     "separate run without --ray")


def start_ray(address: str | None, num_cpus: int | None = None) -> Any:
    """Connect to ``address`` ("auto": the cluster this machine belongs to; ``ray://host:10001``: a remote one), or
    start a local Ray (``None`` or "local") on ``num_cpus`` CPUs without the dashboard."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    if address in (None, "", "local"):
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    else:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    return ray


class EvalWorker:
    """One Ray actor: the model loaded once, partitions of items asked of it through the local runner."""

    def __init__(self, factory: ModelFactory, cache_path: str | None) -> None:
        self.model = factory()
        self.cache = PredictionCache(Path(cache_path)) if cache_path else None
        self.runs: dict[tuple[str, EvalSettings], _Run] = {}

    def partition(self, dataset: Dataset, settings: EvalSettings, item_ids: list[str]) -> dict[str, Any]:
        run = self.runs.get((dataset.name, settings))
        if run is None:  # once per dataset: its prompts (all items) and what judging needs (the HumanEval sandbox)
            dataset.prepare()
            run = self.runs[(dataset.name, settings)] = _Run(self.model, dataset, settings, self.cache, None)
        calls = run.calls
        wanted = set(item_ids)
        tasks = [(item, s) for item in run.items if item.id in wanted for s in range(settings.samples)]
        if callable(getattr(self.model, "generate_batch", None)):
            predictions = [run.complete(*task) for task in _batched(run, tasks)]
        else:
            predictions = [run.complete(*task) for task in tasks]
        prompts = [{"id": item.id, "prompt": run.prompts[item.id], "params": run.params(0).model_dump(exclude_none=True)}
                   for item in run.items if item.id in wanted]
        return {"predictions": predictions, "prompts": prompts, "calls": run.calls - calls, "shots": run.shots,
                "model": self.model.name, "pid": os.getpid()}

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()
        self.model.close()


def evaluate_on_ray(factory: ModelFactory, datasets: Sequence[Dataset], settings: EvalSettings = EvalSettings(), *,
                    cache_path: Path | None = None, progress: Progress | None = None, address: str | None = None,
                    workers: int | None = None, chunk_size: int | None = None, gpus_per_worker: float = 0.0,
                    max_retries: int = 2) -> list[DatasetResult]:
    """Every dataset on ``workers`` actors built by ``factory`` (default: one per CPU of the cluster); returns one
    DatasetResult per dataset, in order. ``chunk_size`` items per partition (default: about four per worker)."""
    check_rayable(datasets, settings)
    ray = start_ray(address)
    if workers is None:
        resources = ray.cluster_resources()
        workers = int(resources.get("GPU", 0) / gpus_per_worker) if gpus_per_worker else int(resources.get("CPU", 1))
        if workers < 1:
            raise ConfigurationError(f"the Ray cluster has {resources.get('GPU', 0)} GPUs, fewer than --ray-gpus "
                                     f"{gpus_per_worker} per worker; lower --ray-gpus or drop it to run on CPUs")
    if workers < 1 or (chunk_size is not None and chunk_size < 1):
        raise ConfigurationError(f"--ray needs at least one worker and one item per chunk, got {workers}, {chunk_size}")
    selected = [chosen_items(d, settings) for d in datasets]
    for d, items in zip(datasets, selected):
        if not items:
            raise ConfigurationError(f"dataset '{d.name}' has no items to evaluate")
    total = sum(len(items) for items in selected)
    size = chunk_size or max(1, math.ceil(total / (workers * 4)))
    parts = [(di, [i.id for i in items[at:at + size]]) for di, items in enumerate(selected)
             for at in range(0, len(items), size)]
    actor = ray.remote(num_cpus=0 if gpus_per_worker else 1, num_gpus=gpus_per_worker, max_restarts=max_retries,
                       max_task_retries=max_retries)(EvalWorker)
    pool = [actor.remote(factory, str(cache_path) if cache_path else None) for _ in range(min(workers, len(parts)))]
    refs = [ray.put(d) for d in datasets]
    notes = [list(d.prepare()) for d in datasets]
    started = time.perf_counter()
    done: dict[int, list[dict[str, Any]]] = defaultdict(list)
    counts = defaultdict(lambda: [0, 0])
    for di, d in enumerate(datasets):
        if progress is not None:
            progress(d.name, 0, len(selected[di]) * settings.samples, 0)
    pending: dict[Any, tuple[Any, tuple[int, list[str]]]] = {}
    queue = list(reversed(parts))

    def submit(worker: Any) -> None:
        if queue:
            part = queue.pop()
            pending[worker.partition.remote(refs[part[0]], settings, part[1])] = (worker, part)

    try:
        for worker in pool:
            submit(worker)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            worker, (di, _ids) = pending.pop(ready[0])
            try:
                out = ray.get(ready[0])
            except ray.exceptions.RayError as exc:
                raise ModelError(f"a Ray worker failed on {datasets[di].name} after {max_retries} retries: {exc}; "
                                 "the outputs made so far are cached: run the same command again to resume") from None
            done[di].append(out)
            counts[di][0] += len(out["predictions"])
            counts[di][1] += sum(p.cached for p in out["predictions"])
            if progress is not None:
                progress(datasets[di].name, counts[di][0], len(selected[di]) * settings.samples, counts[di][1])
            submit(worker)
    finally:
        for worker in pool:
            ray.kill(worker)
    elapsed = time.perf_counter() - started
    return [_assemble(d, selected[di], done[di], settings, notes[di], elapsed) for di, d in enumerate(datasets)]


def _assemble(dataset: Dataset, items: list[Any], outputs: list[dict[str, Any]], settings: EvalSettings,
              notes: list[str], elapsed: float) -> DatasetResult:
    """One DatasetResult from its partitions, in item order, as ``evaluate_dataset`` would have built it."""
    order = {item.id: n for n, item in enumerate(items)}
    predictions: list[Prediction] = sorted((p for out in outputs for p in out["predictions"]),
                                           key=lambda p: (order[p.id], p.sample))
    prompts = sorted((p for out in outputs for p in out["prompts"]), key=lambda p: order[p["id"]])
    if settings.shots and not dataset.supports_fewshot:
        notes = [*notes, f"{dataset.name} is zero-shot only; --shots {settings.shots} was not applied"]
    return DatasetResult(
        dataset=dataset.name, kind=dataset.kind, model=outputs[0]["model"],
        metrics=_metrics(dataset, predictions, settings),
        groups=group_scores([(p.group, p.id, p.correct) for p in predictions]), predictions=predictions,
        prompts=prompts, shots=outputs[0]["shots"], model_calls=sum(out["calls"] for out in outputs),
        cached=sum(p.cached for p in predictions), elapsed_s=elapsed, info=dataset.describe(),
        notes=[*notes, f"ran on Ray: {len(outputs)} partitions on {len({o['pid'] for o in outputs})} worker processes"],
    )


def cpu_model_config(model: str, runtime: str | None, threads: int) -> dict[str, Any]:
    """Each actor's load options: on the cpu runtime, the threads of the CPUs it was given (llama.cpp's default is
    every core of the machine, which N actors would fight over)."""
    from hanlin.loading import resolve_model

    if runtime == "cpu" or (runtime is None and resolve_model(model).format == "gguf"):
        return {"n_threads": threads}
    return {}


def evaluate_models_on_ray(name: str, runtime: str | None, datasets: Sequence[Dataset], settings: EvalSettings,
                           cache: PredictionCache | None, progress: Progress | None, *, address: str | None = None,
                           workers: int | None = None, gpus_per_worker: float = 0.0) -> list[DatasetResult]:
    """What `hanlin eval --ray` runs for one model: actors load it by name (one CPU thread each on the cpu runtime,
    or ``gpus_per_worker`` GPUs), CircularEval datasets are re-scored as locally."""
    import functools

    from hanlin.loading import load_model
    from hanlin.plugins.evaluators.circular import rescore

    config = {} if gpus_per_worker else cpu_model_config(name, runtime, 1)
    factory = functools.partial(load_model, name, runtime=runtime, **config)
    results = evaluate_on_ray(factory, datasets, settings, cache_path=cache.path if cache is not None else None,
                              progress=progress, address=address, workers=workers, gpus_per_worker=gpus_per_worker)
    return [rescore(result, d) for result, d in zip(results, datasets)]


def bench_eval_ray(model: str = "smollm2-135m-instruct", dataset: str = "gsm8k", limit: int = 16,
                   max_tokens: int = 32, workers: int = 2, address: str | None = None,
                   say: Callable[[str], None] = lambda _: None) -> Any:
    """`hanlin bench eval --ray`: items/s of one generation run locally (one process, the runtime's default threads)
    and on Ray (``workers`` actors, one CPU thread each), same items, no cache; both times include loading the
    model, the Ray one its actors' start too (not the cluster's start, a one-time cost shown in a note)."""
    import functools

    from hanlin.bench import BenchTable
    from hanlin.loading import load_model
    from hanlin.plugins.evaluators.datasets import open_dataset
    from hanlin.plugins.evaluators.runner import evaluate_dataset

    data = open_dataset(dataset)
    n = len(data.select(limit))
    settings = EvalSettings(limit=limit, max_tokens=max_tokens)
    started = time.perf_counter()
    chat_model = load_model(model)
    try:
        local = evaluate_dataset(chat_model, data, settings)
    finally:
        chat_model.close()
    local_s = time.perf_counter() - started
    say(f"local: {n} items in {local_s:.1f}s")
    started = time.perf_counter()
    start_ray(address, num_cpus=workers if address in (None, "", "local") else None)
    init_s = time.perf_counter() - started
    factory = functools.partial(load_model, model, **cpu_model_config(model, None, 1))
    started = time.perf_counter()
    on_ray = evaluate_on_ray(factory, [data], settings, workers=workers)[0]
    ray_s = time.perf_counter() - started
    say(f"ray: {n} items in {ray_s:.1f}s on {workers} actors")
    same = sum(a.output == b.output for a, b in zip(local.predictions, on_ray.predictions))
    table = BenchTable(
        title=f"generation eval of {dataset}-{n} on {model} ({max_tokens} tokens max): items/s, local vs Ray",
        columns=["executor", "items", "seconds", "items/s", "ratio", "accuracy", "same outputs"],
        target="Ray at least as fast as the local run once there are more cores than one model uses well",
    )
    for label, seconds, result in (("local, 1 process (baseline)", local_s, local),
                                   (f"ray, {workers} actors x 1 thread", ray_s, on_ray)):
        table.rows.append([label, n, seconds, n / seconds, f"{local_s / seconds:.2f}x",
                           f"{result.metrics['accuracy'].value:.2f}", f"{same}/{n}"])
    table.met = ray_s <= local_s
    table.notes.append(f"Ray cluster start (once per session, not counted): {init_s:.1f}s")
    return table
