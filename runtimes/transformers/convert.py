"""GGUF -> HF folder, once: transformers dequantizes a GGUF on load (slow), so keep the result on disk.

The cache key is the file's size plus a hash of its first and last MiB, which
tells releases apart without reading 500 MB. A lock file makes concurrent
processes wait for one conversion instead of racing, and the folder appears
under its final name only when complete.
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
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as fh:
        digest.update(fh.read(_MIB))
        fh.seek(max(0, size - _MIB))
        digest.update(fh.read(_MIB))
    return digest.hexdigest()[:16]


def converted_folder(gguf: Path) -> Path:
    return cache_dir() / "hf" / f"{gguf.stem}-{gguf_key(gguf)}"


def convert_gguf(gguf: Path) -> Path:
    """The HF folder for ``gguf``, converting it the first time."""
    target = converted_folder(gguf)
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "config.json").is_file():  # another process finished while we waited
            return target
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
        try:
            _convert(gguf, tmp)
            os.replace(tmp, target)
        except Exception:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def _convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, local_files_only=True, dtype=torch.float32
        )
    except Exception as exc:
        raise ModelError(
            f"transformers could not read {str(gguf)!r} ({type(exc).__name__}: {exc}); the file may be corrupt or "
            "its architecture unsupported by transformers' GGUF loader"
        ) from None
    # save_pretrained refuses a GGUF-loaded model while it still looks quantized; the weights are fp32 already.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
