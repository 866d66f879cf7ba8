"""AWQ's activation-aware scale search for one group of linears that read the same input (pure torch math).

Why scales help: the few input channels with large activations carry most of a layer's output, and int4
round-to-nearest (RTN) spends the same relative precision on every weight. Multiplying those channels' weight
columns by ``s > 1`` before quantizing (and dividing the input by ``s``, folded into the op before: an RMSNorm
weight or the rows of the linear that produced the input) gives them finer steps; the output of the linear is
unchanged before rounding. The search (AWQ, Lin et al. 2023) tries ``s = mean|x|^alpha`` over a grid of alpha and
keeps the one with the smallest output error on calibration activations; alpha = 0 is plain RTN, so the result is
never worse than RTN on those activations.
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
