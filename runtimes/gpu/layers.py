"""Each op the model needs, on Triton kernels or on their torch references.

``use_triton`` is decided once per engine: kernels on a GPU, references on CPU (the same engine, slow but
exact, is what CI runs; decode attention there is a batched torch version of the reference, torch_attention.py). Tests may force Triton on CPU under TRITON_INTERPRET=1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hanlin.kernels import add_rmsnorm as _norm
from hanlin.kernels import kv_store as _store
from hanlin.kernels import paged_decode as _decode
from hanlin.kernels import prefill_attention as _prefill
from hanlin.kernels import rope as _rope
from hanlin.kernels import silu_mul as _act
from hanlin.runtimes.gpu.torch_attention import paged_decode_gathered


@dataclass(slots=True)
class StepBatch:
    """The flat batch of one engine step: every scheduled sequence's new tokens, back to back."""

    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    slots: torch.Tensor  # [T] where each token's k/v goes in the paged cache
    cu_seqlens_q: torch.Tensor  # [B + 1] token offsets of each sequence in the batch
    context_lens: torch.Tensor  # [B] tokens in each sequence's cache after this step
    block_tables: torch.Tensor  # [B, max_blocks]
    decode_only: bool  # every sequence brings exactly one token: the split-K decode kernel applies
    logits_rows: torch.Tensor  # [B'] rows whose logits are wanted (each sequence's last token, when sampled)
    max_context: int | None = None  # fixed upper bound on context_lens (CUDA graphs: no host read of the lengths)


class Ops:
    def __init__(self, use_triton: bool) -> None:
        self.triton = use_triton

    def norm(self, x: torch.Tensor, w: torch.Tensor, eps: float, offset: float,
             residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        f = _norm.add_rmsnorm if self.triton else _norm.add_rmsnorm_ref
        return f(x, w, residual, eps=eps, weight_offset=offset)

    def rope(self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.triton:
            return _rope.rope_(q, k, positions, cos_sin)
        return _rope.rope_ref(q, k, positions, cos_sin)

    def act(self, x: torch.Tensor, act: str) -> torch.Tensor:
        return _act.silu_mul(x, act) if self.triton else _act.silu_mul_ref(x, act)

    def store(self, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor) -> None:
        (_store.kv_store if self.triton else _store.kv_store_ref)(k, v, k_cache, v_cache, slots)

    def attention(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, batch: StepBatch,
                  scale: float, window: int) -> torch.Tensor:
        if batch.decode_only:
            if self.triton:
                return _decode.paged_decode(q, k_cache, v_cache, batch.block_tables, batch.context_lens, scale=scale,
                                            window=window, max_context=batch.max_context)
            return paged_decode_gathered(q, k_cache, v_cache, batch.block_tables, batch.context_lens, scale=scale,
                                         window=window)
        f = _prefill.prefill_attention if self.triton else _prefill.prefill_attention_ref
        return f(q, k_cache, v_cache, batch.block_tables, batch.cu_seqlens_q, batch.context_lens, scale=scale,
                 window=window)
