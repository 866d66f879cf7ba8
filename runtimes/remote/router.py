"""Which replica serves the next request: least outstanding requests, health, per-endpoint limits, session affinity.

The remote runtime may be given several OpenAI-compatible base URLs (``hanlin serve`` replicas, vLLM, LMDeploy,
SGLang). This module decides, per request, which one to use; the HTTP itself stays in ``client.py``. The rules:

- least outstanding requests: the endpoint with the fewest requests in flight from this client wins (ties go round
  robin), which adapts to replicas of different speed without any measurement;
- per-endpoint concurrency: an endpoint at its ``max_concurrency`` is not chosen; when every endpoint is full the
  caller waits (bounded by ``wait_timeout``) for a slot rather than overloading one;
- health: a connection failure marks the endpoint down at once (passive), and a background probe (``GET
  {url}/models``, any answer below 500 counts as alive) brings it back or takes it out (active); a down endpoint is
  used only when no healthy one is left, so a stale mark cannot stop all traffic;
- prefix affinity: requests sharing an affinity key (the client derives it from the conversation's prefix: the
  system prompt and first user turn, which every step of an agent session repeats) go to the endpoint that served
  that key before, where the KV cache already holds the prefix, as long as that endpoint is healthy, below its
  limit and fewer than ``balance_threshold`` requests busier than the least busy one (SGLang's router and Ray
  Serve's PrefixCacheAffinityRouter use the same escape hatch). Few-shot chat prompts share their first user turn,
  so a few-shot evaluation's items share a key: the threshold is what spreads them.

Failover is the caller's job: ``client.py`` retries a request that failed before any token arrived on an endpoint
it has not tried yet (``exclude``), because only then is the retry invisible to the user.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from hanlin.errors import ConfigurationError, ModelError

Probe = Callable[[str], bool]


@dataclass(slots=True)
class Endpoint:
    """One base URL and what this client knows about it."""

    url: str
    max_concurrency: int | None = None
    outstanding: int = 0
    healthy: bool = True
    served: int = 0
    failures: int = 0
    last_error: str = ""

    def has_room(self) -> bool:
        return self.max_concurrency is None or self.outstanding < self.max_concurrency

    def as_dict(self) -> dict[str, Any]:
        return {"url": self.url, "healthy": self.healthy, "outstanding": self.outstanding, "served": self.served,
                "failures": self.failures, "max_concurrency": self.max_concurrency, "last_error": self.last_error}


def split_urls(base_url: str | Sequence[str]) -> list[str]:
    """``"http://a/v1,http://b/v1"`` or a list of URLs -> the URLs, without trailing slashes, duplicates refused."""
    items = base_url.split(",") if isinstance(base_url, str) else list(base_url)
    urls = [str(u).strip().rstrip("/") for u in items if str(u).strip()]
    if not urls:
        raise ConfigurationError(f"base_url names no endpoint: {base_url!r}; give one URL or several, comma-separated")
    if len(set(urls)) != len(urls):
        raise ConfigurationError(f"base_url lists an endpoint twice: {urls}; each replica once")
    return urls


class Router:
    """Picks endpoints (``acquire``) and hears how requests ended (``release``). Safe across threads."""

    def __init__(self, urls: Sequence[str], *, max_concurrency: int | Sequence[int | None] | None = None,
                 probe: Probe | None = None, health_interval: float = 0.0, wait_timeout: float = 600.0,
                 balance_threshold: int = 4, affinity_size: int = 4096) -> None:
        limits = list(max_concurrency) if isinstance(max_concurrency, Sequence) else [max_concurrency] * len(urls)
        if len(limits) != len(urls):
            raise ConfigurationError(f"max_concurrency has {len(limits)} limits for {len(urls)} endpoints; give one "
                                     "number for all, or one per base URL in the same order")
        for limit in limits:
            if limit is not None and (not isinstance(limit, int) or limit < 1):
                raise ConfigurationError(f"max_concurrency must be a positive number of requests, got {limit!r}")
        if health_interval < 0 or wait_timeout <= 0 or balance_threshold < 1:
            raise ConfigurationError(f"health_interval must be >= 0 (0: no background probe), wait_timeout > 0 and "
                                     f"balance_threshold >= 1; got {health_interval}, {wait_timeout}, {balance_threshold}")
        self.endpoints = [Endpoint(url, limit) for url, limit in zip(urls, limits)]
        self.probe, self.wait_timeout, self.balance_threshold = probe, wait_timeout, balance_threshold
        self._affinity: OrderedDict[str, Endpoint] = OrderedDict()
        self._affinity_size = affinity_size
        self._turn = 0
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if health_interval > 0 and probe is not None:
            self._thread = threading.Thread(target=self._probe_loop, args=(health_interval,), daemon=True,
                                            name="hanlin-remote-health")
            self._thread.start()

    # ---- choosing -------------------------------------------------------------------------------------------------
    def acquire(self, affinity: str | None = None, exclude: Sequence[str] = ()) -> Endpoint:
        """The endpoint for the next request, counted as outstanding until ``release``. Endpoints in ``exclude``
        (already tried for this request) are skipped; ``ModelError`` when none is left or none frees up in time."""
        deadline = time.monotonic() + self.wait_timeout
        with self._cond:
            while True:
                allowed = [e for e in self.endpoints if e.url not in exclude]
                if not allowed:
                    raise ModelError(f"every endpoint failed this request: {self._describe()}")
                live = [e for e in allowed if e.healthy] or allowed  # all marked down: try them rather than stop
                chosen = self._choose(live, affinity)
                if chosen is not None:
                    chosen.outstanding += 1
                    chosen.served += 1
                    if affinity is not None:
                        self._affinity[affinity] = chosen
                        self._affinity.move_to_end(affinity)
                        while len(self._affinity) > self._affinity_size:
                            self._affinity.popitem(last=False)
                    return chosen
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ModelError(f"no endpoint had a free slot within {self.wait_timeout:.0f} s (per-endpoint "
                                     f"max_concurrency); {self._describe()}")
                self._cond.wait(left)

    def _choose(self, live: list[Endpoint], affinity: str | None) -> Endpoint | None:
        least = min(e.outstanding for e in live)
        pinned = self._affinity.get(affinity) if affinity is not None else None
        if (pinned is not None and pinned in live and pinned.has_room()
                and pinned.outstanding - least < self.balance_threshold):
            return pinned  # a full or much busier replica is not waited for: the prefix is recomputed elsewhere
        open_ = [e for e in live if e.has_room()]
        if not open_:
            return None
        fewest = min(e.outstanding for e in open_)
        tied = [e for e in open_ if e.outstanding == fewest]
        self._turn += 1
        return tied[self._turn % len(tied)]

    def release(self, endpoint: Endpoint, *, failed: bool = False, down: bool = False, error: str = "") -> None:
        """The request on ``endpoint`` ended; ``failed`` counts it, ``down`` (the endpoint could not be reached or
        broke the connection) takes it out of rotation until a probe finds it alive."""
        with self._cond:
            endpoint.outstanding -= 1
            if failed:
                endpoint.failures += 1
                endpoint.last_error = error[:300]
            if down:
                endpoint.healthy = False
            self._cond.notify_all()

    # ---- health ---------------------------------------------------------------------------------------------------
    def check_health(self) -> None:
        """Probe every endpoint once (outside the lock: a probe waits on the network) and record the answers."""
        if self.probe is None:
            return
        results = [(e, self.probe(e.url)) for e in self.endpoints]
        with self._cond:
            for endpoint, alive in results:
                endpoint.healthy = alive
            self._cond.notify_all()

    def _probe_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.check_health()
            except Exception:  # noqa: BLE001  (a probe bug must not kill routing; the passive marks still work)
                pass

    def snapshot(self) -> list[dict[str, Any]]:
        with self._cond:
            return [e.as_dict() for e in self.endpoints]

    def _describe(self) -> str:
        return "; ".join(f"{e.url} ({'up' if e.healthy else 'down'}, {e.outstanding} in flight"
                         + (f", last error: {e.last_error}" if e.last_error else "") + ")" for e in self.endpoints)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
