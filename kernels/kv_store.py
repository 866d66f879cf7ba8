"""Write this step's keys and values into the paged KV cache, one token per program.

The cache is [num_blocks, block_size, kv_heads, head_dim] for k and for v; ``slots[t] = block * block_size +
offset`` says where token t goes, and a negative slot skips the token (padding in a CUDA-graph batch). A uint8
cache is the int8 KV cache: the store quantizes each (token, head) row (hanlin.kernels.kv_quant).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from hanlin.kernels.kv_quant import is_int8, kv_store_int8, kv_store_int8_ref


@triton.jit
def _kv_store_kernel(
    k_ptr, v_ptr, kc_ptr, vc_ptr, slot_ptr, stride_kt, stride_kh, stride_vt, stride_vh,
    n_heads, head_dim, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    tok = tl.program_id(0)
    slot = tl.load(slot_ptr + tok)
    if slot >= 0:
        h = tl.arange(0, BLOCK_H)[:, None]
        d = tl.arange(0, BLOCK_D)[None, :]
        mask = (h < n_heads) & (d < head_dim)
        k = tl.load(k_ptr + tok * stride_kt + h * stride_kh + d, mask=mask)
        v = tl.load(v_ptr + tok * stride_vt + h * stride_vh + d, mask=mask)
        dst = slot * n_heads * head_dim + h * head_dim + d
        tl.store(kc_ptr + dst, k, mask=mask)
        tl.store(vc_ptr + dst, v, mask=mask)


def kv_store_ref(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 slots: torch.Tensor) -> None:
    if is_int8(k_cache):
        return kv_store_int8_ref(k, v, k_cache, v_cache, slots)
    keep = slots >= 0
    flat_k = k_cache.view(-1, *k_cache.shape[2:])
    flat_v = v_cache.view(-1, *v_cache.shape[2:])
    flat_k[slots[keep]] = k[keep]
    flat_v[slots[keep]] = v[keep]


def kv_store(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slots: torch.Tensor) -> None:
    """Triton version of :func:`kv_store_ref` (k, v: [tokens, kv_heads, head_dim]; caches contiguous)."""
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("the KV cache must be contiguous [num_blocks, block_size, kv_heads, head_dim]")
    tokens, heads, dim = k.shape
    if k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError("k and v need a unit stride in head_dim")
    if is_int8(k_cache):
        return kv_store_int8(k, v, k_cache, v_cache, slots)
    if tokens:
        _kv_store_kernel[(tokens,)](
            k, v, k_cache, v_cache, slots.to(torch.int64).contiguous(),
            k.stride(0), k.stride(1), v.stride(0), v.stride(1), heads, dim,
            BLOCK_H=triton.next_power_of_2(heads), BLOCK_D=triton.next_power_of_2(dim),
        )
