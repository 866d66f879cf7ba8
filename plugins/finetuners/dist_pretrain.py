"""``hanlin pretrain --nproc N``: pre-training (pretrain.py) on N processes, through the launcher and sharding of
``hanlin tune --nproc`` (launcher.py, distributed.py).

The pre-training trainer is composed with the sharding mixin rather than copied: ``ShardedTraining`` replaces the
loss of a micro-batch (this rank's share, through the FSDP root), the global denominator and loss, evaluation sums
and DCP checkpoints; everything else (model built from a preset, packed shards, MFU in the records) stays
pretrain.py's. Two differences from one process:
- on a GPU, bf16 compute comes from FSDP2's MixedPrecisionPolicy (fp32 sharded weights, fp32 gradient
  reduction) instead of autocast around the forward;
- ``max_minutes`` is refused: each rank would time its own first step and lay out a different schedule; give
  ``max_steps``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hanlin.errors import ConfigurationError
from hanlin.plugins.finetuners.distributed import (RankContext, ShardedTraining, processes_line, result_fields,
                                                   uses_mixed_precision)


def sharded_pretrainer(cfg: Any, ctx: RankContext, *, progress: Any = None, cache_dir: Path | None = None) -> Any:
    """pretrain.PretrainTrainer on this rank, its model sharded (the class is made here: pretrain.py is imported
    only when a pre-training run starts)."""
    from hanlin.plugins.finetuners.pretrain import PretrainTrainer

    class DistributedPretrainTrainer(ShardedTraining, PretrainTrainer):
        sharded = True

    if cfg.max_minutes and not cfg.max_steps:
        raise ConfigurationError("max_minutes fits the step count to one timed step, which each of the --nproc "
                                 "processes would time differently; give max_steps with --nproc")
    trainer = DistributedPretrainTrainer(cfg.model_copy(update={"device": ctx.device}), progress=progress,
                                         cache_dir=cache_dir)
    trainer._shard(ctx, uses_mixed_precision(cfg, ctx.device))
    trainer.autocast = False  # FSDP2's mixed-precision policy computes in bf16 on a GPU
    return trainer


def run_pretrain(job: dict[str, Any], ctx: RankContext) -> dict[str, Any] | None:
    """A rank's whole pre-training run (the launcher's entry): train, evaluate, export from rank 0."""
    import torch

    from hanlin.plugins.finetuners.export import export_all
    from hanlin.plugins.finetuners.pretrain import PretrainTrainer, summarize
    from hanlin.plugins.finetuners.pretrain_cli import print_progress
    from hanlin.plugins.finetuners.pretrain_config import PretrainConfig
    from hanlin.plugins.finetuners.pretrain_data import unigram_baseline

    cfg = PretrainConfig.model_validate(job["config"])
    cache_dir = Path(job["cache_dir"]) if job.get("cache_dir") else None
    trainer = sharded_pretrainer(cfg, ctx, progress=print_progress, cache_dir=cache_dir)
    if ctx.rank == 0:
        trainer.remember_run()
    result = trainer.train(resume=bool(job.get("resume")))
    final = trainer.evaluate() if trainer.data.eval_index else None  # collective: every rank
    state = trainer.full_state_dict()
    if ctx.rank != 0:
        return None
    if final is not None:
        data = trainer.data
        baseline = unigram_baseline(data.train, data.train_index, data.eval_source, data.eval_index,
                                    trainer.base.model.get_input_embeddings().weight.shape[0])
        result.eval.append({"step": result.steps, **final, **baseline})
    model = PretrainTrainer._new_model(trainer.fields, cfg.seed)
    with torch.no_grad():
        model.load_state_dict(state, strict=True)
    result.exported = export_all(model, trainer.base.tokenizer, trainer.base.folder, trainer.out, list(cfg.export),
                                 cfg.gguf_type, None, templated=False)
    result.summary = summarize(cfg, trainer, result) + processes_line(ctx)
    (trainer.out / "summary.txt").write_text(result.summary + "\n")
    return result_fields(result)


def launch_pretrain(config: Any, settings: dict[str, Any], launch: Any, *, resume: bool = False) -> Any:
    """``hanlin pretrain ... --nproc N``: the config checked here, before any process starts."""
    from hanlin.plugins.finetuners.compile_layers import should_compile
    from hanlin.plugins.finetuners.launcher import launch_run
    from hanlin.plugins.finetuners.pretrain_config import load_pretrain_config

    cfg = load_pretrain_config(config, **settings)
    should_compile(cfg.compile, "cpu", sharded=True)  # refused before torchrun starts, not on every rank
    job = {"config": cfg.model_dump(mode="json"), "resume": resume, "cache_dir": None}
    return launch_run("hanlin.plugins.finetuners.dist_pretrain:run_pretrain", job, launch, Path(cfg.output_dir))
