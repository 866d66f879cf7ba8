"""The tokenizer block of the GGUF a base model was installed as, for a GGUF export of its tuned version.

Tuning changes weights, never the tokenizer, so copying the source's own ``tokenizer.*`` fields is exact: the
pre-tokenizer name llama.cpp picks its splitting rules by comes through as written, where rebuilding it from an
HF folder (gguf_export) must infer it, and transformers' GGUF->HF conversion does not keep every rule (SmolLM2's
digit splitting becomes plain byte-level splitting in the converted folder).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hanlin.errors import ConfigurationError


def copy_tokenizer(source_gguf: str | Path, writer: Any, vocab_size: int) -> None:
    """Every ``tokenizer.*`` field of ``source_gguf`` into ``writer``, checked against the model's vocabulary."""
    import gguf

    source = gguf.GGUFReader(str(source_gguf))
    tokens = source.fields.get("tokenizer.ggml.tokens")
    if tokens is None:
        raise ConfigurationError(f"{source_gguf} has no tokenizer to copy")
    if len(tokens.data) != vocab_size:
        raise ConfigurationError(f"{source_gguf}'s vocabulary has {len(tokens.data)} tokens but the model has "
                                 f"{vocab_size}: export with the GGUF this model was tuned from")
    for key, field in source.fields.items():
        if not key.startswith("tokenizer."):
            continue
        kind = field.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(key, field.contents(), kind, sub_type=field.types[-1])
        else:
            writer.add_key_value(key, field.contents(), kind)
