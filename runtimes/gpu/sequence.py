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
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    grammar: Any = None  # an xgrammar CompiledGrammar: each step's logits are masked to what it allows


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
    last_hash: int | None = None  # chained hash of the last registered full block
    num_hashed_blocks: int = 0
    cached_tokens: int = 0  # prompt tokens served from the prefix cache on admission
    finish_reason: str | None = None
    generator: torch.Generator | None = None
    matcher: Any = None  # the grammar's state, advanced by each generated token (kept across preemption)

    @property
    def num_generated(self) -> int:
        return len(self.tokens) - self.prompt_len

    @property
    def to_compute(self) -> int:
        return len(self.tokens) - self.num_computed
