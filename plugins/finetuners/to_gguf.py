"""A merged HF folder written as a GGUF file the cpu runtime (llama.cpp) runs.

Hyperparameters and weights come from the HF folder; the tokenizer (vocabulary, merges, token types, the
pre-tokenizer name llama.cpp selects its splitting rules by, special ids, chat template) is copied from the GGUF
the base model was installed as. Tuning changes weights, never the tokenizer, and copying the source's own
tokenizer block is exact where rebuilding it from tokenizer.json would have to guess the pre-tokenizer.

llama.cpp's llama architecture applies rotary embeddings to interleaved pairs while HF's Llama rotates halves,
so q/k weights are permuted on the way out (transformers undoes the same permutation when it reads a GGUF).
Qwen2 uses the half-rotation layout natively and needs no permutation. Norms stay fp32, matrices take the
requested type.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hanlin.errors import ConfigurationError

ARCHS = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}
OUTTYPES = ("f32", "f16", "q8_0")


def _permute(weight: Any, heads: int) -> Any:
    """HF's half-split rotary layout -> llama.cpp's interleaved pairs, per head."""
    rows, cols = weight.shape
    return weight.reshape(heads, 2, rows // heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def export_gguf(hf_folder: str | Path, out_path: str | Path, *, source_gguf: str | Path, outtype: str = "f16") -> Path:
    """Write ``out_path`` from the HF folder, with the tokenizer of ``source_gguf``; returns the path."""
    import gguf
    import numpy as np
    import torch
    from safetensors import safe_open

    folder, out = Path(hf_folder), Path(out_path)
    if outtype not in OUTTYPES:
        raise ConfigurationError(f"GGUF type must be one of {', '.join(OUTTYPES)}, got {outtype!r}")
    config_file = folder / "config.json"
    shards = sorted(folder.glob("*.safetensors"))
    if not config_file.is_file() or not shards:
        raise ConfigurationError(f"{folder} is not an HF model folder (config.json and *.safetensors needed)")
    config = json.loads(config_file.read_text())
    arch_name = next((ARCHS[a] for a in config.get("architectures", []) if a in ARCHS), None)
    if arch_name is None:
        raise ConfigurationError(f"GGUF export supports {', '.join(sorted(ARCHS))}; this model is "
                                 f"{config.get('architectures')}")
    source = gguf.GGUFReader(str(source_gguf))
    n_layers, heads = config["num_hidden_layers"], config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads", heads)
    hidden = config["hidden_size"]
    arch = gguf.MODEL_ARCH.LLAMA if arch_name == "llama" else gguf.MODEL_ARCH.QWEN2
    names = gguf.get_tensor_name_map(arch, n_layers)

    writer = gguf.GGUFWriter(str(out), arch_name)
    writer.add_name(folder.name)
    writer.add_context_length(config.get("max_position_embeddings", 2048))
    writer.add_embedding_length(hidden)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(config.get("head_dim") or hidden // heads)
    writer.add_rope_freq_base(float(config.get("rope_theta", (config.get("rope_parameters") or {}).get("rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                          "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype])
    _copy_tokenizer(source, writer, config["vocab_size"])

    tied = config.get("tie_word_embeddings", False)
    for shard in shards:
        with safe_open(str(shard), framework="pt") as fh:
            for name in fh.keys():
                if tied and name == "lm_head.weight":
                    continue
                target = names.get_name(name, try_suffixes=(".weight", ".bias"))
                if target is None:
                    raise ConfigurationError(f"no GGUF name for weight {name!r} of a {arch_name} model")
                tensor = fh.get_tensor(name).to(torch.float32)
                if arch_name == "llama" and name.endswith("q_proj.weight"):
                    tensor = _permute(tensor, heads)
                elif arch_name == "llama" and name.endswith("k_proj.weight"):
                    tensor = _permute(tensor, kv_heads)
                data = tensor.numpy()
                if data.ndim == 1 or outtype == "f32":
                    writer.add_tensor(target, data.astype(np.float32))
                elif outtype == "f16":
                    writer.add_tensor(target, data.astype(np.float16))
                else:
                    quantized = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
                    writer.add_tensor(target, quantized, raw_shape=quantized.shape,
                                      raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def _copy_tokenizer(source: Any, writer: Any, vocab_size: int) -> None:
    """Every ``tokenizer.*`` field of the source GGUF, checked against the model's vocabulary size."""
    import gguf

    tokens = source.fields.get("tokenizer.ggml.tokens")
    if tokens is None:
        raise ConfigurationError("the source GGUF has no tokenizer to copy")
    if len(tokens.data) != vocab_size:
        raise ConfigurationError(f"the source GGUF's vocabulary has {len(tokens.data)} tokens but the model has "
                                 f"{vocab_size}: export from the GGUF this model was tuned from")
    for key, field in source.fields.items():
        if not key.startswith("tokenizer."):
            continue
        kind = field.types[0]
        value = field.contents()
        if kind == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(key, value, kind, sub_type=field.types[-1])
        else:
            writer.add_key_value(key, value, kind)
