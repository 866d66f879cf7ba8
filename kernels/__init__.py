"""Optimized kernels owned by the runtimes. Imports nothing from the rest of hanlin.

One kernel per module, Liger-style: ``<name>`` launches the Triton kernel, ``<name>_ref`` is the plain-torch
reference it is tested against. Triton runs on CUDA tensors, and on CPU tensors when ``TRITON_INTERPRET=1`` is set
before the first import of a kernel module (that is how CI, which has no GPU, checks every kernel). Callers that
have neither use the references.
"""

from __future__ import annotations

import os

__all__ = ["TOLERANCES", "triton_available", "use_triton"]

# How far a kernel may be from its torch reference, (atol, rtol) per dtype: the one place the tests, `hanlin bench
# kernels` and tests/gpu_check.sh take them from. fp32: both sides compute in fp32 (tensor-core dots are asked
# for "ieee", not TF32), so only the order of sums and Triton's fast exp differ (~1e-6). fp16 / bf16: about one
# rounding step of the output (2^-11, 2^-8 relative), since kernels and references both round the result once.
TOLERANCES: dict[str, tuple[float, float]] = {
    "float32": (1e-5, 1e-5),
    "float16": (2e-3, 2e-3),
    "bfloat16": (1.6e-2, 1.6e-2),
}


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def use_triton(tensor: object) -> bool:
    """Whether the Triton path can run on this tensor: a CUDA tensor, or any tensor under the interpreter."""
    if not triton_available():
        return False
    return bool(getattr(tensor, "is_cuda", False)) or os.environ.get("TRITON_INTERPRET") == "1"
