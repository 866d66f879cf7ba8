"""An HF model folder (config.json + safetensors + tokenizer.json) written as one GGUF file for llama.cpp.

Why this exists: a tuned model leaves training as an HF folder, but the cpu runtime (llama.cpp) runs GGUF. This
module needs only the folder: hyperparameters from config.json, weights read straight from the safetensors files
with numpy (no torch, bf16 included), and the whole tokenizer rebuilt from tokenizer.json and
tokenizer_config.json (vocabulary, token types, merges, special ids, the add-bos flag, the chat template), so the
GGUF tokenizes exactly as the HF tokenizer the model was trained with does.

Two details llama.cpp depends on:
- Rotary layout. HF's Llama rotates the two halves of each head; llama.cpp's ``llama`` architecture rotates
  interleaved pairs. The q/k projection rows (and biases) are permuted per head on the way out. Qwen2 runs in
  llama.cpp with the half layout (NEOX rope), so its weights go out as they are.
- Pre-tokenizer. llama.cpp does not read tokenizer.json's splitting rules; it picks a built-in regex by the name
  in ``tokenizer.ggml.pre``. The name is chosen from the structure of tokenizer.json's pre_tokenizer, and an
  unrecognised one is an error rather than a file that silently tokenizes differently.

The file is written beside ``out_path`` under a temporary name and renamed when complete, so a crash never
leaves a truncated GGUF that a later load would trust.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hanlin.errors import ConfigurationError


@dataclass(frozen=True, slots=True)
class _Arch:
    gguf_name: str  # llama.cpp's architecture name
    permute_qk: bool  # HF half-rotation -> llama.cpp interleaved pairs


# HF config "model_type" -> how llama.cpp runs it. Mistral checkpoints are the llama architecture in llama.cpp.
ARCHITECTURES = {
    "llama": _Arch("llama", permute_qk=True),
    "mistral": _Arch("llama", permute_qk=True),
    "qwen2": _Arch("qwen2", permute_qk=False),
}
OUTTYPES = ("f32", "f16", "bf16", "q8_0")

_GLOBAL_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)\.(weight|bias)$")

# Original regexes of the HF pre-tokenizers llama.cpp implements, as tokenizer.json spells them.
_LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPLIT_REGEXES = {_LLAMA3_REGEX: "llama-bpe", _QWEN2_REGEX: "qwen2"}

# GGUF token types (llama.cpp's llama_token_type)
_NORMAL, _USER_DEFINED, _CONTROL, _UNUSED = 1, 4, 3, 5


def export_gguf(hf_folder: str | Path, out_path: str | Path, *, outtype: str = "f16",
                source_gguf: str | Path | None = None) -> Path:
    """Write the model in ``hf_folder`` as the GGUF file ``out_path`` and return its path.

    ``outtype`` is the type of the weight matrices: f32 (exact), f16 (the default: half the size, greedy output
    as f32 on small models), bf16, or q8_0 (a quarter of f32; matrices whose rows are not a multiple of 32 stay
    f16). Norms and biases are always f32. ``source_gguf``: the GGUF the base model was installed as; its
    tokenizer block is copied as is (exact) instead of being rebuilt from tokenizer.json. Raises
    ConfigurationError for an unsupported architecture or a folder that lacks a file.
    """
    import gguf

    if outtype not in OUTTYPES:
        raise ConfigurationError(f"GGUF outtype must be one of {', '.join(OUTTYPES)}, got {outtype!r}")
    folder, out = Path(hf_folder).expanduser(), Path(out_path).expanduser()
    config, shards = _check_folder(folder)
    arch = _architecture(config, folder)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    writer = gguf.GGUFWriter(str(tmp), arch.gguf_name)
    try:
        writer.add_name(str(config.get("_model_name_or_path") or config.get("_name_or_path") or folder.name))
        writer.add_file_type(_FILE_TYPES[outtype](gguf))
        _add_hparams(writer, config)
        if source_gguf is not None:
            from hanlin.plugins.finetuners.gguf_source import copy_tokenizer

            copy_tokenizer(source_gguf, writer, config["vocab_size"])
        else:
            _add_tokenizer(writer, folder, config)
        _add_tensors(writer, config, arch, shards, outtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return out


_FILE_TYPES = {
    "f32": lambda g: g.LlamaFileType.ALL_F32,
    "f16": lambda g: g.LlamaFileType.MOSTLY_F16,
    "bf16": lambda g: g.LlamaFileType.MOSTLY_BF16,
    "q8_0": lambda g: g.LlamaFileType.MOSTLY_Q8_0,
}


# ---- the folder and its config ------------------------------------------------------------------------
def check_exportable(hf_folder: str | Path) -> None:
    """Raise the export's own error now if this model could not be written as GGUF (a tuning run asks this
    before it trains, so an unsupported architecture costs seconds, not a run)."""
    config = json.loads((Path(hf_folder) / "config.json").read_text())
    _architecture(config, Path(hf_folder))


def _check_folder(folder: Path) -> tuple[dict[str, Any], list[Path]]:
    if not folder.is_dir():
        raise ConfigurationError(f"HF model folder {str(folder)!r} does not exist; pass the merged model's folder")
    if (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file():
        raise ConfigurationError(
            f"{str(folder)!r} is a LoRA adapter, not a model: merge it into its base model first "
            "(export 'merged'), then export that folder to GGUF"
        )
    missing = [name for name in ("config.json", "tokenizer.json") if not (folder / name).is_file()]
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        missing.append("*.safetensors")
    if missing:
        raise ConfigurationError(
            f"{str(folder)!r} lacks {', '.join(missing)}: GGUF export needs an HF folder saved with "
            "save_pretrained (model and tokenizer; safetensors weights, not .bin)"
        )
    return json.loads((folder / "config.json").read_text()), shards


def _architecture(config: dict[str, Any], folder: Path) -> _Arch:
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise ConfigurationError(
            f"GGUF export supports the architectures {', '.join(ARCHITECTURES)}; {str(folder)!r} is "
            f"model_type {model_type!r} ({', '.join(config.get('architectures') or [])}). Run this model on the "
            "transformers runtime instead, or convert it with llama.cpp's convert_hf_to_gguf.py"
        )
    rope = _rope(config)
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
        raise ConfigurationError(
            f"GGUF export does not support rope scaling {rope!r} (only plain rope); export the base model's "
            "configuration without rope_scaling, or convert with llama.cpp's convert_hf_to_gguf.py"
        )
    window = config.get("sliding_window")
    uses_window = config.get("use_sliding_window", model_type == "mistral")
    if uses_window and window and window < config.get("max_position_embeddings", 0):
        raise ConfigurationError(
            f"this {model_type} model uses a sliding attention window of {window} tokens, which llama.cpp's "
            f"{ARCHITECTURES[model_type].gguf_name} architecture does not apply; GGUF export would change its outputs"
        )
    return ARCHITECTURES[model_type]


def _rope(config: dict[str, Any]) -> dict[str, Any]:
    """transformers 5 keeps rope settings in ``rope_parameters``; older configs use rope_theta / rope_scaling."""
    merged = dict(config.get("rope_scaling") or {})
    merged.update(config.get("rope_parameters") or {})
    if "rope_theta" in config:
        merged.setdefault("rope_theta", config["rope_theta"])
    return merged


def _add_hparams(writer: Any, config: dict[str, Any]) -> None:
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(hidden)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads") or heads)
    if head_dim * heads != hidden:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(_rope(config).get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_vocab_size(config["vocab_size"])


# ---- weights ------------------------------------------------------------------------------------------
def gguf_tensor_name(hf_name: str) -> str | None:
    """llama.cpp's name for an HF llama/qwen2 tensor; None for buffers llama.cpp recomputes (rotary inv_freq)."""
    if hf_name.endswith("rotary_emb.inv_freq"):
        return None
    if hf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[hf_name]
    match = _LAYER_RE.match(hf_name)
    if match and match.group(2) in _LAYER_NAMES:
        return f"blk.{match.group(1)}.{_LAYER_NAMES[match.group(2)]}.{match.group(3)}"
    raise ConfigurationError(
        f"tensor {hf_name!r} has no llama.cpp counterpart; GGUF export takes a plain (merged) llama/qwen2 "
        "checkpoint: merge LoRA adapters first and leave out extra heads"
    )


def permute_rotary(weight: Any, heads: int) -> Any:
    """Reorder each head's rows from HF's [first half | second half] to llama.cpp's interleaved pairs."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _add_tensors(writer: Any, config: dict[str, Any], arch: _Arch, shards: list[Path], outtype: str) -> None:
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    tied = bool(config.get("tie_word_embeddings", False))
    written: set[str] = set()
    for shard in shards:
        for hf_name, data in read_safetensors(shard):
            name = gguf_tensor_name(hf_name)
            if name is None or (tied and name == "output.weight"):  # tied: llama.cpp reuses token_embd
                continue
            if arch.permute_qk and ".attn_q." in name:
                data = permute_rotary(data, heads)
            elif arch.permute_qk and ".attn_k." in name:
                data = permute_rotary(data, kv_heads)
            _add_tensor(writer, name, data, outtype)
            written.add(name)
    if not tied and "output.weight" not in written:
        raise ConfigurationError(
            "config.json says the output projection is not tied to the embeddings (tie_word_embeddings false) "
            "but the safetensors hold no lm_head.weight; re-save the model with save_pretrained"
        )
    if "token_embd.weight" not in written:
        raise ConfigurationError("the safetensors hold no model.embed_tokens.weight; is this a causal LM folder?")


def _add_tensor(writer: Any, name: str, data: Any, outtype: str) -> None:
    import gguf
    import numpy as np

    data = np.ascontiguousarray(data, dtype=np.float32)
    if data.ndim == 1 or outtype == "f32":
        writer.add_tensor(name, data)
    elif outtype == "f16" or (outtype == "q8_0" and data.shape[-1] % 32):
        writer.add_tensor(name, data.astype(np.float16))
    else:
        qtype = gguf.GGMLQuantizationType.Q8_0 if outtype == "q8_0" else gguf.GGMLQuantizationType.BF16
        writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)


def read_safetensors(path: Path) -> Iterator[tuple[str, Any]]:
    """(name, float32-convertible array) for each tensor, memory-mapped; bf16 is widened to float32 exactly.

    Read with numpy rather than torch because numpy has no bfloat16 and torch is not needed otherwise.
    """
    import numpy as np

    with path.open("rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(size))
    blob = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + size)
    kinds = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in kinds:
            raise ConfigurationError(
                f"tensor {name!r} in {path.name} is {info['dtype']}; GGUF export reads float weights only "
                "(dequantize or merge the model in float16/bfloat16/float32 first)"
            )
        start, end = info["data_offsets"]
        raw = blob[start:end].view(kinds[info["dtype"]]).reshape(info["shape"])
        if info["dtype"] == "BF16":
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        yield name, raw


# ---- tokenizer ----------------------------------------------------------------------------------------
def _add_tokenizer(writer: Any, folder: Path, config: dict[str, Any]) -> None:
    spec = json.loads((folder / "tokenizer.json").read_text())
    tok_config_file = folder / "tokenizer_config.json"
    tok_config = json.loads(tok_config_file.read_text()) if tok_config_file.is_file() else {}
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise ConfigurationError(
            f"GGUF export writes byte-level BPE (gpt2-style) tokenizers; {folder / 'tokenizer.json'} has a "
            f"{model.get('type')!r} model. Convert this model with llama.cpp's convert_hf_to_gguf.py"
        )
    tokens, types, ids = _vocabulary(spec, config["vocab_size"])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(spec.get("pre_tokenizer")))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])])
    for role, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                      ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
        token_id = _special_id(role, tok_config, config, ids)
        if token_id is not None:
            add(token_id)
    add_bos, add_eos = _adds_specials(spec, tok_config, ids)
    writer.add_add_bos_token(add_bos)
    writer.add_add_eos_token(add_eos)
    template = chat_template(folder, tok_config)
    if template is not None:
        writer.add_chat_template(template)


def _vocabulary(spec: dict[str, Any], vocab_size: int) -> tuple[list[str], list[int], dict[str, int]]:
    """Token strings and types for ids 0..vocab_size-1 (ids the tokenizer lacks become unused [PADn] slots)."""
    ids: dict[str, int] = dict(spec["model"]["vocab"])
    types = {i: _NORMAL for i in ids.values()}
    for added in spec.get("added_tokens", []):
        ids[added["content"]] = added["id"]
        types[added["id"]] = _CONTROL if added.get("special") else _USER_DEFINED
    if ids and max(ids.values()) >= vocab_size:
        raise ConfigurationError(
            f"the tokenizer has token id {max(ids.values())} but config.json's vocab_size is {vocab_size}: "
            "resize the model's embeddings to the tokenizer (model.resize_token_embeddings) before exporting"
        )
    by_id = {i: text for text, i in ids.items()}
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(vocab_size)]
    return tokens, [types.get(i, _UNUSED) for i in range(vocab_size)], ids


def pre_tokenizer_name(pre: dict[str, Any] | None) -> str:
    """The llama.cpp pre-tokenizer whose splitting matches tokenizer.json's ``pre_tokenizer`` block."""
    steps = pre.get("pretokenizers", []) if pre and pre.get("type") == "Sequence" else [pre] if pre else []
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"  # StarCoder-style: every digit alone, then the GPT-2 regex (SmolLM, SmolLM2)
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        regex = (steps[0].get("pattern") or {}).get("Regex")
        if regex in _SPLIT_REGEXES:
            return _SPLIT_REGEXES[regex]
    raise ConfigurationError(
        f"tokenizer.json's pre-tokenizer {json.dumps(pre)[:300]} is not one GGUF export knows how to name for "
        "llama.cpp (known: GPT-2 byte level, SmolLM digits + byte level, Llama 3 and Qwen2 regex splits); "
        "convert this model with llama.cpp's convert_hf_to_gguf.py"
    )


def _special_id(role: str, tok_config: dict[str, Any], config: dict[str, Any], ids: dict[str, int]) -> int | None:
    """The id of the bos/eos/unk/pad token: the tokenizer's own setting first, then config.json's id."""
    value = tok_config.get(f"{role}_token")
    if isinstance(value, dict):  # older tokenizer_config files store AddedToken objects
        value = value.get("content")
    if isinstance(value, str) and value in ids:
        return ids[value]
    token_id = config.get(f"{role}_token_id")
    if isinstance(token_id, list):  # some configs list several eos ids; llama.cpp takes one
        token_id = token_id[0] if token_id else None
    return token_id if isinstance(token_id, int) else None


def _adds_specials(spec: dict[str, Any], tok_config: dict[str, Any], ids: dict[str, int]) -> tuple[bool, bool]:
    """Whether encoding adds bos / eos, read from what the HF tokenizer actually does: its post-processor.

    tokenizer_config's add_bos_token / add_eos_token win when set, as they do in transformers.
    """
    single: list[dict[str, Any]] = []
    post = spec.get("post_processor") or {}
    for step in post.get("processors", [post]):
        if step.get("type") == "TemplateProcessing":
            single = step.get("single", [])
    specials = [piece["SpecialToken"]["id"] if "SpecialToken" in piece else None for piece in single]
    bos = _special_id("bos", tok_config, {}, ids)
    eos = _special_id("eos", tok_config, {}, ids)
    starts = bool(specials) and specials[0] is not None and (bos is None or ids.get(specials[0]) == bos)
    ends = bool(specials) and specials[-1] is not None and (eos is None or ids.get(specials[-1]) == eos)
    add_bos, add_eos = tok_config.get("add_bos_token"), tok_config.get("add_eos_token")
    return (add_bos if isinstance(add_bos, bool) else starts), (add_eos if isinstance(add_eos, bool) else ends)


def chat_template(folder: Path, tok_config: dict[str, Any]) -> str | None:
    """The default chat template: tokenizer_config.json's, else chat_template.jinja (transformers 5 saves it so)."""
    template = tok_config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {item.get("name"): item.get("template") for item in template if isinstance(item, dict)}
        template = named.get("default")
    if isinstance(template, str) and template:
        return template
    jinja = folder / "chat_template.jinja"
    return jinja.read_text() if jinja.is_file() else None
