"""Folding a LoRA adapter into a 4-bit (QLoRA) base, giving a model of plain float weights.

peft's ``merge_and_unload`` on a bitsandbytes 4-bit model adds the adapter to the dequantized weight and then
quantizes the sum again: the merged model still holds packed 4-bit weights (plus the rounding of a second
quantization), which no runtime reading "a plain HF folder" can load. Here each 4-bit linear layer is dequantized
once, the adapter's delta is added in fp32, and the layer is replaced by an ``nn.Linear`` of the sum in the model's
float dtype; every remaining 4-bit layer (one no adapter targets) is dequantized the same way, and the model forgets
its quantizer, so ``save_pretrained`` writes floats.

A 4-bit layer is recognised by its interface, not its class: a ``weight`` carrying a ``quant_state`` (what
bitsandbytes' ``Params4bit`` has). Reading the floats out of it is the ``dequantize`` function, bitsandbytes' by
default; tests pass a CPU stand-in with the same interface, since bitsandbytes needs a GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Dequantize = Callable[[Any], Any]  # a 4-bit linear layer -> its weight as a float tensor [out_features, in_features]


def is_four_bit(layer: Any) -> bool:
    return getattr(getattr(layer, "weight", None), "quant_state", None) is not None


def has_four_bit_layers(model: Any) -> bool:
    return any(is_four_bit(m) for m in model.modules())


def bnb_dequantize(layer: Any) -> Any:
    """bitsandbytes' own dequantization of a ``Linear4bit`` (NF4/FP4, double quantization included).

    On a CPU, bitsandbytes (0.48+) repacks a layer's weight into another layout at its first forward in eval mode
    and marks the quant state ``packing_format_for_cpu``; ``dequantize_4bit`` does not read that layout (it returned
    wrong floats, measured with 0.50.2), so the packing is undone first, as bitsandbytes does before saving."""
    import bitsandbytes.functional as bnbf

    data, state = layer.weight.data, layer.weight.quant_state
    if getattr(state, "packing_format_for_cpu", False):
        data, state = bnbf._convert_weight_packed_for_cpu_inverse(data, state)
    return bnbf.dequantize_4bit(data, state)


def merge_into_plain(model: Any, dequantize: Dequantize = bnb_dequantize, dtype: Any = None) -> Any:
    """The base model of ``model`` (a peft model, or a bare one) with every adapter folded in and no 4-bit layer
    left; ``dtype`` of the new layers defaults to the dtype of the input embeddings (the model's float dtype)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    dtype = dtype or base.get_input_embeddings().weight.dtype
    replaced: list[str] = []
    for name, module in list(base.named_modules()):
        if any(name.startswith(done + ".") for done in replaced):
            continue  # inside a layer already replaced (the base layer of a LoRA wrapper)
        if hasattr(module, "lora_A") and hasattr(module, "get_base_layer"):
            inner = module.get_base_layer()
            weight = _float_weight(inner, dequantize)
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    weight = weight + module.get_delta_weight(adapter).float()
        elif is_four_bit(module):
            inner, weight = module, _float_weight(module, dequantize)
        else:
            continue
        _replace(base, name, _linear(weight, getattr(inner, "bias", None), dtype))
        replaced.append(name)
    _forget_quantization(base)
    return base


def _float_weight(layer: Any, dequantize: Dequantize) -> Any:
    import torch

    with torch.no_grad():
        weight = dequantize(layer) if is_four_bit(layer) else layer.weight.detach()
    return weight.float()


def _linear(weight: Any, bias: Any, dtype: Any) -> Any:
    import torch

    out_features, in_features = weight.shape
    layer = torch.nn.Linear(in_features, out_features, bias=bias is not None, device=weight.device, dtype=dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias.detach())
    return layer


def _replace(root: Any, name: str, layer: Any) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, layer)


def _forget_quantization(model: Any) -> None:
    """The model no longer holds quantized weights: drop what makes save_pretrained write (or expect) them."""
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    for flag in ("is_loaded_in_4bit", "is_loaded_in_8bit", "is_quantized"):
        if isinstance(getattr(type(model), flag, None), property):
            continue
        if getattr(model, flag, False):
            setattr(model, flag, False)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
