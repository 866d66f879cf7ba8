"""hanlin's Triton kernels inside a transformers model being trained: every RMSNorm module's forward is swapped for
the fused kernel with its own backward (kernels/rmsnorm_train.py); the loss uses the fused cross-entropy
(losses.py). Used on CUDA by default (``kernels: auto``); on CPU only when asked, under the Triton interpreter,
which is how the swap is tested to change no numbers."""

from __future__ import annotations

from typing import Any


def patch_rmsnorm(model: Any) -> int:
    """Replace the forward of each RMSNorm module (Llama, Qwen2, Gemma3's 1 + w, InternLM2); returns how many."""
    from hanlin.kernels.rmsnorm_train import rms_norm

    patched = 0
    for module in model.modules():
        kind = type(module).__name__
        if not kind.endswith("RMSNorm") or getattr(module, "weight", None) is None:
            continue
        eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
        if eps is None:
            continue
        offset = 1.0 if "Gemma" in kind else 0.0

        def forward(hidden: Any, _module: Any = module, _eps: float = float(eps), _offset: float = offset) -> Any:
            return rms_norm(hidden, _module.weight, _eps, _offset)

        module.forward = forward
        patched += 1
    return patched
