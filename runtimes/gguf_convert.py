"""GGUF -> HF folder, once: transformers dequantizes a GGUF on load (~35 s for 135M), so keep the result on disk.

The cache key is the file's size plus a hash of its first and last MiB, which
tells releases apart without reading 500 MB. A lock file makes concurrent
processes wait for one conversion instead of racing, and the folder appears
under its final name only when complete (written to a temp folder, then
renamed), so a crash never leaves a half folder that later loads would trust.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from hanlin import ModelError
from hanlin.paths import cache_dir

_MIB = 1 << 20


def gguf_key(path: Path) -> str:
    """A short content key: size + sha256 of the first and last MiB (the header and the tail tensors)."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as fh:
        digest.update(fh.read(_MIB))
        fh.seek(max(0, size - _MIB))
        digest.update(fh.read(_MIB))
    return digest.hexdigest()[:16]


def converted_folder(gguf: Path, cache: Path | None = None) -> Path:
    """Where the HF folder for ``gguf`` lives (whether or not it exists yet)."""
    return (cache or cache_dir()) / "hf" / f"{gguf.stem}-{gguf_key(gguf)}"


def convert_gguf(gguf: Path, cache: Path | None = None) -> Path:
    """The HF folder for ``gguf`` under ``cache`` (default: $HANLIN_CACHE or ~/.cache/hanlin), converting it once."""
    if not gguf.is_file():
        raise ModelError(f"GGUF file {str(gguf)!r} does not exist; check the path or reinstall the model package")
    target = converted_folder(gguf, cache)
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if (target / "config.json").is_file():  # another process finished while we waited
            return target
        for stale in target.parent.glob(f".{target.name}-*"):  # left by a process killed mid-conversion
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
        try:
            _convert(gguf, tmp)
            _make_readable(tmp)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def _convert(gguf: Path, out: Path) -> None:
    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:  # transformers' GGUF reader needs it; say so, not "corrupt file"
        raise ModelError(f"reading {str(gguf)!r} with transformers needs the gguf package: pip install 'hanlin[transformers]'")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, local_files_only=True, dtype=torch.float32
        )
    except Exception as exc:
        raise ModelError(
            f"transformers could not read {str(gguf)!r} ({type(exc).__name__}: {exc}); the file may be corrupt or "
            "truncated (reinstall the model package), or its architecture unsupported by transformers' GGUF loader "
            "(use the cpu runtime: --runtime cpu)"
        ) from None
    # save_pretrained refuses a GGUF-loaded model while it still looks quantized; the weights are fp32 already.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _make_readable(folder: Path) -> None:
    """mkdtemp (and safetensors) create owner-only files; a shared cache should read like any installed model."""
    folder.chmod(0o755)
    for item in folder.iterdir():
        item.chmod(0o755 if item.is_dir() else 0o644)
