"""Batches of samples, packed or padded, with targets shifted per sample.

Packing puts several samples in one row of at most ``max_length`` tokens. Two things keep a packed row equal to
its samples trained one by one:
- position ids restart at 0 for every sample, and no attention mask is passed: hanlin's varlen attention
  (varlen_attention.py) cuts rows at the restarts and attends within each sample, and a model on its own
  attention reads the same boundaries from the position ids into a block-diagonal causal mask (transformers >=
  4.56). Either way a token never attends to the sample before it (tests/test_finetune_data.py checks the
  outputs equal unpacked ones);
- targets are shifted inside each sample before the samples are joined (the target of a sample's last token is
  "none", never the next sample's first token).
Padding at the end of a row is one more "sample" whose targets are all ignored, so it needs no mask either.

The loss is the sum of token losses divided by the number of target tokens of the whole optimizer step (all
micro-batches of an accumulation), the same number whether the step's samples were packed or padded: that is
what makes packed and unpacked training give the same loss and gradients.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from hanlin.plugins.finetuners.render import IGNORE, Sample


@dataclass(slots=True)
class Row:
    """One row of a batch: ids, shifted targets and position ids of the samples in it."""

    input_ids: list[int]
    targets: list[int]
    position_ids: list[int]

    @property
    def n_targets(self) -> int:
        return sum(1 for t in self.targets if t != IGNORE)


def shifted_targets(sample: Sample) -> list[int]:
    """Target of token t is the label of token t+1 within the sample; the last token predicts nothing."""
    return sample.labels[1:] + [IGNORE]


def as_row(samples: Sequence[Sample]) -> Row:
    row = Row([], [], [])
    for s in samples:
        row.input_ids += s.input_ids
        row.targets += shifted_targets(s)
        row.position_ids += list(range(len(s.input_ids)))
    return row


def pack(samples: Sequence[Sample], max_length: int) -> list[Row]:
    """First-fit packing in the given order (which the caller shuffles per epoch): each sample goes into the first
    row with room, so rows fill well on mixed lengths and the data order stays reproducible."""
    bins: list[list[Sample]] = []
    room: list[int] = []
    for s in samples:
        n = len(s.input_ids)
        for i, free in enumerate(room):
            if n <= free:
                bins[i].append(s)
                room[i] -= n
                break
        else:
            bins.append([s])
            room.append(max_length - n)
    return [as_row(b) for b in bins]


def unpacked(samples: Sequence[Sample]) -> list[Row]:
    return [as_row([s]) for s in samples]


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The sample order of one epoch: a permutation fixed by (seed, epoch), so a resumed run sees the same data."""
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def rows_for_epoch(samples: Sequence[Sample], *, seed: int, epoch: int, packing: bool, max_length: int) -> list[Row]:
    ordered = [samples[i] for i in epoch_order(len(samples), seed, epoch)]
    return pack(ordered, max_length) if packing else unpacked(ordered)


def batches(rows: Sequence[Row], batch_size: int) -> Iterator[list[Row]]:
    for i in range(0, len(rows), batch_size):
        yield list(rows[i : i + batch_size])


def collate(rows: Sequence[Row], pad_id: int) -> dict[str, object]:
    """Tensors for one micro-batch: rows padded to the longest with a target-less padding segment."""
    import torch

    width = max(len(r.input_ids) for r in rows)
    ids, targets, positions = [], [], []
    for r in rows:
        pad = width - len(r.input_ids)
        ids.append(r.input_ids + [pad_id] * pad)
        targets.append(r.targets + [IGNORE] * pad)
        positions.append(r.position_ids + list(range(pad)))
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "targets": torch.tensor(targets, dtype=torch.long),
        "position_ids": torch.tensor(positions, dtype=torch.long),
    }
