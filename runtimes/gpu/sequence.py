"""A request inside the engine: its tokens, how many are in the KV cache, its blocks and its sampling state."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch

_ids = itertools.count()


@dataclass(slots=True)
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 0  # 0: no cut
    top_p: float = 1.0
    min_p: float = 0.0  # drop tokens below min_p x the top token's probability
    seed: int | None = None
    frequency_penalty: float = 0.0  # OpenAI's, over the tokens this sequence has written
    presence_penalty: float = 0.0
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    grammar: Any = None  # an xgrammar CompiledGrammar: each step's logits are masked to what it allows

    def __post_init__(self) -> None:
        """Refuse nonsense when the request is made, so it fails alone instead of inside a shared step."""
        problems = []
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            problems.append(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        if not self.temperature >= 0:  # also catches NaN
            problems.append(f"temperature must be >= 0 (0 is greedy), got {self.temperature!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            problems.append(f"top_k must be an integer >= 0 (0: no cut), got {self.top_k!r}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not 0 <= self.min_p < 1:
            problems.append(f"min_p must be in [0, 1), got {self.min_p!r}")
        for name in ("frequency_penalty", "presence_penalty"):
            if not -2 <= getattr(self, name) <= 2:  # also catches NaN
                problems.append(f"{name} must be in [-2, 2], got {getattr(self, name)!r}")
        if self.seed is not None and not isinstance(self.seed, int):
            problems.append(f"seed must be an integer or None, got {self.seed!r}")
        if problems:
            raise ValueError("invalid sampling parameters: " + "; ".join(problems))


class Status(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(slots=True)
class Sequence:
    prompt_len: int
    tokens: list[int]
    params: SamplingParams
    id: int = field(default_factory=lambda: next(_ids))
    status: Status = Status.WAITING
    num_computed: int = 0  # tokens whose k/v are in the cache
    blocks: list[int] = field(default_factory=list)
    last_hash: bytes | None = None  # chained hash of the last registered full block
    num_hashed_blocks: int = 0
    cached_tokens: int = 0  # prompt tokens served from the prefix cache on admission
    finish_reason: str | None = None
    generator: torch.Generator | None = None
    matcher: Any = None  # the grammar's state, advanced by each generated token (kept across preemption)
    reply_counts: Any = None  # a ReplyCounts of the written tokens, for the penalties (kept across preemption)

    @property
    def num_generated(self) -> int:
        return len(self.tokens) - self.prompt_len

    @property
    def to_compute(self) -> int:
        return len(self.tokens) - self.num_computed
