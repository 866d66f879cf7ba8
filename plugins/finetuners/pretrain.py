"""``hanlin pretrain``: a llama-architecture model trained from scratch (or continued) on packed token shards, by the
finetuners' own loop, checkpoints and exporters.

``PretrainTrainer`` is trainer.Trainer with a different source for its three inputs: a model built from a size
preset (or loaded, for continued pre-training), the tokenizer of an existing folder, and packed sequences
(pretrain_data.py) in place of rendered records. Everything else (accumulation, clipping, cosine schedule with
warm-up, checkpoints that resume mid-epoch, metrics JSONL/TensorBoard, held-out perplexity) is the shared code.
Two additions: bf16 autocast around the forward on a CUDA GPU (the weights and optimizer stay fp32), and MFU in
every metrics record (pretrain_flops.py).
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

from hanlin.errors import ConfigurationError
from hanlin.plugins.finetuners.pretrain_config import (PretrainConfig, architecture, load_pretrain_config, model_tag,
                                                       to_tune_config)
from hanlin.plugins.finetuners.pretrain_data import PackedRunData, open_packed, split, unigram_baseline
from hanlin.plugins.finetuners.trainer import Progress, Trainer, TuneResult


def resolve_tokenizer_folder(name: str, cache_dir: Path | None = None) -> Path:
    """A folder holding a tokenizer: the folder itself, or a model name / .gguf resolved to its HF folder."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    from hanlin.plugins.finetuners.model_setup import base_folder

    try:
        return base_folder(name, cache_dir)[0]
    except Exception as exc:
        raise ConfigurationError(f"tokenizer {name!r} is neither a folder nor a model hanlin can resolve ({exc}); "
                                 "pass --tokenizer with a folder holding tokenizer.json") from None


class PretrainTrainer(Trainer):
    """trainer.Trainer over packed shards and a from-scratch (or continued) model."""

    sharded = False  # True on a rank of an --nproc run (dist_pretrain.py)

    def __init__(self, config: PretrainConfig, *, progress: Progress | None = None, cache_dir: Path | None = None,
                 resume: bool = False) -> None:
        import torch
        from transformers import AutoTokenizer

        from hanlin.plugins.finetuners.model_setup import LoadedBase, load_base, pick_device, wrap_for_method

        self.pretrain_config = config
        train = open_packed(config.data)
        held = open_packed(config.eval_data) if config.eval_data else None
        if held is not None and held.meta.get("tokenizer") != train.meta.get("tokenizer"):
            raise ConfigurationError(f"eval_data was tokenized with {held.meta.get('tokenizer')!r}, data with "
                                     f"{train.meta.get('tokenizer')!r}; pack both with the same tokenizer")
        self.out = Path(config.output_dir)
        saved = self._saved_run() if resume else {}  # a resumed time-bounded run keeps its step count
        if config.init_from:
            tune = to_tune_config(config, model_tag=model_tag(config, None), max_steps=config.max_steps,
                                  seq_len=train.seq_len).model_copy(update={"model": config.init_from})
            base = load_base(tune, cache_dir)
            fields = base.model.config.to_dict()
        else:
            if config.threads:
                torch.set_num_threads(config.threads)
            folder = resolve_tokenizer_folder(config.tokenizer or str(train.meta.get("tokenizer", "")), cache_dir)
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            if tokenizer.pad_token_id is None:
                tokenizer.pad_token = tokenizer.eos_token
            fields = architecture(config, len(tokenizer), train.seq_len, tokenizer.bos_token_id, train.eos_id)
            base = LoadedBase(self._new_model(fields, config.seed), tokenizer, folder, pick_device(config.device),
                              torch.float32)
            base.model.to(base.device)
            from hanlin.plugins.finetuners.varlen_attention import use_varlen_attention

            use_varlen_attention(base.model)
        vocab = base.model.get_input_embeddings().weight.shape[0]
        if int(train.meta.get("vocab_size", 0)) > vocab:
            raise ConfigurationError(f"{config.data} was packed with a {train.meta['vocab_size']}-token vocabulary, "
                                     f"the model has {vocab}; pack with the model's tokenizer")
        self.fields = fields
        tag = model_tag(config, fields)
        tune = to_tune_config(config, model_tag=tag, max_steps=config.max_steps or saved.get("max_steps"),
                              seq_len=train.seq_len)
        train_index, eval_source, eval_index = split(train, held, config.eval_split, config.eval_sequences)
        self.config = tune
        self.progress = progress or (lambda _: None)
        self.base = base
        self.data = PackedRunData(tune, train, train_index, eval_source, eval_index)
        self.model = wrap_for_method(base, tune)
        from hanlin.plugins.finetuners.compile_layers import compile_layers, should_compile

        self.compiled_layers = compile_layers(self.model) if should_compile(config.compile, base.device,
                                                                            sharded=self.sharded) else 0
        self.fused = tune.kernels == "triton" or (tune.kernels == "auto" and base.device.startswith("cuda"))
        self.autocast = base.device.startswith("cuda") and (
            config.dtype == "bfloat16" or (config.dtype == "auto" and torch.cuda.is_bf16_supported()))
        from hanlin.plugins.finetuners.pretrain_flops import device_peak, flops_per_token

        self.flops_per_token = flops_per_token(base.model, train.seq_len)
        self.peak, self.peak_source = device_peak(base.device)
        if config.max_minutes and not tune.max_steps:
            self._fit_steps_to(config.max_minutes * 60)

    @staticmethod
    def _new_model(fields: dict[str, Any], seed: int) -> Any:
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(seed)  # the initial weights come from the seed: a resumed run rebuilds, then loads
        return LlamaForCausalLM(LlamaConfig(**fields))

    def _saved_run(self) -> dict[str, Any]:
        path = self.out / "pretrain.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def _fit_steps_to(self, seconds: float) -> None:
        """max_steps from one timed step (after a warm-up one), so the cosine schedule spans the time budget."""
        from hanlin.plugins.finetuners.cpu_allocator import keep_freed_memory

        keep_freed_memory(self.base.device)  # as the loop will run (trainer.py)
        batches = self.data.micro_batches(0)
        group = batches[0:1]
        timings = []
        for _ in range(2):
            start = time.perf_counter()
            self._loss(group[0], 1).backward()
            timings.append(time.perf_counter() - start)
        self.model.zero_grad(set_to_none=True)
        per_step = timings[-1] * self.config.grad_accum
        steps = max(1, int(seconds / per_step))
        self.config = self.data.config = self.config.model_copy(update={"max_steps": steps})

    def _sft_loss(self, rows: list[Any], denominator: int) -> Any:
        import torch

        guard = torch.autocast("cuda", dtype=torch.bfloat16) if self.autocast else contextlib.nullcontext()
        with guard:
            return super()._sft_loss(rows, denominator)

    def evaluate(self) -> dict[str, float]:
        import torch

        guard = torch.autocast("cuda", dtype=torch.bfloat16) if self.autocast else contextlib.nullcontext()
        with guard:
            return super().evaluate()

    def _record(self, position: Any, loss: float, scheduler: Any, total: int, result: TuneResult,
                started: float) -> dict[str, Any]:
        record = super()._record(position, loss, scheduler, total, result, started)
        record["mfu"] = round(record["tokens_per_s"] * self.flops_per_token / self.peak, 5) if self.peak else 0.0
        return record

    def remember_run(self) -> None:
        """The resolved step count and architecture, so a resumed time-bounded run lays out the same schedule."""
        self.out.mkdir(parents=True, exist_ok=True)
        info = {"max_steps": self.config.max_steps, "architecture": self.fields,
                "config": self.pretrain_config.model_dump(mode="json")}
        (self.out / "pretrain.json").write_text(json.dumps(info, indent=1, default=str))

    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def pretrain(config: str | Path | dict[str, Any] | PretrainConfig | None = None, *, resume: bool = False,
             progress: Progress | None = None, cache_dir: Path | None = None, **settings: Any) -> TuneResult:
    """One run: train, evaluate against a unigram baseline when there is held-out data, export."""
    if isinstance(config, PretrainConfig):
        cfg = PretrainConfig.model_validate({**config.model_dump(), **{k: v for k, v in settings.items()
                                                                      if v is not None and k != "method"}})
    elif isinstance(config, dict):
        cfg = load_pretrain_config(None, **{**config, **settings})
    else:
        cfg = load_pretrain_config(config, **settings)
    trainer = PretrainTrainer(cfg, progress=progress, cache_dir=cache_dir, resume=resume)
    if "gguf" in cfg.export:
        from hanlin.plugins.finetuners.gguf_export import check_exportable

        if cfg.init_from:
            check_exportable(trainer.base.folder)
    trainer.remember_run()
    result = trainer.train(resume=resume)
    if trainer.data.eval_index:
        final = trainer.evaluate()
        data = trainer.data
        baseline = unigram_baseline(data.train, data.train_index, data.eval_source, data.eval_index,
                                    trainer.base.model.get_input_embeddings().weight.shape[0])
        result.eval.append({"step": result.steps, **final, **baseline})
    from hanlin.plugins.finetuners.export import export_all

    result.exported = export_all(trainer.model, trainer.base.tokenizer, trainer.base.folder, trainer.out,
                                 list(cfg.export), cfg.gguf_type, None, templated=False)
    result.summary = summarize(cfg, trainer, result)
    (trainer.out / "summary.txt").write_text(result.summary + "\n")
    return result


def summarize(cfg: PretrainConfig, trainer: PretrainTrainer, result: TuneResult) -> str:
    data = trainer.data
    shape = cfg.preset + (f" + {Path(cfg.model_config_file).name}" if cfg.model_config_file else "")
    start = "continued " + cfg.init_from if cfg.init_from else f"from scratch ({shape})"
    lines = [f"pre-trained {start}: {trainer.n_params() / 1e6:.1f}M parameters, {result.steps} steps"
             + (f" (resumed at step {result.resumed_from})" if result.resumed_from else ""),
             f"data: {data.n_train} sequences of {data.train.seq_len} tokens for training"
             + (f", {len(data.eval_index)} held out" if data.eval_index else "")]
    if result.losses:
        lines.append(f"loss: first {result.losses[0]:.4f}, last {result.losses[-1]:.4f}")
    if result.eval and "unigram_ppl" in result.eval[-1]:
        e = result.eval[-1]
        lines.append(f"held-out perplexity {e['eval_ppl']:.2f} vs unigram baseline {e['unigram_ppl']:.2f} "
                     f"(loss {e['eval_loss']:.4f} vs {e['unigram_loss']:.4f}; ratio "
                     f"{e['eval_ppl'] / e['unigram_ppl']:.3f})")
    tps = result.tokens_per_s
    mfu = tps * trainer.flops_per_token / trainer.peak if trainer.peak else 0.0
    lines.append(f"speed: {tps:.0f} tok/s, MFU {100 * mfu:.1f}% of {trainer.peak / 1e12:.2f} TFLOP/s "
                 f"({trainer.peak_source}), peak memory {result.peak_memory_mb:.0f} MB")
    for kind, path in result.exported.items():
        lines.append(f"{kind}: {path}")
    if "gguf" in result.exported:
        lines.append(f"run it: hanlin run --model {cfg.output_dir} \"...\"")
    return "\n".join(lines)


class PretrainFinetuner:
    """The ``pretrain`` finetuner plugin: ``hanlin.tune(method="pretrain", data=..., ...)`` reaches ``pretrain``."""

    method = "pretrain"

    def tune(self, config: Any = None, *, resume: bool = False, progress: Any = None, **settings: Any) -> Any:
        return pretrain(config, resume=resume, progress=progress, **settings)


def make_finetuner(**options: Any) -> PretrainFinetuner:
    if options:
        raise ConfigurationError("finetuner 'pretrain' takes no options; put settings in the pretrain config")
    return PretrainFinetuner()

