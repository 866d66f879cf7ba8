"""The model a run trains: the base resolved and loaded (GGUF converted once to an HF folder), wrapped in a LoRA
adapter for the adapter methods, on the device and dtype the machine supports."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hanlin.errors import ConfigurationError, ModelError
from hanlin.plugins.finetuners.config import TuneConfig


@dataclass
class LoadedBase:
    model: Any
    tokenizer: Any
    folder: Path  # the HF folder of the base weights
    device: str
    dtype: Any
    source_gguf: Path | None = None  # the GGUF the base was installed as (its tokenizer goes into a GGUF export)
    spec: Any = None  # the base's ModelSpec: how it is prompted (template or plain), shared with the runtimes


def base_folder(name: str, cache_dir: Path | None = None, spec: Any = None) -> tuple[Path, Path | None]:
    """(HF folder, source GGUF or None) for a model name, alias, .gguf file or folder (a GGUF is converted once
    and cached)."""
    from hanlin.loading import resolve_model

    spec = spec or resolve_model(name)
    path = Path(spec.locate())
    if spec.format == "gguf":
        from hanlin.runtimes.gguf_convert import convert_gguf

        return convert_gguf(path, cache_dir), path
    if spec.format != "hf":
        raise ConfigurationError(f"model {name!r} is a {spec.format} model; tuning needs an HF folder or a GGUF file")
    return path, None


def pick_device(requested: str) -> str:
    import torch

    if requested != "auto":
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(requested: str, device: str) -> Any:
    """bf16 where the hardware computes in it (CUDA with bf16 support); fp32 elsewhere, since CPU bf16 without
    native support is slower than fp32 and loses precision for nothing."""
    import torch

    if requested == "float32":
        return torch.float32
    if requested == "bfloat16":
        return torch.bfloat16
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_base(config: TuneConfig, cache_dir: Path | None = None) -> LoadedBase:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if config.threads:
        torch.set_num_threads(config.threads)
    device = pick_device(config.device)
    dtype = pick_dtype(config.dtype, device)
    from hanlin.loading import resolve_model

    spec = resolve_model(config.model)
    folder, source = base_folder(config.model, cache_dir, spec)
    if config.gguf_source:
        source = Path(config.gguf_source)
    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": True}
    if config.method == "qlora":
        kwargs["quantization_config"] = _four_bit(device, dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
    except Exception as exc:
        raise ModelError(f"could not load {str(folder)!r} for tuning ({type(exc).__name__}: {exc})") from None
    if config.method != "qlora":
        model = model.to(device)
    if config.attention == "varlen":
        from hanlin.plugins.finetuners.varlen_attention import use_varlen_attention

        use_varlen_attention(model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedBase(model, tokenizer, folder, device, dtype, source, spec)


def _four_bit(device: str, dtype: Any) -> Any:
    if not device.startswith("cuda"):
        raise ConfigurationError(
            "qlora loads the base weights in 4 bits with bitsandbytes, which needs a CUDA GPU; on this machine use "
            "method: lora (same adapter, full-precision base)"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigurationError("qlora needs bitsandbytes: pip install bitsandbytes")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype)


def wrap_for_method(base: LoadedBase, config: TuneConfig) -> Any:
    """The trainable model: the base itself (full) or the base with a fresh LoRA adapter."""
    model = base.model
    if config.kernels == "triton" or (config.kernels == "auto" and base.device.startswith("cuda")
                                      and importlib.util.find_spec("triton") is not None):
        from hanlin.plugins.finetuners.fused import patch_rmsnorm

        patch_rmsnorm(model)
    if config.gradient_checkpointing:
        # transformers 5 renamed it (the old name warns); take whichever this version has
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if not config.uses_adapter:
        return model
    if importlib.util.find_spec("peft") is None:
        raise ConfigurationError(f"method {config.method} needs peft: pip install 'hanlin[tune]'")
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if config.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    lora = LoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
                      target_modules=config.lora.target_modules, task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    if config.gradient_checkpointing:
        model.enable_input_require_grads()
    return model


def trainable_parameters(model: Any) -> dict[str, Any]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}
