"""Token losses computed only where there is a target.

The output head is applied to the hidden states of target positions only, in chunks: with SmolLM2's 49k-word
vocabulary the full logits of a 4 x 1024 batch are 800 MB in fp32, most of them for prompt tokens that have no
target. Same numbers as the model's own loss, a fraction of the memory.
"""

from __future__ import annotations

from typing import Any

from hanlin.plugins.finetuners.render import IGNORE

CHUNK = 2048  # target positions per head application


def hidden_states(model: Any, batch: dict[str, Any]) -> Any:
    decoder = model.get_decoder()
    out = decoder(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def _logits(model: Any, hidden: Any) -> Any:
    logits = model.get_output_embeddings()(hidden).float()
    cap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    if cap:
        import torch

        logits = torch.tanh(logits / cap) * cap
    return logits


def token_loss_sum(model: Any, batch: dict[str, Any], fused: bool | None = None) -> tuple[Any, int]:
    """(sum of cross-entropy over target tokens, number of target tokens) for one micro-batch. ``fused``: use the
    Triton cross-entropy (default: on CUDA)."""
    import torch
    import torch.nn.functional as F

    hidden = hidden_states(model, batch)
    targets = batch["targets"].to(hidden.device)
    where = targets != IGNORE
    picked, wanted = hidden[where], targets[where]
    total = hidden.new_zeros((), dtype=torch.float32)
    fused = _fused_cross_entropy(model, hidden, fused)
    for i in range(0, picked.shape[0], CHUNK):
        logits = _logits(model, picked[i : i + CHUNK])
        if fused is not None:
            total = total + fused(logits, wanted[i : i + CHUNK])
        else:
            total = total + F.cross_entropy(logits, wanted[i : i + CHUNK], reduction="sum")
    return total, int(wanted.numel())


def _fused_cross_entropy(model: Any, hidden: Any, wanted: bool | None) -> Any:
    """The Triton kernel where asked (default: CUDA); torch's cross-entropy elsewhere. Not after logit
    soft-capping: the kernel overwrites the logits, which tanh's backward would read."""
    import importlib.util

    if wanted is None:
        wanted = hidden.is_cuda
    capped = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    if not wanted or capped or importlib.util.find_spec("triton") is None:
        return None
    from hanlin.kernels.cross_entropy import cross_entropy

    return cross_entropy


def sequence_logprobs(model: Any, batch: dict[str, Any]) -> Any:
    """Sum of target-token log-probabilities per row (DPO's log pi(reply | prompt)), shape [rows]."""
    import torch

    hidden = hidden_states(model, batch)
    targets = batch["targets"].to(hidden.device)
    sums = []
    for row in range(hidden.shape[0]):
        where = targets[row] != IGNORE
        logits = _logits(model, hidden[row][where])
        logp = torch.log_softmax(logits, dim=-1).gather(1, targets[row][where][:, None])[:, 0]
        sums.append(logp.sum())
    return torch.stack(sums)
