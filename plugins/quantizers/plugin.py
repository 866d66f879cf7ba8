"""Registers the GGUF quantization types (llama.cpp's own quantizer) and the ``hanlin quantize`` command.

Each method is a ``ComponentSpec`` in the ``quantizers`` kind whose factory takes no arguments and returns a
``Quantizer`` (base.py); the command looks the method up by its ``--to`` name, so another plugin (the gpu
runtime's AWQ W4A16) adds a method by registering one more spec. Nothing heavy is imported until a run starts.
"""

from __future__ import annotations

from typing import Any

from hanlin import ComponentSpec, hookimpl

# name -> what it is; the llama.cpp file type is looked up in gguf.py (llama_cpp imported only when run)
GGUF_TYPES = {
    "q4_k_m": "llama.cpp Q4_K_M: 4-bit k-quants, attention-v and ffn-down halves at Q6_K (~4.8 bits/weight)",
    "q5_k_m": "llama.cpp Q5_K_M: 5-bit k-quants, some tensors at Q6_K (~5.7 bits/weight)",
    "q6_k": "llama.cpp Q6_K: 6-bit k-quants (~6.6 bits/weight)",
    "q8_0": "llama.cpp Q8_0: 8-bit blocks of 32 (~8.5 bits/weight), near lossless",
    "q4_0": "llama.cpp Q4_0: legacy 4-bit blocks of 32 (~4.5 bits/weight)",
}


def _gguf_factory(name: str) -> Any:
    def make() -> Any:
        from hanlin.plugins.quantizers.gguf import GGUFQuantizer

        return GGUFQuantizer(name)

    return make


@hookimpl
def register_quantizers(register: Any) -> None:
    for name, description in GGUF_TYPES.items():
        register(ComponentSpec(name=name, factory=_gguf_factory(name), description=description))
    register(ComponentSpec(name="awq-w4", factory=lambda: __import__("hanlin.plugins.quantizers.awq", fromlist=["_"]).AWQQuantizer(), description="AWQ W4A16 for the gpu runtime: int4 weights, group 128, zero points, activation-aware scales from --calib"))  # noqa: E501


@hookimpl
def register_commands(cli: Any) -> None:
    from hanlin.plugins.quantizers.cli import add_commands

    add_commands(cli)
