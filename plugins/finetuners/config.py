"""What a tuning run is: one pydantic model, read from YAML or built from flags, checked before anything loads.

A typo in a config should cost a second, not a model load: unknown keys are errors (with the known ones listed),
and every value is checked against the method it is for (QLoRA needs CUDA, DPO needs preference data...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hanlin.errors import ConfigurationError

Method = Literal["full", "lora", "qlora", "dpo"]


class LoraSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    r: int = Field(default=16, gt=0)
    alpha: int = Field(default=32, gt=0)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    # "all-linear" targets every linear layer but the output head (peft's own shorthand).
    target_modules: list[str] | str = "all-linear"


class TuneConfig(BaseModel):
    """Every setting of ``hanlin tune``; the YAML file's keys are these field names."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="model name/alias, .gguf file or HF folder")
    data: list[str] = Field(description="training files (.jsonl in any supported format, .txt for plain text)")
    output_dir: str = "tune-out"
    method: Method = "lora"
    format: Literal["auto", "hanlin", "openai", "xtuner", "text", "preference"] = "auto"
    train_on: Literal["assistant", "last", "all"] = "assistant"
    skip_bad_records: bool = False
    keep_status: list[str] = Field(default_factory=lambda: ["answered"])

    max_length: int = Field(default=1024, gt=8)
    packing: bool = True
    batch_size: int = Field(default=4, gt=0)
    grad_accum: int = Field(default=1, gt=0)
    epochs: float = Field(default=1.0, gt=0)
    max_steps: int | None = Field(default=None, gt=0)
    learning_rate: float = Field(default=2e-4, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = Field(default=0, ge=0)
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1)
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    gradient_checkpointing: bool = False
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    device: str = "auto"
    # hanlin's Triton kernels (fused RMSNorm with backward, fused cross-entropy): "auto" uses them on CUDA
    kernels: Literal["auto", "triton", "torch"] = "auto"
    # "varlen": attention runs per packed sample (varlen_attention.py); "model": the model's own implementation
    attention: Literal["varlen", "model"] = "varlen"
    seed: int = 0
    threads: int | None = Field(default=None, gt=0)

    lora: LoraSettings = Field(default_factory=LoraSettings)
    dpo_beta: float = Field(default=0.1, gt=0)

    eval_split: float = Field(default=0.0, ge=0, lt=1)
    eval_every: int = Field(default=0, ge=0)
    save_every: int = Field(default=0, ge=0)
    keep_checkpoints: int = Field(default=2, gt=0)
    log_every: int = Field(default=1, gt=0)

    export: list[Literal["adapter", "merged", "gguf"]] = Field(default_factory=lambda: ["adapter"])
    gguf_type: Literal["f32", "f16", "bf16", "q8_0"] = "f16"
    # a llama.cpp type (q4_k_m, q5_k_m, q6_k, q8_0, q4_0) the exported GGUF is quantized to afterwards (`hanlin
    # quantize`'s GGUF methods); model.gguf is then that file, the merged folder keeps full precision
    gguf_quant: str | None = None
    # the GGUF a GGUF export copies its tokenizer from; a base installed as a GGUF is its own source, and without
    # one the tokenizer is rebuilt from the HF folder's tokenizer.json
    gguf_source: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> TuneConfig:
        if not self.data:
            raise ValueError("data: name at least one training file")
        if self.method == "full" and "adapter" in self.export:
            self.export = [e for e in self.export if e != "adapter"] or ["merged"]
        if self.method == "dpo" and self.format not in ("auto", "preference"):
            raise ValueError("method dpo trains on preference records (prompt/chosen/rejected); set format: preference")
        if self.gguf_quant and "gguf" not in self.export:
            raise ValueError(f"gguf_quant {self.gguf_quant!r} quantizes the GGUF export: add gguf to export "
                             "(--export gguf)")
        if self.eval_every and not self.eval_split:
            raise ValueError("eval_every needs eval_split > 0 (the share of records held out for evaluation)")
        return self

    @property
    def uses_adapter(self) -> bool:
        return self.method in ("lora", "qlora", "dpo")


def load_config(path: str | Path | None = None, **overrides: Any) -> TuneConfig:
    """The config from a YAML file, with command-line overrides (``None`` values are ignored) on top."""
    data: dict[str, Any] = {}
    if path is not None:
        from hanlin.loading import read_yaml_settings

        path = Path(path)
        data = read_yaml_settings(path)
        base = path.parent
        if isinstance(data.get("data"), str):
            data["data"] = [data["data"]]
        # relative data paths are relative to the config file, as a user reading it would expect
        data["data"] = [str(base / d) if not Path(d).is_absolute() and (base / d).exists() else d
                        for d in data.get("data", [])]
    for key, value in overrides.items():
        if value is None or value == []:
            continue
        data[key] = value
    try:
        return TuneConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigurationError(invalid_settings("the tuning config", exc, TuneConfig.model_fields)) from None


def invalid_settings(what: str, exc: ValidationError, known: Any) -> str:
    """One line per invalid setting, naming it; an unknown key lists the known ones (a typo costs a second)."""
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "config"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = f"unknown setting; known settings: {', '.join(known)}"
        lines.append(f"  {where}: {msg}")
    return f"{what} is not valid:\n" + "\n".join(lines)
