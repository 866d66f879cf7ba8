"""Registers the `remote` runtime. It is the scale-out path: point hanlin at a vLLM or LMDeploy cluster."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from hanlin import ChatModel, ModelSpec, RuntimeSpec, hookimpl


def available() -> str | None:
    if importlib.util.find_spec("httpx") is None:
        return "httpx is not installed: pip install 'hanlin[remote]'"
    return None


def load(spec: ModelSpec, path: Path | None, **config: Any) -> ChatModel:
    from hanlin.runtimes.remote.client import RemoteChatModel

    return RemoteChatModel(spec.name, **config)


@hookimpl
def register_runtimes(register: Any) -> None:
    register(
        RuntimeSpec(
            name="remote",
            formats=frozenset({"remote"}),
            load=load,
            available=available,
            description="any OpenAI-compatible endpoint (base_url=..., api_key=...)",
            extra="remote",
            priority=90,
            accepts_any_name=True,
        )
    )
