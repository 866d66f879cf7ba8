"""Per-group state: recent history and a sliding-window rate limit, behind one lock per store (thread-safe)."""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable


class Groups:
    def __init__(self, history: int = 20, rate: int = 5, per_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate < 1 or per_s <= 0:
            raise ValueError(f"the rate limit must allow at least one answer in a positive window, got {rate}/{per_s}s")
        self.rate, self.per_s, self.clock = rate, per_s, clock
        self._history: dict[str, deque[tuple[str, str]]] = defaultdict(lambda: deque(maxlen=history))
        self._answers: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def history(self, group: str) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._history[group])

    def remember(self, group: str, sender: str, text: str) -> None:
        with self._lock:
            self._history[group].append((sender, text))

    def take(self, group: str) -> str | None:
        """Reserve one reply for ``group``: None when allowed, else the reason it is over its limit."""
        now = self.clock()
        with self._lock:
            stamps = self._answers[group]
            while stamps and now - stamps[0] >= self.per_s:
                stamps.popleft()
            if len(stamps) >= self.rate:
                wait = self.per_s - (now - stamps[0])
                return (f"rate limit: group {group!r} already had {len(stamps)} message(s) handled in the last "
                        f"{self.per_s:g} s (limit {self.rate}); next in {wait:.1f} s")
            stamps.append(now)
            return None
