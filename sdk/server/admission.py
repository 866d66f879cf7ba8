"""Admission: a bounded number of requests hold a slot; the rest get 429 at once instead of waiting forever.

A slot is taken before the response starts (so a full server can still answer with a real 429 status) and must be
given back however the request ends, including a client that disconnects before its stream is ever iterated:
a streamed reply hands ``slot.release`` to ``streams.ClosingStreamingResponse``. A slot released on several exit
paths is given back once.
"""

from __future__ import annotations

from hanlin.server.errors import APIError
from hanlin.server.metrics import Metrics


class Slot:
    """One admitted request's place; ``release`` is idempotent so several exit paths may all call it."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._metrics.queue_depth -= 1

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Admission:
    """Gives out at most ``limit`` slots at a time; ``metrics.queue_depth`` is the number held."""

    def __init__(self, metrics: Metrics, limit: int) -> None:
        self._metrics = metrics
        self._limit = limit

    def admit(self) -> Slot:
        """A slot, or a 429 when all are taken. Runs on the event loop only, so the check and the count agree."""
        if self._metrics.queue_depth >= self._limit:
            raise APIError(429, f"server busy: {self._metrics.queue_depth} requests queued (limit {self._limit}); "
                           "retry shortly", type="rate_limit_error", code="overloaded")
        self._metrics.queue_depth += 1
        return Slot(self._metrics)
