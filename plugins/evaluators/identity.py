"""Which model outputs are interchangeable: the identity the prediction cache keys every output on.

A name is not enough (two fine-tunes exported to folders both called ``merged``), and neither is a path (the same
folder retrained in place). The identity holds the runtime's class and a fingerprint of the weights' content, taken
the same way for every runtime: the files of an HF folder (the transformers and gpu runtimes), the GGUF file (cpu),
or the endpoint and model name (remote). A fingerprint is each file's name, size and modification time, with a hash
of small files whole (config, tokenizer, chat template) and of three samples of large ones (start, middle, end):
cheap enough for every run, and it changes when the weights do, even when a copy keeps the size and the time.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from hanlin.chat_model import ChatModel

WHOLE_BYTES = 1 << 20  # files up to this size are hashed whole: configs, tokenizers, templates
SAMPLE_BYTES = 64 << 10  # larger ones by three samples of this size


def file_fingerprint(path: Path) -> dict[str, Any]:
    """Name, size, modification time and a content hash (whole or sampled, see the module docstring)."""
    info = path.stat()
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if info.st_size <= WHOLE_BYTES:
            digest.update(f.read())
        else:
            for at in (0, (info.st_size - SAMPLE_BYTES) // 2, info.st_size - SAMPLE_BYTES):
                f.seek(at)
                digest.update(f.read(SAMPLE_BYTES))
    return {"name": path.name, "size": info.st_size, "mtime_ns": info.st_mtime_ns, "sha256": digest.hexdigest()}


def folder_fingerprint(folder: Path) -> list[dict[str, Any]]:
    """Every visible regular file directly in an HF model folder (weights, config, tokenizer), sorted by name."""
    files = sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file())
    return [file_fingerprint(p) for p in files]


def weights_fingerprint(model: ChatModel) -> dict[str, Any]:
    """Where the model's weights are and what they hold; empty for a model with none to read (a scripted one)."""
    for attribute in ("folder", "path"):  # transformers has both: the folder it loaded, the .gguf it came from
        where = getattr(model, attribute, None)
        if isinstance(where, (str, os.PathLike)) and Path(where).exists():
            where = Path(where)
            files = folder_fingerprint(where) if where.is_dir() else [file_fingerprint(where)]
            return {"weights": files}  # the content, not the path: a moved folder keeps its cached outputs
    base_url = getattr(model, "base_url", None)
    if isinstance(base_url, str):
        return {"endpoint": base_url}
    return {}


def model_identity(model: ChatModel) -> dict[str, Any]:
    """Name, backend class and the weights' fingerprint: two models with equal identities give the same outputs."""
    return {"name": model.name, "backend": f"{type(model).__module__}.{type(model).__qualname__}",
            **weights_fingerprint(model)}
