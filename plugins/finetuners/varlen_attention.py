"""Attention inside each packed sample, computed per sample: the varlen attention packing needs.

transformers reads packed samples from the position ids and builds a block-diagonal mask, and torch's SDPA with
an arbitrary mask takes its math path: the full [rows, heads, L, L] score matrix of every row, most of it masked
away, materialised and kept for the backward pass. That made a packed LoRA step on CPU cost as much per token as
the padded one it replaces. This attention function cuts each row at the position-id restarts and runs causal
SDPA on each sample alone (flash / memory-efficient kernels, no mask), so a packed row costs the sum of its
samples' attention, as flash-attention's varlen kernels do on a GPU. The model gets no mask at all.

Layers with a sliding window (Gemma3's local layers: ``sliding_window`` set on the layer, None on its global
ones) see only the last ``sliding_window`` positions of their own sample, as transformers' sliding-window mask
lets them; a sample no longer than the window needs no mask and keeps the fast causal path.

Registered with transformers under the name ``hanlin_varlen``; the finetuners switch a model to it when packing.
"""

from __future__ import annotations

from typing import Any

NAME = "hanlin_varlen"
_registered = False


def _no_mask(*args: Any, **kwargs: Any) -> None:
    return None


def varlen_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, *, scaling: float | None = None,
                     dropout: float = 0.0, position_ids: Any = None, sliding_window: int | None = None,
                     softcap: float | None = None, **kwargs: Any) -> tuple[Any, None]:
    """query [B, H, L, D], key/value [B, Hkv, L, D] -> ([B, L, H, D], None), causal within each sample (and within
    ``sliding_window`` positions on a sliding layer)."""
    import torch
    import torch.nn.functional as F

    if softcap is not None:
        from hanlin.errors import ConfigurationError

        raise ConfigurationError(f"this model soft-caps its attention scores (softcap={softcap}), which hanlin's varlen "
                                 "attention does not do; set attention: model in the tune config")
    batch, heads, length, _ = query.shape
    if position_ids is None:
        position_ids = torch.arange(length, device=query.device)
    starts = position_ids.expand(batch, length).reshape(-1) == 0
    starts[::length] = True  # a sample never runs on into the next row
    bounds = [*starts.nonzero().flatten().tolist(), batch * length]
    lengths = [e - s for s, e in zip(bounds[:-1], bounds[1:])]
    # All rows flattened to [B * L, H, D] and split into samples: the backward of a split is one concatenation, the
    # output is already laid out as transformers wants it. Indexing a slice per sample made the backward zero-fill
    # a full-size gradient for every sample of every row (1% of a packed pre-training step on CPU, A/B alternated).
    gqa = heads != key.shape[1]
    q, k, v = (t.transpose(1, 2).reshape(batch * length, t.shape[1], t.shape[3]) for t in (query, key, value))
    pieces = []
    for qs, ks, vs in zip(q.split(lengths), k.split(lengths), v.split(lengths)):
        mask = window_mask(qs.shape[0], sliding_window, query.device)
        out = F.scaled_dot_product_attention(
            qs.transpose(0, 1)[None], ks.transpose(0, 1)[None], vs.transpose(0, 1)[None], attn_mask=mask,
            is_causal=mask is None, scale=scaling, dropout_p=dropout, enable_gqa=gqa)
        pieces.append(out[0].transpose(0, 1))  # [sample, H, D]
    return torch.cat(pieces).view(batch, length, heads, value.shape[3]), None


def window_mask(length: int, sliding_window: int | None, device: Any) -> Any:
    """The [length, length] boolean mask of a sliding layer (True = attend): causal, and a query sees the keys less
    than ``sliding_window`` positions behind it (itself included), transformers' ``sliding_window_overlay``. None
    when the window covers the whole sample: plain causal attention is the same and takes the fused kernels."""
    import torch

    if sliding_window is None or length <= sliding_window:
        return None
    where = torch.arange(length, device=device)
    behind = where[:, None] - where[None, :]
    return (behind >= 0) & (behind < sliding_window)


def use_varlen_attention(model: Any) -> None:
    """Register the function (once per process) and switch ``model`` to it."""
    global _registered
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    if not _registered:
        AttentionInterface.register(NAME, varlen_attention)
        ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, _no_mask)
        _registered = True
    model.set_attn_implementation(NAME)


def keep_out_of_compile() -> None:
    """Register the function wrapped in ``torch.compiler.disable`` (compile_layers.py calls this before compiling):
    its pieces change length with every packed row, so it must never become part of a graph that a new document
    layout would recompile (torch 2.13's dynamo already leaves it out, after the graph break in its loop; the wrapper
    does not rely on that). Only then, because the wrapper's first use imports torch._dynamo (1.6 s here) into every
    packed run."""
    import torch
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, torch.compiler.disable(varlen_attention))
