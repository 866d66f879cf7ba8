"""Registers the `cpu` runtime: GGUF models on llama.cpp (llama-cpp-python)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from hanlin import ChatModel, ModelSpec, RuntimeSpec, hookimpl


def available() -> str | None:
    if importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python is not installed: pip install 'hanlin[cpu]'"
    return None


def load(spec: ModelSpec, path: Path, **config: Any) -> ChatModel:
    from hanlin.runtimes.cpu.llama_model import LlamaChatModel

    return LlamaChatModel(spec, path, **config)



@hookimpl
def register_runtimes(register: Any) -> None:
    register(
        RuntimeSpec(
            name="cpu",
            formats=frozenset({"gguf"}),
            load=load,
            available=available,
            description="llama.cpp via llama-cpp-python: GGUF models, grammars, KV prefix reuse",
            extra="cpu",
            priority=10,
        )
    )


@hookimpl
def register_commands(cli: Any) -> None:
    from hanlin.runtimes.cpu.cli import add_commands

    add_commands(cli)
