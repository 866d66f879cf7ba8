"""The perplexity filter: score each document with a small causal language model (an HF folder: SmolLM2 converted
by hanlin, a model `hanlin pretrain` wrote, ...) and drop text the model finds too surprising (noise, spam,
boilerplate lists), or, with ``min_perplexity``, too predictable (repeated templates). CCNet does this with KenLM;
here any causal LM hanlin can load serves, and the score goes into metadata either way so thresholds can be set
from the report. Put it last among the filters: it is by far the slowest block.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from hanlin.errors import ConfigurationError
from hanlin.plugins.data.document import Document, Filter

_MODELS: dict[str, tuple[Any, Any]] = {}


def load_scorer(path: str) -> tuple[Any, Any]:
    """(model, tokenizer) from an HF folder, in eval mode on the CPU, loaded once per process."""
    if path not in _MODELS:
        folder = Path(os.path.expanduser(path))
        if not (folder / "config.json").is_file():
            raise ConfigurationError(f"perplexity: {path!r} is not an HF model folder (no config.json); convert a "
                                     "GGUF with hanlin's converter or point at a `hanlin pretrain` output")
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError:
            raise ConfigurationError("the perplexity filter needs torch and transformers: "
                                     "pip install 'hanlin[transformers]'") from None
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        model.eval()
        _MODELS[path] = (model, AutoTokenizer.from_pretrained(folder))
    return _MODELS[path]


def perplexity(model: Any, tokenizer: Any, text: str, max_tokens: int) -> float:
    """exp(mean next-token negative log-likelihood) over the first ``max_tokens`` tokens of ``text``."""
    import torch

    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[:, :max_tokens]
    if ids.shape[1] < 2:
        return float("inf")
    with torch.inference_mode():
        loss = model(input_ids=ids, labels=ids).loss
    return math.exp(float(loss))


class PerplexityFilter(Filter):
    """Keep documents whose perplexity under ``model`` is within [min_perplexity, max_perplexity]."""

    name = "perplexity"

    def __init__(self, model: str, max_perplexity: float | None = None, min_perplexity: float | None = None,
                 max_tokens: int = 512, threads: int | None = None) -> None:
        super().__init__()
        if max_perplexity is None and min_perplexity is None:
            raise ConfigurationError("perplexity: give max_perplexity and/or min_perplexity")
        self.model_path, self.max_ppl, self.min_ppl = str(model), max_perplexity, min_perplexity
        self.max_tokens, self.threads = max_tokens, threads

    def reason(self, doc: Document) -> str | None:
        model, tokenizer = load_scorer(self.model_path)
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        ppl = perplexity(model, tokenizer, doc.text, self.max_tokens)
        doc.metadata["perplexity"] = round(ppl, 3)
        if self.max_ppl is not None and ppl > self.max_ppl:
            return f"perplexity above {self.max_ppl}"
        if self.min_ppl is not None and ppl < self.min_ppl:
            return f"perplexity below {self.min_ppl}"
        return None
