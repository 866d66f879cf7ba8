"""Inside one rank of ``hanlin tune --nproc N``: the shared trainer, with the model sharded by FSDP2.

Why each piece is as it is:
- Sharding (``torch.distributed.fsdp.fully_shard``, PyTorch core): one unit per decoder layer, then a root unit
  (``LossModule``) around the whole loss computation. The root is not the model itself because the trainer never
  calls the model's ``forward``: it runs the decoder and then the output head on target positions only
  (losses.py). A root whose ``forward`` is that computation makes FSDP gather the embeddings, final norm and
  (tied) head around it, as it would around a plain forward.
- LoRA: the adapters are trainable, the frozen base is sharded with them (FSDP2 shards per parameter, so frozen
  and trainable weights share a unit). Full fine-tuning shards every weight the same way.
- Precision: on CUDA the sharded weights are fp32 and each unit computes in bf16 with fp32 gradient reduction
  (``MixedPrecisionPolicy``); on CPU everything stays fp32 (CPUs here have no native bf16).
- The global batch is the config's ``batch_size`` x ``grad_accum`` rows, whatever the number of processes: every
  rank rebuilds the same seeded global order of packed rows, and takes its share of each micro-batch (DPO: its
  share of the pairs). The loss is divided by the step's target tokens summed over all ranks (``all_reduce``)
  and gradients are summed, not averaged, across ranks: a step then equals the single-process step on the same
  global batch, so ``--nproc`` changes the speed, not the result.
- A rank whose share of a micro-batch is empty (a short last batch) still runs the forward and backward on a
  stand-in row with weight 0: every rank must join every gather and reduction, or the others wait for it.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hanlin.errors import ConfigurationError
from hanlin.plugins.finetuners import dist_checkpoint
from hanlin.plugins.finetuners.checkpoint import Position
from hanlin.plugins.finetuners.config import TuneConfig
from hanlin.plugins.finetuners.packing import Row
from hanlin.plugins.finetuners.trainer import Progress, Trainer, TuneResult


@dataclass
class RankContext:
    """Who this process is in the run (from torchrun's environment)."""

    rank: int
    world: int
    local_rank: int
    device: str  # "cpu" or "cuda:<local rank>"
    backend: str  # gloo or nccl


def init_process_group(timeout_s: float) -> RankContext:
    """Joins the process group torchrun set up. ``timeout_s`` bounds every collective: a rank waiting on one that
    died fails after it instead of hanging."""
    import torch
    import torch.distributed as dist

    if "RANK" not in os.environ:
        raise ConfigurationError("not started by torchrun (RANK is unset); run `hanlin tune ... --nproc N`")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank)
    backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return RankContext(dist.get_rank(), dist.get_world_size(), local_rank,
                       f"cuda:{local_rank}" if cuda else "cpu", backend)


def decoder_layers(model: Any) -> list[Any]:
    decoder = model.get_decoder()
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise ConfigurationError(f"cannot find the decoder layers of {type(decoder).__name__} to shard or compile; "
                                 "--nproc and --compile support models whose decoder keeps them in `.layers` "
                                 "(llama, qwen2, gemma...)")
    return list(layers)


def _loss_module_class() -> Any:
    import torch

    class LossModule(torch.nn.Module):
        """The FSDP root: one forward = the trainer's loss computation on one micro-batch (see the module doc)."""

        def __init__(self, model: Any, fused: bool) -> None:
            super().__init__()
            self.model = model
            self.fused = fused

        def forward(self, input_ids: Any, position_ids: Any, targets: Any, logprobs: bool = False) -> Any:
            from hanlin.plugins.finetuners.losses import sequence_logprobs, token_loss_sum

            batch = {"input_ids": input_ids, "position_ids": position_ids, "targets": targets}
            if logprobs:
                return sequence_logprobs(self.model, batch)
            total, _ = token_loss_sum(self.model, batch, self.fused)
            return total

    return LossModule


def shard_model(model: Any, ctx: RankContext, *, mixed: bool, fused: bool) -> Any:
    """FSDP2 units per decoder layer, then the root around the loss; returns the root."""
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh("cuda" if ctx.device.startswith("cuda") else "cpu", (ctx.world,))
    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mixed
              else MixedPrecisionPolicy())
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    root = _loss_module_class()(model, fused)
    fully_shard(root, mesh=mesh, mp_policy=policy)
    for module in root.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)  # sum across ranks: the loss is already divided globally
            module.set_force_sum_reduction_for_comms(True)  # plain SUM (gloo has no PREMUL_SUM)
    return root


def rank_share(rows: list[Row], rank: int, world: int, preference: bool) -> tuple[list[Row], float]:
    """This rank's rows of one micro-batch and their weight: (rows, 1.0), or a stand-in with weight 0 when the
    share is empty. DPO batches hold chosen rows then rejected rows; a rank takes whole pairs."""
    if preference:
        half = len(rows) // 2
        mine = list(range(half))[rank::world]
        if not mine:
            return [rows[0], rows[half]], 0.0
        return [rows[i] for i in mine] + [rows[half + i] for i in mine], 1.0
    mine_rows = rows[rank::world]
    return (mine_rows, 1.0) if mine_rows else ([rows[0]], 0.0)


def all_reduce_sum(value: float, device: str) -> float:
    import torch
    import torch.distributed as dist

    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor[0])


def uses_mixed_precision(config: TuneConfig, device: str) -> bool:
    """bf16 compute over fp32 sharded weights: asked for (dtype bfloat16), or by default on a GPU that has bf16.
    The sharded weights stay fp32 either way, so the optimizer steps them in place (no separate fp32 masters,
    which DCP's optimizer state could not name)."""
    import torch

    if config.dtype == "bfloat16":
        return True
    return device.startswith("cuda") and config.dtype == "auto" and torch.cuda.is_bf16_supported()


class ShardedTraining:
    """What a rank of a sharded run changes in a trainer.Trainer (or a subclass, like pre-training's): the loss of
    a micro-batch (this rank's share, through the FSDP root), the step's denominator and loss (global), evaluation
    (global sums), checkpoints (DCP) and who writes. Put it first among the bases and call ``_shard`` once the
    trainer's own ``__init__`` has built the model."""

    ctx: RankContext
    root: Any

    def _shard(self: Any, ctx: RankContext, mixed: bool) -> None:
        self.ctx = ctx
        self.writes = ctx.rank == 0
        if ctx.rank != 0:
            self.progress = lambda _: None
        self.root = shard_model(self.model, ctx, mixed=mixed, fused=self.fused)

    # ---- one micro-batch ------------------------------------------------------------------------
    def _share(self, rows: list[Row]) -> tuple[list[Row], float]:
        return rank_share(rows, self.ctx.rank, self.ctx.world, self.data.preference)

    def _run_root(self, rows: list[Row], logprobs: bool = False) -> Any:
        batch = self._batch(rows)
        return self.root(batch["input_ids"], batch["position_ids"], batch["targets"], logprobs)

    def _step_denominator(self, group: list[list[Row]]) -> int:
        local = 0
        for rows in group:
            mine, weight = self._share(rows)
            if weight:
                local += len(mine) // 2 if self.data.preference else sum(r.n_targets for r in mine)
        return max(1, round(all_reduce_sum(local, self.ctx.device)))

    def _loss(self, rows: list[Row], denominator: int) -> Any:
        mine, weight = self._share(rows)
        if not self.data.preference:
            return self._run_root(mine) * weight / denominator
        import torch
        import torch.nn.functional as F

        half = len(mine) // 2
        policy = self._run_root(mine, logprobs=True)
        with torch.no_grad(), self.model.disable_adapter():
            reference = self._run_root(mine, logprobs=True)
        margin = (policy[:half] - policy[half:]) - (reference[:half] - reference[half:])
        return -F.logsigmoid(self.config.dpo_beta * margin).sum() * weight / denominator

    def _global_loss(self, step_loss: float) -> float:
        return all_reduce_sum(step_loss, self.ctx.device)

    def _eval_loss(self, rows: list[Row]) -> tuple[float, int]:
        mine, weight = rank_share(rows, self.ctx.rank, self.ctx.world, False)
        loss = self._run_root(mine)  # every rank runs it (the gathers), only a real share counts
        return (float(loss), sum(r.n_targets for r in mine)) if weight else (0.0, 0)

    def _global_sums(self, total: float, count: int) -> tuple[float, int]:
        return all_reduce_sum(total, self.ctx.device), round(all_reduce_sum(count, self.ctx.device))

    # ---- checkpoints (torch.distributed.checkpoint) ------------------------------------------------
    def _fingerprinted(self: Any) -> TuneConfig:
        """The settings a checkpoint is fingerprinted on: the user's, before the rank's device was filled in."""
        return getattr(self, "user_config", None) or self.config

    def _save(self, folder: Path, optimizer: Any, scheduler: Any, position: Position) -> None:
        dist_checkpoint.save(folder, model=self.model, optimizer=optimizer.optimizer, scheduler=scheduler,
                             position=position, config=self._fingerprinted(), keep=self.config.keep_checkpoints,
                             rank=self.ctx.rank, world=self.ctx.world)

    def _restore(self, folder: Path, optimizer: Any, scheduler: Any) -> Position:
        return dist_checkpoint.restore(folder, model=self.model, optimizer=optimizer.optimizer, scheduler=scheduler,
                                       config=self._fingerprinted())

    # ---- the run --------------------------------------------------------------------------------
    def train(self, *, resume: bool = False, stop_after: int | None = None) -> TuneResult:
        result = super().train(resume=resume, stop_after=stop_after)
        # result.tokens already counts the whole global batch (each rank sees every micro-batch's rows)
        result.seconds = all_reduce_max(result.seconds, self.ctx.device)
        return result

    def full_state_dict(self) -> dict[str, Any]:
        """Every weight, unsharded, on rank 0's CPU (empty on the others); every rank must call it."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


class DistributedTrainer(ShardedTraining, Trainer):
    """The shared trainer (trainer.py) on one rank of ``hanlin tune --nproc``."""

    def __init__(self, config: TuneConfig, ctx: RankContext, *, progress: Progress | None = None,
                 cache_dir: Path | None = None) -> None:
        check_shardable(config)
        self.user_config = config  # checkpoints are fingerprinted on what the user asked for
        mixed = uses_mixed_precision(config, ctx.device)
        # sharded weights stay fp32 under mixed precision: bf16 is the compute copy FSDP makes per unit
        local = config.model_copy(update={"device": ctx.device, **({"dtype": "float32"} if mixed else {})})
        # a GGUF base is converted once: convert_gguf holds a file lock while one rank converts
        Trainer.__init__(self, local, progress=progress, cache_dir=cache_dir)
        self._shard(ctx, mixed)

    def export(self) -> dict[str, Path]:
        """Adapter / merged / GGUF, written by rank 0 alone from the gathered weights, through the same export
        code as a single-process run: rank 0 rebuilds the plain (unsharded) model on its CPU and loads them."""
        state = self.full_state_dict()
        if self.ctx.rank != 0:
            return {}
        import torch

        from hanlin.plugins.finetuners.export import export_all
        from hanlin.plugins.finetuners.model_setup import load_base, wrap_for_method

        plain_config = self.user_config.model_copy(update={"device": "cpu"})
        base = load_base(plain_config)
        model = wrap_for_method(base, plain_config)
        with torch.no_grad():
            model.load_state_dict(state, strict=True)
        c = self.user_config
        return export_all(model, base.tokenizer, base.folder, Path(c.output_dir), c.export, c.gguf_type,
                          base.source_gguf, self.data.templated)


def check_shardable(config: TuneConfig) -> None:
    """Settings --nproc cannot run, refused by the launcher before any process starts (and by each rank)."""
    if config.method == "qlora":
        raise ConfigurationError("qlora's 4-bit base (bitsandbytes) cannot be sharded by FSDP2; with --nproc use "
                                 "method: lora (the sharded fp32/bf16 base takes 1/N of the memory per process)")


def all_reduce_max(value: float, device: str) -> float:
    import torch
    import torch.distributed as dist

    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor[0])


def run_tune(job: dict[str, Any], ctx: RankContext) -> dict[str, Any] | None:
    """A rank's whole tuning run (the launcher's entry for ``hanlin tune --nproc``): train, then export from
    rank 0. Returns rank 0's result (what the launcher prints)."""
    from hanlin.plugins.finetuners.api import summarize
    from hanlin.plugins.finetuners.plugin import _print_progress

    config = TuneConfig.model_validate(job["config"])
    cache_dir = Path(job["cache_dir"]) if job.get("cache_dir") else None
    trainer = DistributedTrainer(config, ctx, progress=_print_progress, cache_dir=cache_dir)
    if "gguf" in config.export:  # refused before training, as on one process
        from hanlin.plugins.finetuners.gguf_export import check_exportable

        check_exportable(trainer.base.folder)
    result = trainer.train(resume=bool(job.get("resume")), stop_after=job.get("stop_after"))
    result.exported = trainer.export()
    if ctx.rank != 0:
        return None
    result.summary = summarize(config, trainer, result) + processes_line(ctx)
    return result_fields(result)


def processes_line(ctx: RankContext) -> str:
    return f"\nprocesses: {ctx.world} ({ctx.backend}, FSDP2)"


def result_fields(result: TuneResult) -> dict[str, Any]:
    """Rank 0's TuneResult as JSON, for the launcher (launcher.launch_run rebuilds it)."""
    return {"output_dir": str(result.output_dir), "steps": result.steps, "losses": result.losses,
            "eval": result.eval, "tokens": result.tokens, "seconds": result.seconds,
            "peak_memory_mb": result.peak_memory_mb, "resumed_from": result.resumed_from,
            "exported": {k: str(v) for k, v in result.exported.items()}, "summary": result.summary}
