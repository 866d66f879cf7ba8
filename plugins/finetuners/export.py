"""What a run leaves behind: the adapter folder, a merged HF folder, and a GGUF file the CPU runtime runs.

Layout of the output folder (so ``hanlin run --model OUT`` finds the GGUF at its top level)::

    OUT/adapter/       LoRA adapter + tokenizer (peft format)
    OUT/merged/        the base with the adapter folded in: a plain HF folder any runtime loads
    OUT/model.gguf     the merged model for llama.cpp
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from hanlin.errors import ConfigurationError
from hanlin.plugins.finetuners.qlora_merge import Dequantize, bnb_dequantize, has_four_bit_layers, merge_into_plain

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                    "chat_template.jinja", "vocab.json", "merges.txt")


def save_adapter(model: Any, tokenizer: Any, out: Path, templated: bool = True) -> Path:
    if not hasattr(model, "peft_config"):
        raise ConfigurationError("this run trained the full model: there is no adapter to save; export 'merged'")
    target = out / "adapter"
    model.save_pretrained(str(target))
    save_tokenizer(tokenizer, target, templated)
    return target


def save_tokenizer(tokenizer: Any, target: Path, templated: bool = True) -> None:
    """The tokenizer, without its chat template when the run trained on the plain layout (a base model whose spec
    says ``chat_template=False``): a runtime serving the exported folder then decides plain as training did,
    instead of prompting the tuned model through a template it never saw."""
    tokenizer.save_pretrained(str(target))
    if templated:
        return
    (target / "chat_template.jinja").unlink(missing_ok=True)
    config = target / "tokenizer_config.json"
    if config.is_file():
        data = json.loads(config.read_text())
        if data.pop("chat_template", None) is not None:
            config.write_text(json.dumps(data, indent=2, ensure_ascii=False))


def merged_model(model: Any, dequantize: Dequantize | None = None) -> Any:
    """The model with any LoRA adapter folded into the base weights (a copy-free merge: the adapter is gone after).
    A 4-bit (QLoRA) base is dequantized first and merged in fp32 (qlora_merge.py): peft's own merge would quantize
    the sum again. ``dequantize`` reads a 4-bit layer's floats (default: bitsandbytes)."""
    if has_four_bit_layers(model):
        return merge_into_plain(model, dequantize or bnb_dequantize)
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model


def save_merged(model: Any, tokenizer: Any, base_folder: Path, out: Path, templated: bool = True) -> Path:
    _check_plain(model)
    target = out / "merged"
    if target.exists():
        shutil.rmtree(target)
    model.save_pretrained(str(target))
    save_tokenizer(tokenizer, target, templated)
    for name in ("generation_config.json",):  # keep the base's generation defaults (eos ids) when it had them
        if (base_folder / name).is_file() and not (target / name).is_file():
            shutil.copy2(base_folder / name, target / name)
    _drop_quantization(target)
    return target


def _check_plain(model: Any) -> None:
    """The merged folder promises plain float weights; a packed (integer) tensor there would load as garbage."""
    packed = [(name, p.dtype) for name, p in model.named_parameters() if not p.is_floating_point()]
    if packed:
        raise ConfigurationError(
            f"the merged model still holds {len(packed)} quantized (non-float) weights, e.g. {packed[0][0]!r} "
            f"({packed[0][1]}); merge with export.merged_model, which dequantizes a 4-bit base, or export only the "
            "adapter"
        )


def _drop_quantization(folder: Path) -> None:
    """A base converted from GGUF may carry a quantization_config; the merged weights are plain floats."""
    config = folder / "config.json"
    data = json.loads(config.read_text())
    if data.pop("quantization_config", None) is not None:
        config.write_text(json.dumps(data, indent=2))


def save_gguf(merged_folder: Path, out: Path, outtype: str, source_gguf: Path | None) -> Path:
    """The tokenizer comes from the base's own GGUF when there is one (exact), else from the folder."""
    from hanlin.plugins.finetuners.gguf_export import export_gguf

    return export_gguf(merged_folder, out / "model.gguf", source_gguf=source_gguf, outtype=outtype)


def export_all(model: Any, tokenizer: Any, base_folder: Path, out: Path, kinds: list[str], gguf_type: str,
               source_gguf: Path | None = None, templated: bool = True) -> dict[str, Path]:
    """Write every requested artifact; the adapter first (merging consumes it), then the merged folder, then GGUF.
    ``templated``: whether the run trained through the chat template (False: the plain layout, kept by dropping
    the template from the exported tokenizers)."""
    written: dict[str, Path] = {}
    if "adapter" in kinds:
        written["adapter"] = save_adapter(model, tokenizer, out, templated)
    if "merged" in kinds or "gguf" in kinds:
        merged = merged_model(model)
        written["merged"] = save_merged(merged, tokenizer, base_folder, out, templated)
        if "gguf" in kinds:
            written["gguf"] = save_gguf(written["merged"], out, gguf_type, source_gguf)
    return written
