"""One tuning run from config to exported model: the function ``hanlin.tune`` and ``hanlin tune`` reach."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hanlin.plugins.finetuners.config import TuneConfig, load_config
from hanlin.plugins.finetuners.export import export_all
from hanlin.plugins.finetuners.trainer import Progress, Trainer, TuneResult


def tune(config: str | Path | dict[str, Any] | TuneConfig | None = None, *, resume: bool = False,
         progress: Progress | None = None, cache_dir: Path | None = None, **settings: Any) -> TuneResult:
    if isinstance(config, TuneConfig):
        cfg = config.model_copy(update={k: v for k, v in settings.items() if v is not None})
        cfg = TuneConfig.model_validate(cfg.model_dump())
    elif isinstance(config, dict):
        cfg = load_config(None, **{**config, **settings})
    else:
        cfg = load_config(config, **settings)
    trainer = Trainer(cfg, progress=progress, cache_dir=cache_dir)
    if "gguf" in cfg.export:  # an architecture the export cannot write is refused before training, not after
        from hanlin.plugins.finetuners.gguf_export import check_exportable

        check_exportable(trainer.base.folder)
    if cfg.gguf_quant:  # an unknown type is refused before training too
        from hanlin.plugins.quantizers.cli import gguf_method

        gguf_method(cfg.gguf_quant)
    result = trainer.train(resume=resume)
    result.exported = export_all(trainer.model, trainer.base.tokenizer, trainer.base.folder, Path(cfg.output_dir),
                                 cfg.export, cfg.gguf_type, trainer.base.source_gguf, trainer.data.templated)
    result.summary = summarize(cfg, trainer, result)
    if cfg.gguf_quant:
        from hanlin.plugins.quantizers.cli import quantize_in_place

        report = quantize_in_place(result.exported["gguf"], cfg.gguf_quant, threads=cfg.threads)
        result.summary += "\n" + report.summary()
    return result


def summarize(cfg: TuneConfig, trainer: Trainer, result: TuneResult) -> str:
    data = trainer.data
    lines = [f"tuned {cfg.model} with {cfg.method}: {result.steps} steps"
             + (f" (resumed at step {result.resumed_from})" if result.resumed_from else ""),
             f"data: {data.loaded.summary() if data.loaded else ''}; {data.n_train} training "
             f"{'pairs' if data.preference else 'samples'}"
             + (f", {len(data.eval_samples) or len(data.eval_pairs)} held out" if cfg.eval_split else "")]
    if data.skipped_render:
        lines.append(f"skipped while rendering: {len(data.skipped_render)} (first: {data.skipped_render[0]})")
    if result.losses:
        lines.append(f"loss: first {result.losses[0]:.4f}, last {result.losses[-1]:.4f}")
    if result.eval:
        last = result.eval[-1]
        lines.append(f"eval: loss {last['eval_loss']:.4f}, perplexity {last['eval_ppl']:.2f} (step {last['step']})")
    lines.append(f"speed: {result.tokens_per_s:.0f} tok/s, peak memory {result.peak_memory_mb:.0f} MB")
    for kind, path in result.exported.items():
        lines.append(f"{kind}: {path}")
    if "gguf" in result.exported:
        lines.append(f"run it: hanlin run --model {cfg.output_dir} \"...\"")
    return "\n".join(lines)
