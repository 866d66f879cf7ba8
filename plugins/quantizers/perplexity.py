"""Perplexity of a GGUF model on a text, through llama.cpp itself: the guard rail and the benchmark's quality column.

Why llama.cpp and not torch: the number must describe the file a user will run, with llama.cpp's own dequantizing
kernels, not a torch re-implementation of them. The text is cut into windows of ``n_ctx`` tokens; each window is
evaluated from a fresh context (BOS first where the model adds one) and every token after the window's first is
scored, so two files are compared on exactly the same tokens.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

from hanlin.errors import ConfigurationError


@dataclass(frozen=True, slots=True)
class Perplexity:
    value: float
    tokens: int  # scored tokens
    nll: float  # mean negative log-likelihood per scored token (nats)


def gguf_perplexity(model_path: str | Path, text: str, *, n_ctx: int = 512, threads: int | None = None,
                    max_tokens: int | None = None) -> Perplexity:
    """Perplexity of the GGUF file on ``text`` (at most ``max_tokens`` tokens), computed by llama.cpp.

    Remembered per (file, its size and mtime, text, settings) for the life of the process: quantizing one source
    to several types measures the source once."""
    stat = Path(model_path).stat()
    key = (str(Path(model_path).resolve()), stat.st_size, stat.st_mtime_ns, hashlib.sha256(text.encode()).hexdigest(),
           n_ctx, max_tokens)
    if key not in _MEMO:
        _MEMO[key] = _measure(model_path, text, n_ctx=n_ctx, threads=threads, max_tokens=max_tokens)
    return _MEMO[key]


_MEMO: dict[tuple[object, ...], Perplexity] = {}


def _measure(model_path: str | Path, text: str, *, n_ctx: int, threads: int | None,
             max_tokens: int | None) -> Perplexity:
    import llama_cpp
    import numpy as np

    llm = llama_cpp.Llama(model_path=str(model_path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True,
                          n_threads=threads or min(4, os.cpu_count() or 1), verbose=False, seed=0)
    try:
        ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        if max_tokens:
            ids = ids[:max_tokens]
        bos = [llm.token_bos()] if _adds_bos(llm) else []
        step = n_ctx - len(bos)
        total, count = 0.0, 0
        for start in range(0, len(ids), step):
            window = bos + ids[start:start + step]
            if len(window) - len(bos) < 2:
                break
            llm.reset()
            llm.eval(window)
            first = max(len(bos), 1)  # the first text token has nothing before it unless BOS is there
            rows = np.asarray(llm.scores[first - 1:len(window) - 1], dtype=np.float32)  # a view: no copy
            targets = np.asarray(window[first:])
            peak = rows.max(axis=1, keepdims=True)
            log_norm = np.log(np.exp(rows - peak).sum(axis=1, dtype=np.float64)) + peak[:, 0]
            total += float((log_norm - rows[np.arange(len(targets)), targets]).sum(dtype=np.float64))
            count += len(targets)
    finally:
        llm.close()
    if count == 0:
        raise ConfigurationError(f"the evaluation text is too short to score ({len(ids)} tokens); give at least a "
                                 "few sentences")
    nll = total / count
    return Perplexity(math.exp(nll), count, nll)


def _adds_bos(llm: object) -> bool:
    meta = getattr(llm, "metadata", {}) or {}
    return str(meta.get("tokenizer.ggml.add_bos_token", "false")).lower() == "true"
