"""Decode attention over the paged cache in plain torch, batched: the engine's path where Triton cannot run (CPU).

``hanlin.kernels.paged_decode_ref`` is written for clarity and loops over sequences in Python; on CPU that loop was
40% of a decode step. Here every sequence's blocks are gathered at once into [batch, blocks x block_size] keys and
values, positions past a sequence's length (or before its sliding window) are masked, and grouped-query heads
attend to their kv head without copying it. The results are the reference's up to float rounding
(tests/test_gpu_serving.py compares them on random inputs).
"""

from __future__ import annotations

import math

import torch

from hanlin.kernels.kv_quant import dequantize_rows


def paged_decode_gathered(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                          context_lens: torch.Tensor, scale: float | None = None, window: int = 0) -> torch.Tensor:
    """q [batch, q_heads, head_dim]; caches [num_blocks, block_size, kv_heads, head_dim]; fp32 math."""
    batch, q_heads, dim = q.shape
    block_size, kv_heads = k_cache.shape[1], k_cache.shape[2]
    scale = scale if scale is not None else 1.0 / math.sqrt(dim)
    width = block_tables.shape[1] * block_size
    tables = block_tables.long()
    keys = dequantize_rows(k_cache[tables]).reshape(batch, width, kv_heads, dim)  # int8 cache: dequantized here
    values = dequantize_rows(v_cache[tables]).reshape(batch, width, kv_heads, dim)
    positions = torch.arange(width, device=q.device)[None, :]
    lens = context_lens.to(torch.long)[:, None]
    valid = positions < lens
    if window > 0:
        valid &= positions >= lens - window
    grouped = q.reshape(batch, kv_heads, q_heads // kv_heads, dim).float() * scale
    scores = torch.einsum("bkgd,btkd->bkgt", grouped, keys)
    scores.masked_fill_(~valid[:, None, None, :], float("-inf"))
    out = torch.einsum("bkgt,btkd->bkgd", scores.softmax(dim=-1), values)
    return out.reshape(batch, q_heads, dim).to(q.dtype)
