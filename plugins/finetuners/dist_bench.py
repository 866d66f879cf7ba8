"""``hanlin bench tune --nproc N``: tokens/s and memory of the same LoRA run on 1 process and on N (FSDP2), in the
same benchmark run, on the same data and global batch.

Every configuration goes through the real launcher (torchrun), so start-up is paid alike and timed out of the
measurement: each rank trains one warm-up step, then the timed run. Three numbers per configuration:
- tokens/s: real tokens of the global batches per second of the slowest rank;
- peak training memory per process: the resident-set high-water mark (VmHWM) from just after the model is loaded
  and sharded to the end of training. It is reset there (``/proc/self/clear_refs``) because loading itself reads
  the full base on every rank before FSDP2 shards it; what FSDP2 saves is what the rank holds while it trains;
- model state per process: bytes of the weights, gradients and optimizer state this process keeps (its shards).
Scaling efficiency = tokens/s on N processes / (N x tokens/s of 1 process with 1/N of the cores): the cores are
shared, so it says how much of the ideal speed-up the processes keep (communication, duplicated work).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from hanlin.plugins.finetuners.bench import synthetic_chats


def reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def model_state_mb(model: Any, optimizer_state: dict[str, Any] | None = None) -> float:
    """Bytes this process holds for weights (+ their gradients' size for trainable ones, + optimizer moments)."""
    total = 0
    for p in model.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        size = local.numel() * local.element_size()
        total += size * (4 if p.requires_grad else 1)  # weight, gradient, Adam's two moments
    return total / 2**20


def rank_bench(job: dict[str, Any], ctx: Any) -> dict[str, Any] | None:
    """One configuration on one rank (launcher entry)."""
    import torch.distributed as dist

    from hanlin.plugins.finetuners.config import TuneConfig
    from hanlin.plugins.finetuners.distributed import DistributedTrainer
    from hanlin.plugins.finetuners.trainer import Trainer

    config = TuneConfig.model_validate(job["config"])
    trainer: Any = DistributedTrainer(config, ctx) if job["fsdp"] else Trainer(config)
    reset = reset_peak_rss()
    trainer.train(stop_after=1)  # warm-up: allocator and thread pools, out of the timing
    result = trainer.train()
    row = {"peak_mb": peak_rss_mb() if reset else result.peak_memory_mb, "state_mb": model_state_mb(trainer.model)}
    rows: list[Any] = [None] * ctx.world
    dist.all_gather_object(rows, row)
    if ctx.rank != 0:
        return None
    return {"steps": result.steps, "tokens": result.tokens, "seconds": result.seconds,
            "tokens_per_s": result.tokens / result.seconds if result.seconds else 0.0,
            "peak_mb": max(r["peak_mb"] for r in rows), "state_mb": max(r["state_mb"] for r in rows),
            "peak_reset": reset}


def bench_tune_nproc(model: str = "smollm2", *, nproc: int = 2, samples: int = 32, max_length: int = 256,
                     batch_size: int = 4, steps: int = 4, cores: int | None = None, seed: int = 0) -> list[Any]:
    from hanlin.bench import BenchTable
    from hanlin.plugins.finetuners.config import load_config
    from hanlin.plugins.finetuners.launcher import LaunchOptions, launch

    cores = cores or os.cpu_count() or 1
    per_proc = max(1, cores // nproc)
    configs = [("1 process, unsharded", 1, cores, False),
               (f"1 process, {per_proc} thread(s), unsharded", 1, per_proc, False),
               (f"{nproc} processes, FSDP2", nproc, per_proc, True)]
    if per_proc == cores:
        configs.pop(1)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="hanlin-bench-nproc-") as tmp:
        data = Path(tmp) / "chats.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in synthetic_chats(samples, max_length // 2, seed)))
        for name, procs, threads, fsdp in configs:
            cfg = load_config(None, model=model, data=[str(data)], method="lora", max_steps=steps,
                              batch_size=batch_size, max_length=max_length, threads=threads, seed=seed,
                              output_dir=str(Path(tmp) / f"out-{procs}-{threads}"), log_every=1000,
                              lora={"r": 16, "alpha": 32, "dropout": 0.0})
            out = launch("hanlin.plugins.finetuners.dist_bench:rank_bench",
                         {"config": cfg.model_dump(mode="json"), "fsdp": fsdp}, LaunchOptions(nproc=procs))
            assert out is not None
            results[name] = out
    single = results[configs[0][0]]
    per_core = results[configs[-2][0]]
    sharded = results[configs[-1][0]]
    efficiency = sharded["tokens_per_s"] / (nproc * per_core["tokens_per_s"]) if per_core["tokens_per_s"] else 0.0
    rows = []
    for name, procs, threads, _ in configs:
        r = results[name]
        rows.append([name, f"{procs} x {threads}", r["steps"], r["tokens"], f"{r['seconds']:.1f}",
                     f"{r['tokens_per_s']:.0f}", f"{r['tokens_per_s'] / single['tokens_per_s']:.2f}x",
                     f"{r['peak_mb']:.0f}", f"{r['state_mb']:.0f}"])
    table = BenchTable(
        title=f"LoRA tuning of {model} on 1 vs {nproc} processes (torchrun + FSDP2), {steps} steps of the same "
              f"global batch ({batch_size} packed rows of <= {max_length} tokens), {cores} cores",
        columns=["configuration", "procs x threads", "steps", "tokens", "seconds", "tok/s", "vs 1 process",
                 "peak train MB / proc", "model state MB / proc"],
        rows=rows,
        target=f"scaling efficiency >= 0.7 ({nproc} processes vs {nproc} x one process on 1/{nproc} of the cores)",
        met=efficiency >= 0.7,
        notes=[f"scaling efficiency = {efficiency:.2f}; {nproc} processes / 1 process on all cores = "
               f"{sharded['tokens_per_s'] / single['tokens_per_s']:.2f}x",
               f"peak training memory per process, FSDP2 / unsharded = {sharded['peak_mb'] / single['peak_mb']:.2f}; "
               f"model state = {sharded['state_mb'] / single['state_mb']:.2f}",
               "peak train MB: VmHWM reset after loading and sharding (loading reads the full base on each rank)"
               if sharded["peak_reset"] else "peak train MB: max RSS of the process (VmHWM could not be reset)",
               "unsharded N-process data parallelism (DDP) would hold the 1-process model state in every process"],
    )
    return [table]
