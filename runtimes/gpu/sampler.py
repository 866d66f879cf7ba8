"""Next tokens for a batch of sequences, each with its own temperature / top-k / top-p and seeded generator.

Greedy rows take the argmax together; sampled rows are filtered row by row (they differ in their parameters) and
drawn with the sequence's own generator, so a seed gives the same tokens whatever else shares the batch.
"""

from __future__ import annotations

import torch

from hanlin.runtimes.gpu.sequence import Sequence


def sample(logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
    """logits [len(seqs), vocab] fp32."""
    out = logits.argmax(dim=-1).tolist()
    for row, seq in enumerate(seqs):
        p = seq.params
        if p.temperature <= 0:
            continue
        x = logits[row] / p.temperature
        if 0 < p.top_k < x.numel():
            kth = torch.topk(x, p.top_k).values[-1]
            x = x.masked_fill(x < kth, float("-inf"))
        probs = torch.softmax(x, dim=-1)
        if p.min_p > 0:
            probs = probs.masked_fill(probs < p.min_p * probs.max(), 0.0)
        if p.top_p < 1.0:
            ordered, index = torch.sort(probs, descending=True)
            keep = (torch.cumsum(ordered, dim=-1) - ordered) < p.top_p * ordered.sum()  # the top token always stays
            probs = torch.zeros_like(probs).scatter(0, index[keep], ordered[keep])
        if seq.generator is None:
            seq.generator = torch.Generator(device="cpu")
            seq.generator.manual_seed(p.seed if p.seed is not None else int(torch.seed() % 2**31))
        out[row] = int(torch.multinomial(probs.cpu() / probs.sum().cpu(), 1, generator=seq.generator))
    return out
