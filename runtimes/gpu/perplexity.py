"""Perplexity of an HF folder through the gpu engine (any device; torch reference ops on CPU): the quality
number for W4A16 folders and the int8 KV cache, measured by the code that serves them.

The text is cut into windows of ``window`` tokens, each scored from an empty cache (every token after the
window's first), so two configurations are compared on exactly the same tokens.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def engine_perplexity(folder: str | Path, text: str, *, window: int = 256, max_tokens: int = 2048,
                      **engine_options: Any) -> tuple[float, int]:
    """(perplexity, scored tokens) of ``text`` under the model in ``folder``; ``engine_options`` go to Engine
    (e.g. kv_cache_dtype="int8"); defaults: fp32 and the torch kernels on CPU."""
    from transformers import AutoTokenizer

    from hanlin.runtimes.gpu.engine import Engine

    ids = AutoTokenizer.from_pretrained(str(folder))(text).input_ids[:max_tokens]
    if len(ids) < 2:
        raise ValueError(f"the evaluation text has {len(ids)} tokens; give it at least two")
    options = {"kernels": "torch", "dtype": "float32", "device": "cpu", "num_blocks": 64, **engine_options}
    engine = Engine(folder, max_batch_tokens=max(window, 256), max_model_len=window, **options)
    requests = [(ids[i : i + window], 1) for i in range(0, len(ids) - 1, window) if len(ids[i : i + window]) > 1]
    logps = [lp for scored in engine.score(requests) for lp in scored]
    return math.exp(-sum(logps) / len(logps)), len(logps)
