"""Next-token sampling for the runtimes that hold logits in torch (gpu, transformers): one implementation.

Temperature, top-k, min-p and top-p apply to a whole batch at once, each row with its own values. The token is
drawn on the logits' device by the exponential race: with E_i ~ Exp(1) independent, argmax_i p_i / E_i is token
i with probability p_i / sum(p). So there is no trip to the CPU per row (a batch costs one read of its tokens,
by the caller), and each row's noise comes from that row's own generator: a seed gives the same tokens whatever
else shares the batch. Nothing here touches torch's global RNG (a request without a seed gets a generator seeded
from Python's ``random``).

The defaults mirror the cpu runtime's (top_k 40, top_p 0.95, min_p 0.05 when sampling; greedy at temperature 0)
so the same GenerationParams mean the same thing on every backend.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

DEFAULT_TOP_K = 40
DEFAULT_TOP_P = 0.95
DEFAULT_MIN_P = 0.05


def new_generator(device: Any, seed: int | None) -> Any:
    """A generator on ``device``: seeded with ``seed``, else with a fresh random seed (never torch.seed(), which
    would reseed the process's own RNG under everyone else's feet)."""
    import torch

    return torch.Generator(device=device).manual_seed(seed if seed is not None else random.randrange(2**63))


class ReplyCounts:
    """How often a reply has written each token, kept on the logits' device for the penalties and brought up to
    date with only the tokens written since the last step. Recounting the whole reply each step would send all of
    it to the device again every token: quadratic traffic over a long reply."""

    __slots__ = ("counts", "seen")

    def __init__(self) -> None:
        self.counts: Any = None
        self.seen = 0  # tokens[:seen] are counted

    def of(self, tokens: Sequence[int], start: int, vocab: int, device: Any) -> Any:
        """The counts of ``tokens[start:]`` (the reply; ``tokens`` may hold the prompt before it), float32 [vocab]."""
        import torch

        with torch.inference_mode():  # the engine's tensors are inference tensors; keep this one updatable
            if self.counts is None or self.counts.shape[0] != vocab or self.counts.device != torch.device(device) \
                    or self.seen < start or self.seen > len(tokens):
                self.counts, self.seen = torch.zeros(vocab, dtype=torch.float32, device=device), start
            if self.seen < len(tokens):
                new = torch.tensor(tokens[self.seen:], dtype=torch.long, device=device)
                self.counts.index_add_(0, new, torch.ones(len(new), dtype=torch.float32, device=device))
                self.seen = len(tokens)
        return self.counts


def token_counts(written: Sequence[int], vocab: int, device: Any = "cpu") -> Any:
    """The counts of ``written`` from scratch (float32 [vocab]): for one-off use; a loop keeps a ReplyCounts."""
    return ReplyCounts().of(written, 0, vocab, device)


def penalize(logits: Any, counts: Sequence[Any], frequency: Sequence[float], presence: Sequence[float]) -> Any:
    """OpenAI's frequency and presence penalties: logits [rows, vocab] where a token's logit is lowered by
    frequency x how often the row's reply has written it (``counts``: a float32 [vocab] tensor per row, or None),
    plus presence once it has written it at all. Applied before greedy or sampled choice alike (as llama.cpp and
    OpenAI do). A new tensor (the engine's logits are inference tensors); rows without penalties keep their values."""
    import torch

    rows = [i for i in range(len(counts)) if (frequency[i] or presence[i]) and counts[i] is not None]
    if not rows:
        return logits
    written = torch.stack([counts[i] for i in rows])
    f = torch.tensor([frequency[i] for i in rows], dtype=torch.float32, device=logits.device)[:, None]
    penalty = f * written
    if any(presence[i] for i in rows):
        p = torch.tensor([presence[i] for i in rows], dtype=torch.float32, device=logits.device)[:, None]
        penalty += p * (written > 0)
    out = logits.to(torch.float32, copy=True)
    out.index_add_(0, torch.tensor(rows, dtype=torch.long, device=logits.device), penalty, alpha=-1)
    return out.to(logits.dtype)


def sample(logits: Any, temperature: Sequence[float], top_k: Sequence[int], top_p: Sequence[float],
           min_p: Sequence[float], generators: Sequence[Any]) -> Any:
    """Next tokens [rows] (int64, on the logits' device) from logits [rows, vocab]; per row: temperature (0 is
    greedy), top_k (0: no cut), top_p, min_p (drop tokens under min_p x the top token's probability) and a
    generator on the logits' device (used only by sampled rows)."""
    import torch

    tokens = logits.argmax(dim=-1)
    rows = [i for i, t in enumerate(temperature) if t > 0]
    if not rows:
        return tokens
    dev, vocab = logits.device, logits.shape[-1]

    def column(values: list[float]) -> Any:
        return torch.tensor(values, dtype=torch.float32, device=dev)[:, None]

    index = torch.tensor(rows, device=dev)
    x = logits[index].float() / column([temperature[i] for i in rows])
    ks = [top_k[i] if 0 < top_k[i] < vocab else 0 for i in rows]
    if any(ks):
        kmax = max(ks)
        at = torch.tensor([max(k, 1) - 1 for k in ks], device=dev)[:, None]
        kth = torch.topk(x, kmax, dim=-1).values.gather(1, at)
        kth = kth.masked_fill(torch.tensor([k == 0 for k in ks], device=dev)[:, None], float("-inf"))
        x = x.masked_fill(x < kth, float("-inf"))
    probs = torch.softmax(x, dim=-1)
    mins = [min_p[i] for i in rows]
    if any(m > 0 for m in mins):
        probs = probs.masked_fill(probs < column(mins) * probs.max(dim=-1, keepdim=True).values, 0.0)
    ps = [top_p[i] for i in rows]
    if any(p < 1 for p in ps):
        ordered, order = torch.sort(probs, dim=-1, descending=True)
        # a token stays while the mass before it is under top_p (so the top token always stays)
        keep = (torch.cumsum(ordered, dim=-1) - ordered) < column(ps) * ordered.sum(dim=-1, keepdim=True)
        probs = torch.zeros_like(probs).scatter(1, order, ordered * keep)
    noise = torch.stack([torch.empty(vocab, device=dev).exponential_(generator=generators[i]) for i in rows])
    tokens[index] = (probs / noise.clamp_min(1e-20)).argmax(dim=-1)
    return tokens


def sample_token(logits: Any, temperature: float, top_k: int | None, top_p: float | None, generator: Any, *,
                 written: Sequence[int] = (), frequency_penalty: float | None = None,
                 presence_penalty: float | None = None, counts: ReplyCounts | None = None) -> int:
    """One position's next token (1-D logits) with the default cuts for what is not given, drawn on the CPU with
    a CPU ``generator``: a seed gives the same tokens whatever device the model is on (the transformers runtime).
    ``written``: the reply's tokens so far, for the penalties; a decoding loop passes the same ``counts`` each
    step so only the new tokens are counted."""
    if frequency_penalty or presence_penalty:
        tally = (counts or ReplyCounts()).of(written, 0, logits.shape[-1], logits.device)
        logits = penalize(logits[None], [tally], [frequency_penalty or 0.0], [presence_penalty or 0.0])[0]
    if temperature == 0:
        return int(logits.argmax())
    k = DEFAULT_TOP_K if top_k is None else top_k  # 0 means no top-k cut, as in llama.cpp
    p = DEFAULT_TOP_P if top_p is None else top_p
    return int(sample(logits.float().cpu()[None], [temperature], [k], [p], [DEFAULT_MIN_P], [generator])[0])
