"""RMSNorm for training: a forward that keeps each row's reciprocal RMS, and a backward that uses it.

Eager torch computes RMSNorm in five kernels and saves the fp32 upcast of every input for the backward pass; this
saves one fp32 number per row and does the backward in one pass over each row:

    y  = x * r * w'          with r = 1 / sqrt(mean(x^2) + eps) and w' = w + offset (Gemma's 1 + w)
    dx = r * (g - x * r^2 * mean(g * x))     where g = dy * w'
    dw = sum over rows of dy * x * r

The per-row dw terms go to an fp32 buffer summed by torch afterwards, which keeps the kernel free of atomics.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _forward_kernel(x_ptr, w_ptr, y_ptr, rstd_ptr, stride, n_cols, eps, offset, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * stride + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / n_cols + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32) + offset
    tl.store(y_ptr + row * stride + cols, (x * rstd * w).to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(rstd_ptr + row, rstd)


@triton.jit
def _backward_kernel(dy_ptr, x_ptr, w_ptr, rstd_ptr, dx_ptr, dw_ptr, stride, n_cols, offset, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    dy = tl.load(dy_ptr + row * stride + cols, mask=mask, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + row * stride + cols, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32) + offset
    rstd = tl.load(rstd_ptr + row)
    g = dy * w
    dx = rstd * (g - x * rstd * rstd * tl.sum(g * x, axis=0) / n_cols)
    tl.store(dx_ptr + row * stride + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)
    tl.store(dw_ptr + row * n_cols + cols, dy * x * rstd, mask=mask)


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, offset: float = 0.0) -> torch.Tensor:
    """RMSNorm in fp32, output in x's dtype (differentiable torch; the reference for the kernels)."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * (weight.float() + offset)).to(x.dtype)


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float, offset: float) -> torch.Tensor:  # type: ignore[override]
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()
        rows, n_cols = x2.shape
        y = torch.empty_like(x2)
        rstd = torch.empty(rows, dtype=torch.float32, device=x.device)
        block = triton.next_power_of_2(n_cols)
        if rows:
            _forward_kernel[(rows,)](x2, weight, y, rstd, x2.stride(0), n_cols, eps, offset, BLOCK=block)
        ctx.save_for_backward(x2, weight, rstd)
        ctx.offset, ctx.block, ctx.shape = offset, block, shape
        return y.reshape(shape)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):  # type: ignore[override]
        x2, weight, rstd = ctx.saved_tensors
        rows, n_cols = x2.shape
        dy2 = dy.reshape(-1, n_cols).contiguous()
        dx = torch.empty_like(x2)
        dw_rows = torch.empty(rows, n_cols, dtype=torch.float32, device=x2.device)
        if rows:
            _backward_kernel[(rows,)](dy2, x2, weight, rstd, dx, dw_rows, x2.stride(0), n_cols, ctx.offset,
                                      BLOCK=ctx.block)
        return dx.reshape(ctx.shape), dw_rows.sum(0).to(weight.dtype), None, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, offset: float = 0.0) -> torch.Tensor:
    """Triton version of :func:`rms_norm_ref`, differentiable in ``x`` and ``weight``."""
    if x.shape[-1] != weight.shape[0]:
        raise ValueError(f"weight has {weight.shape[0]} entries but the rows have {x.shape[-1]}")
    return _RMSNorm.apply(x, weight, eps, offset)
