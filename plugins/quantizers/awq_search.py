"""AWQ's activation-aware scale search for one group of linears that read the same input (pure torch math).

Why scales help: the few input channels with large activations carry most of a layer's output, and int4
round-to-nearest (RTN) spends the same relative precision on every weight. Multiplying those channels' weight
columns by ``s > 1`` before quantizing (and dividing the input by ``s``, folded into the op before: an RMSNorm
weight or the rows of the linear that produced the input) gives them finer steps; the output of the linear is
unchanged before rounding. The search (AWQ, Lin et al. 2023) tries ``s = mean|x|^alpha`` over a grid of alpha and
keeps the one with the smallest output error on calibration activations; alpha = 0 is plain RTN, so the result is
never worse than RTN on those activations.

After the scales, ``search_clip`` (AWQ's second step) shrinks each (row, group) of the scaled weight to the
fraction of its largest |w|, from 1 down to 0.55, that minimises that group's share of the output error: an outlier
weight that stretches a group's 16 levels is clipped when the error it saves on the others is larger.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hanlin.kernels.dequant_gemm import fake_quantize_int4

GRID = 20  # alpha in 0, 1/20, ..., 19/20 (AutoAWQ's grid)


@dataclass(slots=True)
class GroupResult:
    """The chosen input-channel scales of one group, and the output errors that chose them (mean squared, summed
    over the group's linears, on the calibration rows)."""

    scales: torch.Tensor  # [K] fp32: multiply the weights' columns, divide the input
    alpha: float
    rtn_error: float
    awq_error: float


def output_error(x: torch.Tensor, weights: list[torch.Tensor], scales: torch.Tensor, group_size: int,
                 refs: list[torch.Tensor] | None = None) -> float:
    """Mean squared error of x @ W.T when W's columns are scaled by ``scales``, quantized, then unscaled (``refs``:
    the exact outputs, when already computed)."""
    total = 0.0
    for i, w in enumerate(weights):
        ref = refs[i] if refs is not None else x @ w.T
        q = fake_quantize_int4(w * scales[None, :], group_size) / scales[None, :]
        total += float(((x @ q.T) - ref).pow(2).mean())
    return total


def search_scales(x: torch.Tensor, weights: list[torch.Tensor], mean_abs: torch.Tensor, group_size: int,
                  grid: int = GRID) -> GroupResult:
    """The best scales for the linears ``weights`` ([N_i, K] each) reading input rows ``x`` [rows, K] whose
    per-channel mean |x| over all calibration tokens is ``mean_abs`` [K]."""
    x, mean_abs = x.float(), mean_abs.float().clamp(min=1e-4)
    weights = [w.float() for w in weights]
    refs = [x @ w.T for w in weights]
    ones = torch.ones_like(mean_abs)
    rtn = output_error(x, weights, ones, group_size, refs)
    best = GroupResult(ones, 0.0, rtn, rtn)
    for step in range(1, grid):
        alpha = step / grid
        s = mean_abs.pow(alpha)
        s = s / (s.max() * s.min()).sqrt()  # centre the scales around 1 (AutoAWQ's normalisation)
        err = output_error(x, weights, s, group_size, refs)
        if err < best.awq_error:
            best = GroupResult(s, alpha, rtn, err)
    return best


CLIP_GRID = 20  # clip ratios 1, 0.95, ..., 0.55 (AutoAWQ: n_grid 20, max_shrink 0.5)
CLIP_ROWS = 128  # calibration rows the clip search reads (AutoAWQ: 64 tokens x batches)


def search_clip(x: torch.Tensor, w: torch.Tensor, group_size: int, grid: int = CLIP_GRID,
                rows: int = CLIP_ROWS) -> torch.Tensor:
    """W [N, K] with each (row, group) clipped to the symmetric range +-ratio x its max |w| that minimises the
    mean squared error of that group's partial output on rows of ``x`` [R, K]; ratio 1 (no clip) is a candidate."""
    x, w = x[:rows].float(), w.float()
    n, k = w.shape
    groups = -(-k // group_size)
    pad = groups * group_size - k
    wp = torch.nn.functional.pad(w, (0, pad)).reshape(n, groups, group_size)
    xp = torch.nn.functional.pad(x, (0, pad)).reshape(x.shape[0], groups, group_size)
    exact = torch.einsum("rgj,ngj->rng", xp, wp)
    top = wp.abs().amax(-1, keepdim=True)
    best_err = torch.full((n, groups), float("inf"))
    best = wp.clone()
    for step in range(grid // 2):
        ratio = 1 - step / grid
        clipped = torch.minimum(torch.maximum(wp, -top * ratio), top * ratio)
        q = fake_quantize_int4(clipped.reshape(n, -1)[:, :k], group_size)
        qp = torch.nn.functional.pad(q, (0, pad)).reshape(n, groups, group_size)
        err = (torch.einsum("rgj,ngj->rng", xp, qp) - exact).pow(2).mean(0)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better[..., None], clipped, best)
    return best.reshape(n, -1)[:, :k]
