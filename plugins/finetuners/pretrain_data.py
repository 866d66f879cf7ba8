"""Packed token shards as the shared trainer's data: fixed-length sequences cut into per-document rows.

The trainer (trainer.py) asks its data for ``micro_batches(epoch)``, ``eval_batches()`` and ``total_steps()``; this
module answers them from a ``PackedDataset`` (hanlin.plugins.data.packed) instead of rendered chat records. Each
sequence becomes one packing ``Row``: position ids restart at 0 where a document starts (and at the start of the
sequence, for a document continued from the previous one), and targets are shifted inside each document, so the
finetuners' varlen attention keeps every token inside its own document and no token is asked to predict the next
document's first token. The epoch's batches are built lazily from a seeded permutation, so a run over millions of
sequences holds only the current step's rows, and a resumed run sees the same order (packing.epoch_order).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hanlin.errors import ConfigurationError
from hanlin.plugins.finetuners.packing import Row, epoch_order
from hanlin.plugins.finetuners.render import IGNORE


def open_packed(folder: str) -> Any:
    """The packed dataset in ``folder``, with a clear error when it is not one."""
    from pathlib import Path

    if not Path(folder).is_dir():
        raise ConfigurationError(f"packed data folder {folder!r} does not exist; write it with `hanlin data` "
                                 "(a pack block) first")
    from hanlin.plugins.data.packed import PackedDataset

    data = PackedDataset(folder)
    if len(data) == 0:
        raise ConfigurationError(f"{folder} holds {data.num_tokens} tokens, fewer than one sequence of "
                                 f"{data.seq_len}; add data or pack with a shorter seq_len")
    return data


def sequence_row(tokens: Sequence[int], starts: Sequence[int]) -> Row:
    """One packed sequence as a row: documents cut at ``starts`` (positions where a document begins)."""
    ids = [int(t) for t in tokens]
    bounds = sorted({0, *(int(s) for s in starts if 0 <= s < len(ids))}) + [len(ids)]
    row = Row(ids, [], [])
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        row.targets += ids[lo + 1 : hi] + [IGNORE]
        row.position_ids += list(range(hi - lo))
    return row


class _LazyBatches:
    """An epoch's micro-batches, built when sliced (the trainer takes ``grad_accum`` of them at a time)."""

    def __init__(self, data: Any, order: list[int], batch_size: int) -> None:
        self.data, self.order, self.batch_size = data, order, batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.order) / self.batch_size)

    def _batch(self, b: int) -> list[Row]:
        picked = self.order[b * self.batch_size : (b + 1) * self.batch_size]
        return [sequence_row(self.data[i], self.data.doc_starts(i)) for i in picked]

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [self._batch(b) for b in range(*index.indices(len(self)))]
        return self._batch(index)


@dataclass
class PackedRunData:
    """What trainer.Trainer reads from ``self.data``, over packed sequences (no preference pairs)."""

    config: Any  # the TuneConfig the loop runs under
    train: Any  # PackedDataset
    train_index: list[int]
    eval_source: Any = None  # PackedDataset the held-out rows come from
    eval_index: list[int] = field(default_factory=list)
    preference: bool = False
    templated: bool = False  # a pre-trained model is prompted with the plain layout (no chat template)

    def micro_batches(self, epoch: int) -> _LazyBatches:
        order = [self.train_index[i] for i in epoch_order(len(self.train_index), self.config.seed, epoch)]
        return _LazyBatches(self.train, order, self.config.batch_size)

    def eval_batches(self) -> list[list[Row]]:
        return list(_LazyBatches(self.eval_source, self.eval_index, self.config.batch_size)[:])

    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(math.ceil(len(self.train_index) / self.config.batch_size) / self.config.grad_accum))

    def total_steps(self) -> int:
        c = self.config
        return c.max_steps or max(1, math.ceil(c.epochs * self.steps_per_epoch()))

    @property
    def n_train(self) -> int:
        return len(self.train_index)

    def tokens_per_step(self) -> int:
        return self.config.batch_size * self.config.grad_accum * self.train.seq_len


def split(train: Any, eval_data: Any, eval_split: float, limit: int | None = None) -> tuple[list[int], Any, list[int]]:
    """(training sequence ids, held-out source, held-out ids): a separate folder, or the last ``eval_split`` of the
    sequences (a contiguous tail, so only the one document that straddles the cut is seen by both sides). At most
    ``limit`` held-out sequences are evaluated, evenly spaced, so an evaluation costs the same on any corpus size."""
    n = len(train)
    if eval_data is not None:
        return list(range(n)), eval_data, _spaced(list(range(len(eval_data))), limit)
    n_eval = math.ceil(n * eval_split) if eval_split else 0
    if n_eval and n_eval >= n:
        raise ConfigurationError(f"eval_split {eval_split} of {n} sequences leaves none to train on; lower it or "
                                 "pass eval_data")
    return list(range(n - n_eval)), train, _spaced(list(range(n - n_eval, n)), limit)


def _spaced(index: list[int], limit: int | None) -> list[int]:
    if limit is None or len(index) <= limit:
        return index
    return [index[(k * len(index)) // limit] for k in range(limit)]


def unigram_baseline(train: Any, train_index: Sequence[int], held: Any, held_index: Sequence[int],
                     vocab_size: int) -> dict[str, float]:
    """Cross-entropy (nats per target token) and perplexity of a unigram model fitted on the training sequences,
    with add-one smoothing, on the same held-out targets the trainer evaluates: the bar a language model must clear
    to have learnt anything beyond token frequencies."""
    import numpy as np

    counts = np.ones(vocab_size, dtype=np.float64)
    for i in train_index:
        counts += np.bincount(np.asarray(train[i], dtype=np.int64), minlength=vocab_size)[:vocab_size]
    logp = np.log(counts / counts.sum())
    total, n = 0.0, 0
    for i in held_index:
        row = sequence_row(held[i], held.doc_starts(i))
        targets = np.asarray([t for t in row.targets if t != IGNORE], dtype=np.int64)
        total -= float(logp[targets].sum())
        n += len(targets)
    mean = total / max(1, n)
    return {"unigram_loss": mean, "unigram_ppl": math.exp(min(mean, 50))}
