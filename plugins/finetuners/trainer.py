"""The training loop shared by every method: SFT (full, LoRA, QLoRA) and DPO differ only in the loss of a step.

One optimizer step = ``grad_accum`` micro-batches; the loss is normalised by the target tokens of the whole step
(see packing.py). Trainable weights stored in bf16/fp16 are stepped through fp32 master copies (master_weights.py),
so updates below their precision accumulate. A checkpoint after every ``save_every`` steps holds everything needed
to continue as if the run had never stopped: a resumed run rebuilds the epoch's batches from the seed and skips the
ones already done.
"""

from __future__ import annotations

import json
import math
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hanlin.plugins.finetuners import checkpoint
from hanlin.plugins.finetuners.config import TuneConfig
from hanlin.plugins.finetuners.cpu_allocator import keep_freed_memory
from hanlin.plugins.finetuners.data import RunData, prepare
from hanlin.plugins.finetuners.losses import sequence_logprobs, token_loss_sum
from hanlin.plugins.finetuners.master_weights import MasterWeights
from hanlin.plugins.finetuners.model_setup import LoadedBase, load_base, trainable_parameters, wrap_for_method
from hanlin.plugins.finetuners.packing import Row, collate

Progress = Callable[[dict[str, Any]], None]


@dataclass
class TuneResult:
    output_dir: Path
    steps: int
    losses: list[float] = field(default_factory=list)
    eval: list[dict[str, float]] = field(default_factory=list)
    tokens: int = 0  # tokens of the batches trained on this process (inputs, without padding)
    seconds: float = 0.0
    peak_memory_mb: float = 0.0
    resumed_from: int = 0
    exported: dict[str, Path] = field(default_factory=dict)
    summary: str = ""

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def lr_lambda(config: TuneConfig, total: int) -> Callable[[int], float]:
    warmup = config.warmup_steps or int(config.warmup_ratio * total)

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if config.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1 + math.cos(math.pi * progress)) if config.schedule == "cosine" else 1.0 - progress

    return factor


def peak_memory_mb(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class Trainer:
    """Runs one config. ``stop_after`` ends the loop after that many steps of this process (tests and benchmarks);
    ``base`` reuses an already loaded base model (benchmarks compare settings on one load)."""

    def __init__(self, config: TuneConfig, *, progress: Progress | None = None, cache_dir: Path | None = None,
                 base: LoadedBase | None = None) -> None:
        self.config = config
        self.progress = progress or (lambda _: None)
        self.base = base or load_base(config, cache_dir)
        self.data: RunData = prepare(config, self.base.tokenizer, self.base.spec)
        import torch

        torch.manual_seed(config.seed)  # the adapter's initial weights come from this seed
        self.model = wrap_for_method(self.base, config)
        self.out = Path(config.output_dir)
        self.fused = config.kernels == "triton" or (config.kernels == "auto" and self.base.device.startswith("cuda"))

    # ---- one step -------------------------------------------------------------------------------
    def _batch(self, rows: list[Row]) -> dict[str, Any]:
        batch = collate(rows, self.base.tokenizer.pad_token_id)
        return {k: v.to(self.base.device) for k, v in batch.items()}

    def _sft_loss(self, rows: list[Row], denominator: int) -> Any:
        total, _ = token_loss_sum(self.model, self._batch(rows), self.fused)
        return total / denominator

    def _dpo_loss(self, rows: list[Row], denominator: int) -> Any:
        """DPO (Rafailov et al. 2023): -log sigmoid(beta * (policy margin - reference margin)); the reference is the
        same model with its LoRA adapter switched off, so no second copy of the weights is kept."""
        import torch
        import torch.nn.functional as F

        batch = self._batch(rows)
        half = len(rows) // 2
        policy = sequence_logprobs(self.model, batch)
        with torch.no_grad(), self.model.disable_adapter():
            reference = sequence_logprobs(self.model, batch)
        margin = (policy[:half] - policy[half:]) - (reference[:half] - reference[half:])
        return -F.logsigmoid(self.config.dpo_beta * margin).sum() / denominator

    def _step_denominator(self, group: list[list[Row]]) -> int:
        if self.data.preference:
            return sum(len(rows) // 2 for rows in group)  # pairs
        return max(1, sum(r.n_targets for rows in group for r in rows))

    def _loss(self, rows: list[Row], denominator: int) -> Any:
        return self._dpo_loss(rows, denominator) if self.data.preference else self._sft_loss(rows, denominator)

    # ---- evaluation -----------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """Mean loss per target token over the held-out split (DPO: the chosen replies' NLL), and its perplexity."""
        import torch

        total, count = 0.0, 0
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            for rows in self.data.eval_batches():
                loss, n = self._eval_loss(rows)
                total, count = total + loss, count + n
        self.model.train(was_training)
        total, count = self._global_sums(total, count)
        mean = total / max(1, count)
        return {"eval_loss": mean, "eval_ppl": math.exp(min(mean, 50))}

    # ---- what a distributed run (distributed.py) replaces: checkpoints, the step's loss, who writes ----------
    writes = True  # whether this process writes metrics and TensorBoard (one rank of a distributed run does)

    def _global_loss(self, step_loss: float) -> float:
        return step_loss

    def _eval_loss(self, rows: list[Row]) -> tuple[float, int]:
        loss, n = token_loss_sum(self.model, self._batch(rows), self.fused)
        return float(loss), n

    def _global_sums(self, total: float, count: int) -> tuple[float, int]:
        return total, count

    def _save(self, folder: Path, optimizer: Any, scheduler: Any, position: checkpoint.Position) -> None:
        checkpoint.save(folder, model=self.model, optimizer=optimizer, scheduler=scheduler, position=position,
                        config=self.config, keep=self.config.keep_checkpoints)

    def _restore(self, folder: Path, optimizer: Any, scheduler: Any) -> checkpoint.Position:
        if (folder / "dcp").is_dir():
            from hanlin.errors import ConfigurationError

            raise ConfigurationError(f"checkpoint {folder} was written by a distributed run (torch.distributed."
                                     "checkpoint); resume it with --nproc N (any N, 1 included)")
        return checkpoint.restore(folder, model=self.model, optimizer=optimizer, scheduler=scheduler,
                                  config=self.config)

    # ---- the loop -------------------------------------------------------------------------------
    def train(self, *, resume: bool = False, stop_after: int | None = None) -> TuneResult:
        import torch

        c = self.config
        keep_freed_memory(self.base.device)  # no page faults for the buffers every step reallocates
        params = list(trainable_parameters(self.model).values())
        optimizer = MasterWeights(params, lambda ps: torch.optim.AdamW(ps, lr=c.learning_rate,
                                                                       weight_decay=c.weight_decay))
        total = self.data.total_steps()
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer.optimizer, lr_lambda(c, total))
        position = checkpoint.Position()
        ckpt_dir = self.out / "checkpoints"
        if resume and (last := checkpoint.latest(ckpt_dir)) is not None:
            position = self._restore(last, optimizer, scheduler)
        result = TuneResult(self.out, position.step, resumed_from=position.step)
        self.out.mkdir(parents=True, exist_ok=True)
        metrics = (self.out / "metrics.jsonl").open("a" if resume else "w", encoding="utf-8") if self.writes \
            else open(os.devnull, "w", encoding="utf-8")
        board = _tensorboard(self.out) if self.writes else None
        self.model.train()
        started, done_here = time.perf_counter(), 0
        epoch_batches = self.data.micro_batches(position.epoch)
        try:
            while position.step < total and (stop_after is None or done_here < stop_after):
                if position.batch >= len(epoch_batches):
                    position.epoch, position.batch = position.epoch + 1, 0
                    epoch_batches = self.data.micro_batches(position.epoch)
                    continue
                group = epoch_batches[position.batch : position.batch + c.grad_accum]
                denominator = self._step_denominator(group)
                step_loss = 0.0
                for rows in group:
                    loss = self._loss(rows, denominator)
                    loss.backward()
                    step_loss += float(loss.detach())
                    result.tokens += sum(len(r.input_ids) for r in rows)
                optimizer.step(c.max_grad_norm)  # clipped and applied in fp32 (master_weights.py)
                scheduler.step()
                optimizer.zero_grad()
                position.batch += len(group)
                position.step += 1
                position.tokens += sum(r.n_targets for rows in group for r in rows)
                done_here += 1
                step_loss = self._global_loss(step_loss)
                result.losses.append(step_loss)
                record = self._record(position, step_loss, scheduler, total, result, started)
                if c.eval_every and position.step % c.eval_every == 0:
                    record.update(self.evaluate())
                    result.eval.append({"step": position.step, **{k: record[k] for k in ("eval_loss", "eval_ppl")}})
                if position.step % c.log_every == 0 or position.step == total or "eval_loss" in record:
                    metrics.write(json.dumps(record) + "\n")
                    metrics.flush()
                    if board is not None:
                        for key in ("loss", "lr", "tokens_per_s", "eval_loss"):
                            if key in record:
                                board.add_scalar(f"train/{key}", record[key], position.step)
                self.progress(record)
                if c.save_every and (position.step % c.save_every == 0 or position.step == total):
                    self._save(ckpt_dir, optimizer, scheduler, position)
        finally:
            metrics.close()
            if board is not None:
                board.close()
        result.steps = position.step
        result.seconds = time.perf_counter() - started
        result.peak_memory_mb = peak_memory_mb(self.base.device)
        self.model.eval()
        return result

    def _record(self, position: checkpoint.Position, loss: float, scheduler: Any, total: int, result: TuneResult,
                started: float) -> dict[str, Any]:
        elapsed = time.perf_counter() - started
        return {"step": position.step, "of": total, "epoch": position.epoch, "loss": round(loss, 6),
                "lr": scheduler.get_last_lr()[0], "target_tokens": position.tokens,
                "tokens_per_s": round(result.tokens / elapsed, 1) if elapsed else 0.0,
                "memory_mb": round(peak_memory_mb(self.base.device), 1)}


def _tensorboard(out: Path) -> Any:
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(out / "tensorboard"))
