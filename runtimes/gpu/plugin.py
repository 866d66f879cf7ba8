"""Registers the `gpu` runtime: hanlin's own engine for HF-format models (and GGUF converted once to HF)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from hanlin import ChatModel, ConfigurationError, ModelSpec, RuntimeSpec, hookimpl

OPTIONS = ("device", "dtype", "kernels", "block_size", "num_blocks", "cache_memory", "memory_fraction",
           "max_batch_tokens", "max_seqs", "max_model_len", "decode_graphs", "cache_dir", "kv_cache_dtype")


def available() -> str | None:
    missing = [m for m in ("torch", "transformers", "safetensors") if importlib.util.find_spec(m) is None]
    if missing:
        return f"{' and '.join(missing)} not installed: pip install 'hanlin[gpu]'"
    return None



def load(spec: ModelSpec, path: Path, **config: Any) -> ChatModel:
    unknown = sorted(set(config) - set(OPTIONS))
    if unknown:
        raise ConfigurationError(f"the gpu runtime does not take {', '.join(unknown)}; its options are {', '.join(OPTIONS)}")
    from hanlin.runtimes.gpu.chat_model import GpuChatModel

    return GpuChatModel(spec, path, **config)


@hookimpl
def register_runtimes(register: Any) -> None:
    register(RuntimeSpec(
        name="gpu", formats=frozenset({"hf", "gguf"}), load=load, available=available,
        description="hanlin's engine: paged KV cache, continuous batching, prefix caching, Triton kernels on GPU "
                    "(torch reference kernels on CPU: correct but slow)",
        extra="gpu", priority=60,  # never the automatic pick on its own: ask for it with runtime="gpu"
    ))


@hookimpl
def register_commands(cli: Any) -> None:
    from hanlin.runtimes.gpu.cli import add_commands

    add_commands(cli)
