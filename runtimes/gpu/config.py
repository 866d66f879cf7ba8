"""The architecture facts the engine needs, read from an HF ``config.json``.

One dataclass for every supported family: the differences between Llama (SmolLM2), Qwen2, Gemma3 and InternLM2 are
a handful of switches (bias on q/k/v, tied embeddings, norm weight offset, embedding scale, q/k norms, sliding
window layers, activation), not separate model classes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hanlin.runtimes.gpu.rotary import Rope

SUPPORTED = {
    "LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "Gemma3ForCausalLM": "gemma3",
    "InternLM2ForCausalLM": "internlm2",
}


class UnsupportedModel(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class ModelConfig:
    family: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope: Rope
    rope_local: Rope  # Gemma3's sliding layers use their own base (the same Rope elsewhere)
    max_position: int
    tie_embeddings: bool
    qkv_bias: bool
    act: str  # "silu" or "gelu_tanh"
    norm_offset: float  # Gemma: weight stored as w - 1
    embed_scale: float  # Gemma: embeddings times sqrt(hidden)
    qk_norm: bool  # Gemma3: RMSNorm on q and k per head
    attn_scale: float
    sliding_window: int  # 0: none
    sliding_layers: tuple[bool, ...]  # per layer: does it use the window
    eos_token_ids: tuple[int, ...]

    @classmethod
    def from_folder(cls, folder: Path) -> ModelConfig:
        raw = json.loads((folder / "config.json").read_text())
        gen = folder / "generation_config.json"
        return cls.from_dict(raw, json.loads(gen.read_text()) if gen.is_file() else {})

    @classmethod
    def from_dict(cls, c: dict[str, Any], generation: dict[str, Any] | None = None) -> ModelConfig:
        arch = (c.get("architectures") or ["?"])[0]
        family = SUPPORTED.get(arch)
        if family is None:
            raise UnsupportedModel(
                f"the gpu runtime has no definition for {arch!r}; supported: {', '.join(sorted(SUPPORTED))}. "
                "Use runtime='transformers' for other architectures"
            )
        c = {**c.get("text_config", {}), **c} if family == "gemma3" and "text_config" in c else c
        heads = c["num_attention_heads"]
        hidden = c["hidden_size"]
        head_dim = c.get("head_dim") or hidden // heads
        rope, rope_local = _rope(c)
        layers = c["num_hidden_layers"]
        window = int(c.get("sliding_window") or 0)
        layer_types = c.get("layer_types")
        if family == "gemma3":
            if layer_types:
                sliding = tuple(t == "sliding_attention" for t in layer_types)
            else:
                every = int(c.get("sliding_window_pattern", 6))
                sliding = tuple((i + 1) % every != 0 for i in range(layers))
        elif family == "qwen2" and c.get("use_sliding_window") and window:
            start = int(c.get("max_window_layers", layers))
            sliding = tuple(i >= start for i in range(layers))
        else:
            sliding, window = (False,) * layers, 0
        eos = (generation or {}).get("eos_token_id", c.get("eos_token_id"))
        eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if isinstance(eos, int) else ())
        gemma = family == "gemma3"
        return cls(
            family=family, vocab_size=c["vocab_size"], hidden_size=hidden, intermediate_size=c["intermediate_size"],
            num_layers=layers, num_heads=heads, num_kv_heads=c.get("num_key_value_heads") or heads, head_dim=head_dim,
            rms_norm_eps=float(c.get("rms_norm_eps", 1e-6)), rope=rope, rope_local=rope_local,
            max_position=int(c.get("max_position_embeddings", 4096)),
            tie_embeddings=bool(c.get("tie_word_embeddings", gemma)),
            qkv_bias=family == "qwen2" or bool(c.get("attention_bias", False)) or bool(c.get("bias", False)),
            act="gelu_tanh" if gemma else "silu", norm_offset=1.0 if gemma else 0.0,
            embed_scale=hidden**0.5 if gemma else 1.0, qk_norm=gemma,
            attn_scale=float(c.get("query_pre_attn_scalar", head_dim)) ** -0.5,
            sliding_window=window, sliding_layers=sliding, eos_token_ids=eos_ids,
        )


def _rope(c: dict[str, Any]) -> tuple[Rope, Rope]:
    """(global, sliding-layer) rope from either config layout: transformers 5's ``rope_parameters`` (per layer type
    for Gemma3) or the older ``rope_theta`` + ``rope_scaling`` (+ Gemma3's ``rope_local_base_freq``)."""
    params = c.get("rope_parameters") or {}
    per_type = "full_attention" in params or "sliding_attention" in params
    full = {**(c.get("rope_scaling") or {}), **(params.get("full_attention", {}) if per_type else params)}
    theta = float(full.get("rope_theta") or c.get("rope_theta") or 10000.0)
    try:
        rope = Rope.parse(theta, full)
        if per_type and "sliding_attention" in params:
            local = params["sliding_attention"]
            rope_local = Rope.parse(float(local.get("rope_theta") or theta), local)
        elif c.get("rope_local_base_freq"):
            rope_local = Rope.parse(float(c["rope_local_base_freq"]), None)
        else:
            rope_local = rope
    except ValueError as exc:
        raise UnsupportedModel(str(exc)) from None
    return rope, rope_local
