"""Executors: where a stage's tasks run. ``local`` uses a process pool (or the calling process for one worker);
``ray`` sends each task to a Ray cluster (a local one started on ``workers`` CPUs when none is running). Both run
the same ``Pipeline.run_task``, and each task writes its own outputs and done marker, so executors only schedule."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from typing import TYPE_CHECKING, Any

from hanlin.errors import ConfigurationError

if TYPE_CHECKING:
    from hanlin.plugins.data.pipeline import Pipeline


def _task(pipeline: Pipeline, s: int, t: int) -> dict[str, Any]:
    return pipeline.run_task(s, t)


class LocalExecutor:
    """Tasks on a pool of ``workers`` processes (fork where available); one worker runs them in this process."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def map(self, pipeline: Pipeline, stage: int, tasks: list[int]) -> None:
        if not tasks:
            return
        if self.workers == 1 or len(tasks) == 1:
            for t in tasks:
                pipeline.run_task(stage, t)
            return
        if self._pool is None:
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context(method))
        futures = [self._pool.submit(_task, pipeline, stage, t) for t in tasks]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for f in done:
            if f.exception() is not None:
                for other in futures:
                    other.cancel()
                raise f.exception()  # type: ignore[misc]
        for f in futures:
            f.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class RayExecutor:
    """Tasks as Ray remote functions; starts a local Ray (``num_cpus=workers``, no dashboard) unless one is up."""

    def __init__(self, workers: int) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigurationError("executor: ray needs Ray: pip install 'hanlin[ray]'") from None
        self.ray = ray
        self.started = False
        if not ray.is_initialized():
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
            self.started = True
        self.remote = ray.remote(_task)

    def map(self, pipeline: Pipeline, stage: int, tasks: list[int]) -> None:
        if not tasks:
            return
        ref = self.ray.put(pipeline)
        self.ray.get([self.remote.remote(ref, stage, t) for t in tasks])

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()
            self.started = False


def get_executor(name: str, workers: int) -> LocalExecutor | RayExecutor:
    if workers < 1:
        raise ConfigurationError(f"workers must be >= 1, got {workers}")
    if name == "local":
        return LocalExecutor(workers)
    if name == "ray":
        return RayExecutor(workers)
    raise ConfigurationError(f"unknown executor {name!r}: use local or ray")
