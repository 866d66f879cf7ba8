"""Gated MLP activation: act(gate) * up from the fused [gate | up] projection, in one pass.

``act="silu"`` for Llama/Qwen2/InternLM2, ``act="gelu_tanh"`` for Gemma3.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _act_mul_kernel(x_ptr, out_ptr, stride_x, stride_o, n_cols, GELU: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    start = tl.program_id(1) * BLOCK
    cols = start + tl.arange(0, BLOCK)
    mask = cols < n_cols
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    if GELU:
        inner = 0.7978845608028654 * (gate + 0.044715 * gate * gate * gate)
        act = 0.5 * gate * (1.0 + (2.0 / (1.0 + tl.exp(-2.0 * inner)) - 1.0))  # tanh via exp
    else:
        act = gate / (1.0 + tl.exp(-gate))
    tl.store(out_ptr + row * stride_o + cols, (act * up).to(out_ptr.dtype.element_ty), mask=mask)


def silu_mul_ref(x: torch.Tensor, act: str = "silu") -> torch.Tensor:
    gate, up = x.float().chunk(2, dim=-1)
    if act == "gelu_tanh":
        a = torch.nn.functional.gelu(gate, approximate="tanh")
    elif act == "silu":
        a = torch.nn.functional.silu(gate)
    else:
        raise ValueError(f"unknown activation {act!r}; use 'silu' or 'gelu_tanh'")
    return (a * up).to(x.dtype)


def silu_mul(x: torch.Tensor, act: str = "silu") -> torch.Tensor:
    """Triton version of :func:`silu_mul_ref`: x [..., 2 * inter] -> [..., inter]."""
    if act not in ("silu", "gelu_tanh"):
        raise ValueError(f"unknown activation {act!r}; use 'silu' or 'gelu_tanh'")
    shape = x.shape
    if shape[-1] % 2:
        raise ValueError(f"the last dim holds [gate | up] and must be even, got {shape[-1]}")
    x2 = x.reshape(-1, shape[-1])
    x2 = x2 if x2.stride(-1) == 1 else x2.contiguous()
    n = shape[-1] // 2
    out = torch.empty(x2.shape[0], n, dtype=x.dtype, device=x.device)
    block = min(triton.next_power_of_2(n), 1024)
    grid = (x2.shape[0], triton.cdiv(n, block))
    if x2.shape[0]:
        _act_mul_kernel[grid](x2, out, x2.stride(0), out.stride(0), n, GELU=act == "gelu_tanh", BLOCK=block)
    return out.reshape(*shape[:-1], n)
