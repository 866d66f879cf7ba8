"""What a pre-training run is: one pydantic model (from YAML, a dict or flags), checked before anything loads, and
the llama-architecture config a from-scratch model is built from.

A pre-training run shares the finetuners' trainer, checkpoints and export; ``to_tune_config`` maps it onto the
``TuneConfig`` that loop reads (method ``full``), so there is one loop, not two. The architecture is named by a
size preset or a JSON file of ``LlamaConfig`` fields, and its hash goes into the tune config's ``model`` field, so
a checkpoint written for one architecture refuses to resume another (checkpoint.py's fingerprint).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hanlin.errors import ConfigurationError

# Llama-style shapes by name. Parameter counts depend on the tokenizer's vocabulary (tied embeddings): with
# an 8k-token trained BPE vocabulary "tiny" is ~8.4M (6.3M in the layers); with SmolLM2's 49,152 tokens, 19M.
PRESETS: dict[str, dict[str, int]] = {
    "1m": {"hidden_size": 64, "intermediate_size": 192, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2},
    # What 2 CPU cores teach best in 10 minutes (~2M tokens): held-out perplexity 131 against tiny's 227 on
    # examples/pretrain_tiny.py's corpus, twice tiny's tokens/s; a model this size is data-bound, not size-bound.
    "3m": {"hidden_size": 192, "intermediate_size": 576, "num_hidden_layers": 4, "num_attention_heads": 4,
           "num_key_value_heads": 2},
    "tiny": {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 8, "num_attention_heads": 4,
             "num_key_value_heads": 2},
    "small": {"hidden_size": 384, "intermediate_size": 1024, "num_hidden_layers": 6, "num_attention_heads": 6,
              "num_key_value_heads": 2},
    "100m": {"hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 12,
             "num_key_value_heads": 4},
    "350m": {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 24, "num_attention_heads": 16,
             "num_key_value_heads": 4},
    "1b": {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
           "num_key_value_heads": 4},
}


class PretrainConfig(BaseModel):
    """Every setting of ``hanlin pretrain``; a YAML file's keys are these field names."""

    model_config = ConfigDict(extra="forbid")

    data: str = Field(description="packed token folder (hanlin-packed-v1, written by `hanlin data`)")
    eval_data: str | None = Field(default=None, description="a second packed folder held out for perplexity")
    eval_split: float = Field(default=0.0, ge=0, lt=1, description="share of sequences held out (the last ones)")
    eval_sequences: int | None = Field(default=256, gt=0, description="at most this many held-out sequences, evenly "
                                       "spaced over the held-out set (None: all)")
    tokenizer: str | None = Field(default=None, description="tokenizer folder or model name (default: the data's)")
    preset: str = "tiny"
    model_config_file: str | None = Field(default=None, description="JSON of LlamaConfig fields over the preset")
    init_from: str | None = Field(default=None, description="continue pre-training this model instead of scratch")
    output_dir: str = "pretrain-out"

    batch_size: int = Field(default=8, gt=0)
    grad_accum: int = Field(default=1, gt=0)
    epochs: float = Field(default=1.0, gt=0)
    max_steps: int | None = Field(default=None, gt=0)
    max_minutes: float | None = Field(default=None, gt=0, description="fit max_steps to this much training time")
    learning_rate: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.1, ge=0)
    warmup_ratio: float = Field(default=0.05, ge=0, lt=1)
    warmup_steps: int = Field(default=0, ge=0)
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    gradient_checkpointing: bool = False
    # compute precision: "auto" is bf16 autocast over fp32 weights on a CUDA GPU with bf16, fp32 elsewhere
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    device: str = "auto"
    kernels: Literal["auto", "triton", "torch"] = "auto"
    compile: bool = Field(default=False, description="torch.compile each decoder layer (compile_layers.py): about "
                          "1.05-1.09x a step on CPU after a one-off compile of ~20 s; not with --nproc")
    seed: int = 0
    threads: int | None = Field(default=None, gt=0)

    eval_every: int = Field(default=0, ge=0)
    save_every: int = Field(default=0, ge=0)
    keep_checkpoints: int = Field(default=2, gt=0)
    log_every: int = Field(default=1, gt=0)
    export: list[Literal["merged", "gguf"]] = Field(default_factory=lambda: ["merged", "gguf"])
    gguf_type: Literal["f32", "f16", "bf16", "q8_0"] = "f16"

    @model_validator(mode="after")
    def _consistent(self) -> PretrainConfig:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; presets: {', '.join(PRESETS)} (or model_config_file)")
        if self.max_steps and self.max_minutes:
            raise ValueError("give max_steps or max_minutes, not both (max_minutes sets max_steps from a timed step)")
        if self.eval_every and not (self.eval_data or self.eval_split):
            raise ValueError("eval_every needs held-out data: eval_data (a packed folder) or eval_split > 0")
        if self.init_from and self.model_config_file:
            raise ValueError("init_from continues an existing model; model_config_file shapes a new one: pick one")
        return self

    @property
    def has_eval(self) -> bool:
        return bool(self.eval_data or self.eval_split)


def load_pretrain_config(path: str | Path | None = None, **overrides: Any) -> PretrainConfig:
    """The config from a YAML file (paths in it relative to the file), with non-None ``overrides`` on top."""
    data: dict[str, Any] = {}
    if path is not None:
        from hanlin.loading import read_yaml_settings

        path = Path(path)
        data = read_yaml_settings(path)
        for key in ("data", "eval_data", "tokenizer", "model_config_file"):
            value = data.get(key)
            if isinstance(value, str) and not Path(value).is_absolute() and (path.parent / value).exists():
                data[key] = str(path.parent / value)
    data.pop("method", None)  # `hanlin tune` style configs name the method; it is this one
    data.update({k: v for k, v in overrides.items() if v is not None and v != [] and k != "method"})
    try:
        return PretrainConfig.model_validate(data)
    except ValidationError as exc:
        from hanlin.plugins.finetuners.config import invalid_settings

        raise ConfigurationError(invalid_settings("the pre-training config", exc, PretrainConfig.model_fields)) \
            from None


def architecture(config: PretrainConfig, vocab_size: int, seq_len: int, bos_id: int | None,
                 eos_id: int | None) -> dict[str, Any]:
    """The LlamaConfig fields of a from-scratch model: the preset, then the user's JSON file over it."""
    fields: dict[str, Any] = dict(PRESETS[config.preset])
    fields.update(vocab_size=vocab_size, max_position_embeddings=max(2048, seq_len), tie_word_embeddings=True,
                  rope_theta=10000.0, bos_token_id=bos_id, eos_token_id=eos_id)
    if config.model_config_file:
        path = Path(config.model_config_file)
        if not path.is_file():
            raise ConfigurationError(f"model_config_file {str(path)!r} does not exist")
        try:
            user = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(user, dict):
            raise ConfigurationError(f"{path} must hold a JSON object of LlamaConfig fields, got {type(user).__name__}")
        fields.update(user)
    hidden, heads = fields["hidden_size"], fields["num_attention_heads"]
    kv = fields.get("num_key_value_heads", heads)
    if hidden % heads or heads % kv:
        raise ConfigurationError(f"hidden_size {hidden} must divide by num_attention_heads {heads}, and that by "
                                 f"num_key_value_heads {kv}; fix the preset override in model_config_file")
    if fields["vocab_size"] < vocab_size:
        raise ConfigurationError(f"vocab_size {fields['vocab_size']} is smaller than the tokenizer's {vocab_size}")
    return fields


def to_tune_config(config: PretrainConfig, *, model_tag: str, max_steps: int | None, seq_len: int) -> Any:
    """The shared trainer's view of this run (method ``full``): loop, schedule, checkpoints, export settings."""
    from hanlin.plugins.finetuners.config import TuneConfig

    return TuneConfig(
        model=model_tag, data=[config.data], output_dir=config.output_dir, method="full", format="text",
        max_length=max(9, seq_len), packing=True, batch_size=config.batch_size, grad_accum=config.grad_accum,
        epochs=config.epochs, max_steps=max_steps, learning_rate=config.learning_rate,
        weight_decay=config.weight_decay, schedule="cosine", warmup_steps=config.warmup_steps,
        warmup_ratio=config.warmup_ratio, max_grad_norm=config.max_grad_norm,
        gradient_checkpointing=config.gradient_checkpointing, dtype="float32", device=config.device,
        kernels=config.kernels, attention="varlen", seed=config.seed, threads=config.threads,
        eval_split=config.eval_split or (0.5 if config.eval_data else 0.0), eval_every=config.eval_every,
        save_every=config.save_every, keep_checkpoints=config.keep_checkpoints, log_every=config.log_every,
        export=list(config.export),
        gguf_type=config.gguf_type)


def model_tag(config: PretrainConfig, fields: dict[str, Any] | None) -> str:
    """What the checkpoint fingerprint sees as the model: the architecture's hash (or the model continued)."""
    if config.init_from:
        return f"continued:{config.init_from}"
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"scratch:{config.preset}:{digest}"
