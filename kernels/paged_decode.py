"""Decode attention over a paged KV cache, split along the context (split-K / flash-decoding).

One query token per sequence. A long context is cut into partitions processed by separate programs, so even a
batch of one sequence keeps the GPU busy; each partition keeps a running max and sum (online softmax) and the
partials are merged exactly afterwards. Grouped-query attention maps query head h to kv head h // (q_heads //
kv_heads). ``window`` > 0 limits attention to the last ``window`` positions (sliding-window layers). A uint8 cache
is the int8 KV cache (hanlin.kernels.kv_quant): its rows are dequantized as they are loaded.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from hanlin.kernels.kv_quant import dequantize_rows, is_int8, load_int8_rows
from hanlin.kernels.paged_offsets import paged_offsets


@triton.jit
def _paged_decode_kernel(
    q_ptr, kc_ptr, vc_ptr, table_ptr, lens_ptr, out_ptr, m_ptr, l_ptr,
    stride_qb, stride_qh, stride_tb, stride_ob, stride_oh, stride_os,
    scale, window, group, kv_heads, head_dim, blocks_per_part,
    BLOCK_SIZE: tl.constexpr, BLOCK_D: tl.constexpr, KV_INT8: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    part = tl.program_id(2)
    n = tl.load(lens_ptr + seq)
    kvh = head // group
    d = tl.arange(0, BLOCK_D)
    dmask = d < head_dim
    q = tl.load(q_ptr + seq * stride_qb + head * stride_qh + d, mask=dmask, other=0.0).to(tl.float32) * scale
    lo = 0
    if window > 0:
        lo = tl.maximum(n - window, 0)
    m_i = tl.max(tl.full([BLOCK_SIZE], float("-inf"), tl.float32), axis=0)
    l_i = tl.sum(tl.zeros([BLOCK_SIZE], tl.float32), axis=0)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    first_block = part * blocks_per_part
    offs = tl.arange(0, BLOCK_SIZE)
    # a partition past the end of this sequence does no work (it still writes an empty partial): with a grid sized
    # for the longest context a batch may hold (CUDA graphs), most partitions of short sequences are such
    n_blocks = tl.minimum(blocks_per_part, tl.cdiv(n, BLOCK_SIZE) - first_block)
    for i in range(0, n_blocks):
        blk = first_block + i
        pos = blk * BLOCK_SIZE + offs
        valid = (pos < n) & (pos >= lo)
        phys = tl.load(table_ptr + seq * stride_tb + blk, mask=blk * BLOCK_SIZE < n, other=0)
        kmask = valid[:, None] & dmask[None, :]
        if KV_INT8:
            k = load_int8_rows(kc_ptr, phys, offs, kvh, d, kv_heads, head_dim, valid, kmask, BLOCK_SIZE)
        else:
            base = paged_offsets(phys, offs, kvh, d, kv_heads, head_dim, BLOCK_SIZE)  # 64-bit: see paged_offsets
            k = tl.load(kc_ptr + base, mask=kmask, other=0.0).to(tl.float32)
        s = tl.where(valid, tl.sum(k * q[None, :], axis=1), float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # nothing seen yet: keep exp() finite
        p = tl.exp(s - m_safe)
        alpha = tl.exp(m_i - m_safe)
        if KV_INT8:
            v = load_int8_rows(vc_ptr, phys, offs, kvh, d, kv_heads, head_dim, valid, kmask, BLOCK_SIZE)
        else:
            v = tl.load(vc_ptr + base, mask=kmask, other=0.0).to(tl.float32)
        acc = acc * alpha + tl.sum(p[:, None] * v, axis=0)
        l_i = l_i * alpha + tl.sum(p, axis=0)
        m_i = m_new
    o = out_ptr + seq * stride_ob + head * stride_oh + part * stride_os
    tl.store(o + d, acc, mask=dmask)
    stat = (seq * tl.num_programs(1) + head) * tl.num_programs(2) + part
    tl.store(m_ptr + stat, m_i)
    tl.store(l_ptr + stat, l_i)


def paged_decode_ref(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                     context_lens: torch.Tensor, scale: float | None = None, window: int = 0) -> torch.Tensor:
    """q [batch, q_heads, head_dim] against each sequence's cached keys/values; fp32 math, q's dtype out."""
    batch, q_heads, dim = q.shape
    block_size, kv_heads = k_cache.shape[1], k_cache.shape[2]
    scale = scale if scale is not None else 1.0 / math.sqrt(dim)
    out = torch.empty_like(q)
    for b in range(batch):
        n = int(context_lens[b])
        blocks = block_tables[b, : (n + block_size - 1) // block_size].long()
        k = dequantize_rows(k_cache[blocks]).reshape(-1, kv_heads, dim)[:n]
        v = dequantize_rows(v_cache[blocks]).reshape(-1, kv_heads, dim)[:n]
        lo = max(n - window, 0) if window > 0 else 0
        k, v = k[lo:], v[lo:]
        k = k.repeat_interleave(q_heads // kv_heads, dim=1)
        v = v.repeat_interleave(q_heads // kv_heads, dim=1)
        s = torch.einsum("hd,thd->ht", q[b].float() * scale, k)
        out[b] = torch.einsum("ht,thd->hd", s.softmax(-1), v).to(q.dtype)
    return out


def paged_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                 context_lens: torch.Tensor, scale: float | None = None, window: int = 0,
                 partition_tokens: int = 512, max_context: int | None = None) -> torch.Tensor:
    """Triton version of :func:`paged_decode_ref`; ``partition_tokens`` is the split-K chunk (a multiple of the
    block size is used). ``max_context`` fixes the grid for contexts up to that length without reading
    ``context_lens`` on the host: no device sync, so the call can be captured in a CUDA graph."""
    batch, q_heads, dim = q.shape
    _, block_size, kv_heads, _ = k_cache.shape
    if q_heads % kv_heads:
        raise ValueError(f"q_heads={q_heads} is not a multiple of kv_heads={kv_heads}")
    scale = scale if scale is not None else 1.0 / math.sqrt(dim)
    max_len = max_context if max_context is not None else (int(context_lens.max()) if batch else 0)
    blocks_per_part = max(partition_tokens // block_size, 1)
    parts = max(triton.cdiv(triton.cdiv(max_len, block_size), blocks_per_part), 1)
    partial = torch.empty(batch, q_heads, parts, dim, dtype=torch.float32, device=q.device)
    m = torch.empty(batch, q_heads, parts, dtype=torch.float32, device=q.device)
    l = torch.empty_like(m)
    q = q if q.stride(-1) == 1 else q.contiguous()
    if batch:
        _paged_decode_kernel[(batch, q_heads, parts)](
            q, k_cache, v_cache, block_tables, context_lens, partial, m, l,
            q.stride(0), q.stride(1), block_tables.stride(0), partial.stride(0), partial.stride(1), partial.stride(2),
            scale, window, q_heads // kv_heads, kv_heads, dim, blocks_per_part,
            BLOCK_SIZE=block_size, BLOCK_D=triton.next_power_of_2(dim), KV_INT8=is_int8(k_cache),
        )
    # Merge the partitions: each partial is scaled by exp(its max - the global max).
    m_all = m.max(dim=-1, keepdim=True).values
    w = torch.where(torch.isfinite(m), torch.exp(m - m_all), torch.zeros_like(m))
    num = (partial * w[..., None]).sum(dim=2)
    den = (l * w).sum(dim=-1, keepdim=True)
    return (num / den.clamp_min(1e-30)).to(q.dtype)
