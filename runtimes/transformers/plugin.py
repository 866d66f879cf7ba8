"""Registers the `transformers` runtime: HF folders, and GGUF files converted once to HF."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from hanlin import ChatModel, ConfigurationError, ModelSpec, RuntimeSpec, hookimpl


def available() -> str | None:
    missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
    if missing:
        return f"{' and '.join(missing)} not installed: pip install 'hanlin[transformers]'"
    return None


OPTIONS = ("device", "dtype", "threads", "cache_dir")


def load(spec: ModelSpec, path: Path, **config: Any) -> ChatModel:
    unknown = sorted(set(config) - set(OPTIONS))
    if unknown:  # e.g. llama.cpp's n_ctx passed to this runtime: say so instead of a TypeError
        raise ConfigurationError(
            f"the transformers runtime does not take {', '.join(unknown)}; its options are {', '.join(OPTIONS)}"
        )
    from hanlin.runtimes.transformers.model import TransformersChatModel

    return TransformersChatModel(spec, path, **config)


@hookimpl
def register_runtimes(register: Any) -> None:
    register(
        RuntimeSpec(
            name="transformers",
            formats=frozenset({"hf", "gguf"}),
            load=load,
            available=available,
            description="transformers on torch: the reference backend (GGUF converted once to an HF folder)",
            extra="transformers",
            priority=50,
        )
    )
