"""Causal attention for the new tokens of several sequences at once (varlen), reading keys/values from the paged
cache, so a prefill chunk attends to the sequence's cached prefix (prefix caching, chunked prefill) as well as to
itself.

The new tokens' k/v are stored into the cache first (kv_store); query i of sequence b sits at position
``context_lens[b] - q_len_b + i``. Tiles of BLOCK_M queries sweep the key blocks with an online softmax
(FlashAttention-style). ``window`` > 0 restricts each query to the last ``window`` positions (sliding window). A uint8 cache is the int8
KV cache (hanlin.kernels.kv_quant): its rows are dequantized to q's dtype as they are loaded.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from hanlin.kernels.kv_quant import dequantize_rows, is_int8, load_int8_rows
from hanlin.kernels.paged_offsets import paged_offsets


@triton.jit
def _prefill_kernel(
    q_ptr, kc_ptr, vc_ptr, table_ptr, cu_ptr, lens_ptr, out_ptr,
    stride_qt, stride_qh, stride_tb, stride_ot, stride_oh,
    scale, window, group, kv_heads, head_dim,
    BLOCK_M: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr,
    PRECISION: tl.constexpr, KV_INT8: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    tile = tl.program_id(2)
    q_start = tl.load(cu_ptr + seq)
    q_len = tl.load(cu_ptr + seq + 1) - q_start
    n = tl.load(lens_ptr + seq)
    kvh = head // group
    offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    d = tl.arange(0, BLOCK_D)
    mmask = offs_m < q_len
    dmask = d < head_dim
    qpos = n - q_len + offs_m
    q = tl.load(q_ptr + (q_start + offs_m[:, None]) * stride_qt + head * stride_qh + d[None, :],
                mask=mmask[:, None] & dmask[None, :], other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    last = tl.minimum(n - q_len + (tile + 1) * BLOCK_M, n)  # keys past the tile's last query are never seen
    first = 0
    if window > 0:
        first = tl.maximum(n - q_len + tile * BLOCK_M - window + 1, 0)
    offs_n = tl.arange(0, BLOCK_SIZE)
    for blk in range(first // BLOCK_SIZE, tl.cdiv(last, BLOCK_SIZE)):
        phys = tl.load(table_ptr + seq * stride_tb + blk)
        kpos = blk * BLOCK_SIZE + offs_n
        kmask = (kpos < n)[:, None] & dmask[None, :]
        if KV_INT8:  # dequantized in registers to q's dtype: the dots below are the float cache's
            k = load_int8_rows(kc_ptr, phys, offs_n, kvh, d, kv_heads, head_dim, kpos < n, kmask,
                               BLOCK_SIZE).to(q_ptr.dtype.element_ty)
            v = load_int8_rows(vc_ptr, phys, offs_n, kvh, d, kv_heads, head_dim, kpos < n, kmask,
                               BLOCK_SIZE).to(q_ptr.dtype.element_ty)
        else:
            base = paged_offsets(phys, offs_n, kvh, d, kv_heads, head_dim, BLOCK_SIZE)  # 64-bit: see paged_offsets
            k = tl.load(kc_ptr + base, mask=kmask, other=0.0)
            v = tl.load(vc_ptr + base, mask=kmask, other=0.0)
        if UPCAST:  # Triton's CPU interpreter computes bf16 dots wrongly; the GPU path keeps bf16 tensor cores
            s = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), out_dtype=tl.float32,
                       input_precision=PRECISION) * scale
        else:
            s = tl.dot(q, tl.trans(k), out_dtype=tl.float32, input_precision=PRECISION) * scale
        allowed = (kpos[None, :] <= qpos[:, None]) & (kpos[None, :] < n) & mmask[:, None]
        if window > 0:
            allowed = allowed & (kpos[None, :] > qpos[:, None] - window)
        s = tl.where(allowed, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        if UPCAST:
            pv = tl.dot(p, v.to(tl.float32), out_dtype=tl.float32, input_precision=PRECISION)
        else:
            pv = tl.dot(p.to(v.dtype), v, out_dtype=tl.float32, input_precision=PRECISION)
        acc = acc * alpha[:, None] + pv
        l_i = l_i * alpha + tl.sum(p, axis=1)
        m_i = m_new
    out = acc / tl.maximum(l_i, 1e-30)[:, None]
    tl.store(out_ptr + (q_start + offs_m[:, None]) * stride_ot + head * stride_oh + d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=mmask[:, None] & dmask[None, :])


def prefill_attention_ref(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                          cu_seqlens_q: torch.Tensor, context_lens: torch.Tensor, scale: float | None = None,
                          window: int = 0) -> torch.Tensor:
    """q [total_new_tokens, q_heads, head_dim]; fp32 math, q's dtype out."""
    _, q_heads, dim = q.shape
    block_size, kv_heads = k_cache.shape[1], k_cache.shape[2]
    scale = scale if scale is not None else 1.0 / math.sqrt(dim)
    out = torch.empty_like(q)
    for b in range(len(context_lens)):
        s0, s1, n = int(cu_seqlens_q[b]), int(cu_seqlens_q[b + 1]), int(context_lens[b])
        blocks = block_tables[b, : (n + block_size - 1) // block_size].long()
        k = dequantize_rows(k_cache[blocks]).reshape(-1, kv_heads, dim)[:n].repeat_interleave(q_heads // kv_heads, dim=1)
        v = dequantize_rows(v_cache[blocks]).reshape(-1, kv_heads, dim)[:n].repeat_interleave(q_heads // kv_heads, dim=1)
        qpos = torch.arange(n - (s1 - s0), n, device=q.device)
        kpos = torch.arange(n, device=q.device)
        allowed = kpos[None, :] <= qpos[:, None]
        if window > 0:
            allowed &= kpos[None, :] > qpos[:, None] - window
        s = torch.einsum("qhd,khd->hqk", q[s0:s1].float() * scale, k).masked_fill(~allowed, float("-inf"))
        out[s0:s1] = torch.einsum("hqk,khd->qhd", s.softmax(-1), v).to(q.dtype)
    return out


def prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                      cu_seqlens_q: torch.Tensor, context_lens: torch.Tensor, scale: float | None = None,
                      window: int = 0, block_m: int = 32) -> torch.Tensor:
    """Triton version of :func:`prefill_attention_ref` (block size and head_dim >= 16, as tl.dot needs).

    fp32 inputs are multiplied in full fp32 ("ieee"): a GPU's tl.dot otherwise rounds them to TF32 (10 mantissa
    bits), a thousand times the error the fp32 tolerance allows. Half-precision inputs use the tensor cores as
    they are; their error budget is in ``hanlin.kernels.TOLERANCES``."""
    total, q_heads, dim = q.shape
    _, block_size, kv_heads, _ = k_cache.shape
    if q_heads % kv_heads:
        raise ValueError(f"q_heads={q_heads} is not a multiple of kv_heads={kv_heads}")
    if block_size < 16 or dim < 16:
        raise ValueError(f"prefill_attention needs block_size >= 16 and head_dim >= 16, got {block_size}, {dim}")
    scale = scale if scale is not None else 1.0 / math.sqrt(dim)
    out = torch.empty_like(q)
    batch = len(context_lens)
    q_lens = cu_seqlens_q[1:] - cu_seqlens_q[:-1]
    max_q = int(q_lens.max()) if batch else 0
    q = q if q.stride(-1) == 1 else q.contiguous()
    int8 = is_int8(k_cache)
    upcast = q.dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1"
    if total and max_q:
        _prefill_kernel[(batch, q_heads, triton.cdiv(max_q, block_m))](
            q, k_cache, v_cache, block_tables, cu_seqlens_q, context_lens, out,
            q.stride(0), q.stride(1), block_tables.stride(0), out.stride(0), out.stride(1),
            scale, window, q_heads // kv_heads, kv_heads, dim,
            BLOCK_M=block_m, BLOCK_SIZE=block_size, BLOCK_D=triton.next_power_of_2(dim),
            UPCAST=upcast, PRECISION="ieee" if q.dtype == torch.float32 or upcast else "tf32", KV_INT8=int8,
        )
    return out
