"""Prometheus text metrics for the server: counters, a latency histogram, queue depth.

Small and dependency-free on purpose: a handful of numbers a scraper reads,
updated from the event loop only.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass
class Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * len(BUCKETS))
    total: float = 0.0
    n: int = 0

    def observe(self, value: float) -> None:
        self.n += 1
        self.total += value
        for i, edge in enumerate(BUCKETS):
            if value <= edge:
                self.counts[i] += 1


@dataclass
class Metrics:
    requests: dict[tuple[str, int], int] = field(default_factory=lambda: defaultdict(int))
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency: Histogram = field(default_factory=Histogram)
    ttft: Histogram = field(default_factory=Histogram)
    queue_depth: int = 0  # admitted requests holding a slot (waiting for the model or generating)
    in_flight: int = 0  # generations running now (a model stream or an agent run)

    @contextmanager
    def generating(self) -> Iterator[None]:
        """Count one generation in ``in_flight`` for as long as it runs, however it ends."""
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    def render(self) -> str:
        lines = ["# TYPE hanlin_requests_total counter"]
        for (route, status), count in sorted(self.requests.items()):
            lines.append(f'hanlin_requests_total{{route="{route}",status="{status}"}} {count}')
        lines += [
            "# TYPE hanlin_prompt_tokens_total counter", f"hanlin_prompt_tokens_total {self.prompt_tokens}",
            "# TYPE hanlin_completion_tokens_total counter", f"hanlin_completion_tokens_total {self.completion_tokens}",
            "# TYPE hanlin_queue_depth gauge", f"hanlin_queue_depth {self.queue_depth}",
            "# TYPE hanlin_in_flight gauge", f"hanlin_in_flight {self.in_flight}",
        ]
        for name, hist in (("hanlin_request_seconds", self.latency), ("hanlin_time_to_first_token_seconds", self.ttft)):
            lines.append(f"# TYPE {name} histogram")
            for edge, count in zip(BUCKETS, hist.counts):
                lines.append(f'{name}_bucket{{le="{edge}"}} {count}')
            lines += [f'{name}_bucket{{le="+Inf"}} {hist.n}', f"{name}_sum {hist.total:.6f}", f"{name}_count {hist.n}"]
        return "\n".join(lines) + "\n"
