"""Fused residual add + RMSNorm: one read of each row instead of three passes (add, square-mean, scale).

Numerics follow the HF models: the residual sum is rounded to the activation dtype (that rounded value is the next
residual and what gets normalized), the norm is computed in fp32, and ``weight_offset=1.0`` gives Gemma's
``x * (1 + w)`` variant.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _add_rmsnorm_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr,
    stride_x, stride_r, stride_o, stride_ro,
    n_cols, eps, weight_offset,
    HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + row * stride_r + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)  # rounded like the model's own add
        tl.store(res_out_ptr + row * stride_ro + cols, x, mask=mask)
    xf = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / n_cols + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    y = xf * rstd * (w + weight_offset)
    tl.store(out_ptr + row * stride_o + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def add_rmsnorm_ref(
    x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor | None = None, eps: float = 1e-6,
    weight_offset: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(normed, new_residual); new_residual is x + residual (or x when there is no residual)."""
    if residual is not None:
        x = (x.float() + residual.float()).to(x.dtype)
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * (weight.float() + weight_offset)
    return y.to(x.dtype), x


def add_rmsnorm(
    x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor | None = None, eps: float = 1e-6,
    weight_offset: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of :func:`add_rmsnorm_ref` for ``x`` of shape [..., hidden]."""
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    rows, n_cols = x2.shape
    out = torch.empty_like(x2)
    if residual is not None:
        r2 = residual.reshape(-1, shape[-1])
        r2 = r2 if r2.stride(-1) == 1 else r2.contiguous()
        res_out = torch.empty_like(x2)
    else:
        r2, res_out = x2, x2
    block = triton.next_power_of_2(n_cols)
    _add_rmsnorm_kernel[(rows,)](
        x2, r2, weight, out, res_out,
        x2.stride(0), r2.stride(0), out.stride(0), res_out.stride(0),
        n_cols, eps, weight_offset,
        HAS_RESIDUAL=residual is not None, BLOCK=block,
        num_warps=min(max(block // 256, 1), 16),
    )
    return out.reshape(shape), res_out.reshape(shape)
