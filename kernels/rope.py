"""Rotary position embedding applied in place to q and k, for every token at its own position.

In place because the engine writes q/k once per step and rotates them right before attention: no extra copy of
the activations. ``cos_sin`` is a cache of shape [max_positions, rotary_dim] holding cos in the first half and sin
in the second, so each rotary variant (base, scaling, partial ``rotary_dim < head_dim``) is only a different cache.
``neox=True`` rotates the two halves of the rotary dims (Llama, Qwen2, Gemma3, InternLM2 in HF);
``neox=False`` rotates interleaved pairs (GPT-J style).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def rope_cache(max_positions: int, rotary_dim: int, base: float = 10000.0, scaling: float = 1.0,
               device: torch.device | str = "cpu", inv_freq: torch.Tensor | None = None) -> torch.Tensor:
    """[max_positions, rotary_dim] fp32: cos | sin, with linear position scaling (``scaling`` > 1 stretches).
    ``inv_freq`` [rotary_dim / 2] replaces the plain ``base`` frequencies (variants such as Llama 3's)."""
    if inv_freq is None:
        inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64, device=device) / rotary_dim))
    inv_freq = inv_freq.to(device=device, dtype=torch.float64)
    t = torch.arange(max_positions, dtype=torch.float64, device=device) / scaling
    freqs = torch.outer(t, inv_freq)
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1).float()


@triton.jit
def _rope_kernel(
    x_ptr, pos_ptr, cs_ptr, stride_t, stride_h, stride_cs, n_heads,
    HALF: tl.constexpr, NEOX: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    tok = tl.program_id(0)
    pos = tl.load(pos_ptr + tok)
    d = tl.arange(0, BLOCK_D)
    h = tl.arange(0, BLOCK_H)
    dmask = d < HALF
    cos = tl.load(cs_ptr + pos * stride_cs + d, mask=dmask, other=1.0)
    sin = tl.load(cs_ptr + pos * stride_cs + HALF + d, mask=dmask, other=0.0)
    if NEOX:
        first = d
        second = d + HALF
    else:
        first = 2 * d
        second = 2 * d + 1
    mask = (h[:, None] < n_heads) & dmask[None, :]
    base = x_ptr + tok * stride_t + h[:, None] * stride_h
    x1 = tl.load(base + first[None, :], mask=mask, other=0.0)
    x2 = tl.load(base + second[None, :], mask=mask, other=0.0)
    a = x1.to(tl.float32)
    b = x2.to(tl.float32)
    tl.store(base + first[None, :], (a * cos[None, :] - b * sin[None, :]).to(x1.dtype), mask=mask)
    tl.store(base + second[None, :], (b * cos[None, :] + a * sin[None, :]).to(x1.dtype), mask=mask)


def _rotate_ref(x: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor, neox: bool) -> torch.Tensor:
    half = cos_sin.shape[-1] // 2
    cos = cos_sin[positions, :half][:, None, :]
    sin = cos_sin[positions, half:][:, None, :]
    xf = x.float()
    if neox:
        a, b = xf[..., :half], xf[..., half : 2 * half]
    else:
        a, b = xf[..., 0 : 2 * half : 2], xf[..., 1 : 2 * half : 2]
    ra, rb = a * cos - b * sin, b * cos + a * sin
    out = xf.clone()
    if neox:
        out[..., :half], out[..., half : 2 * half] = ra, rb
    else:
        out[..., 0 : 2 * half : 2], out[..., 1 : 2 * half : 2] = ra, rb
    return out.to(x.dtype)


def rope_ref(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor,
             neox: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """q [tokens, q_heads, head_dim], k [tokens, kv_heads, head_dim] rotated (new tensors)."""
    return _rotate_ref(q, positions, cos_sin, neox), _rotate_ref(k, positions, cos_sin, neox)


def rope_(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor,
          neox: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton, in place on q and k (which must have a unit stride in their last dim); returns them."""
    half = cos_sin.shape[-1] // 2
    if 2 * half > q.shape[-1]:
        raise ValueError(f"rotary_dim {2 * half} is larger than head_dim {q.shape[-1]}")
    positions = positions.to(torch.int64).contiguous()
    cos_sin = cos_sin.contiguous()
    for x in (q, k):
        if x.stride(-1) != 1:
            raise ValueError("rope_ needs q and k with a unit stride in head_dim (views of a qkv buffer are fine)")
        tokens, heads, _ = x.shape
        if tokens == 0:
            continue
        _rope_kernel[(tokens,)](
            x, positions, cos_sin, x.stride(0), x.stride(1), cos_sin.stride(0), heads,
            HALF=half, NEOX=neox, BLOCK_H=triton.next_power_of_2(heads), BLOCK_D=triton.next_power_of_2(half),
        )
    return q, k
