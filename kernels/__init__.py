"""Optimized kernels owned by the runtimes. Imports nothing from the rest of hanlin.

One kernel per module, Liger-style: ``<name>`` launches the Triton kernel, ``<name>_ref`` is the plain-torch
reference it is tested against. Triton runs on CUDA tensors, and on CPU tensors when ``TRITON_INTERPRET=1`` is set
before the first import of a kernel module (that is how CI, which has no GPU, checks every kernel). Callers that
have neither use the references.
"""

from __future__ import annotations

import os

__all__ = ["triton_available", "use_triton"]


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
