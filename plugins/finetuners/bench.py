"""``hanlin bench tune``: LoRA training speed and memory, packed vs unpacked vs a plain transformers Trainer + peft
loop, on the same mixed-length data in the same run.

Each configuration runs in its own subprocess so its peak memory (the process's maximum resident set; CUDA's
max allocated on a GPU) is its own, and each trains one epoch over the same samples with the same LoRA settings.
Tokens/s counts real tokens only (padding is work, not progress), which is the quantity packing improves.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CONFIGS = ("hanlin packed", "hanlin unpacked", "transformers Trainer + peft")
WORDS = ("the model reads each token and the answer follows from the data we gave it while the loss goes down "
         "slowly as steps pass").split()


def synthetic_chats(n: int, max_words: int, seed: int = 0, median_words: int = 40) -> list[dict[str, Any]]:
    """Chats with log-normal reply lengths (median ``median_words``, sigma 1, capped at ``max_words``): the long
    tail of real chat and trace data (ShareGPT's lengths are roughly log-normal), where padding wastes most."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        q_words = rng.randint(4, 24)
        a_words = max(2, min(max_words, int(rng.lognormvariate(math.log(median_words), 1.0))))
        question = " ".join(rng.choice(WORDS) for _ in range(q_words))
        answer = " ".join(rng.choice(WORDS) for _ in range(a_words))
        rows.append({"messages": [{"role": "user", "content": f"({i}) {question}?"},
                                  {"role": "assistant", "content": answer}]})
    return rows


def bench_tune(model: str = "smollm2", *, samples: int = 32, max_length: int = 512, batch_size: int = 8,
               threads: int | None = None, seed: int = 0) -> list[Any]:
    from hanlin.bench import BenchTable

    with tempfile.TemporaryDirectory(prefix="hanlin-bench-tune-") as tmp:
        data = Path(tmp) / "mixed.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in synthetic_chats(samples, max_length // 2, seed)))
        results = {}
        for name in CONFIGS:
            job = {"config": name, "model": model, "data": str(data), "max_length": max_length,
                   "batch_size": batch_size, "threads": threads, "out": str(Path(tmp) / name.split()[-1]),
                   "seed": seed}
            results[name] = run_worker(job)
    packed, unpacked = results[CONFIGS[0]], results[CONFIGS[1]]
    rows = []
    for name in CONFIGS:
        r = results[name]
        rows.append([name, r["steps"], r["tokens"], r["padded_tokens"], f"{r['seconds']:.1f}",
                     f"{r['tokens_per_s']:.0f}", f"{r['peak_mb']:.0f}",
                     f"{packed['tokens_per_s'] / r['tokens_per_s']:.2f}x" if r["tokens_per_s"] else "-"])
    ratio = packed["tokens_per_s"] / unpacked["tokens_per_s"] if unpacked["tokens_per_s"] else 0.0
    table = BenchTable(
        title=f"LoRA tuning of {model}, {samples} mixed-length chats (max_length {max_length}, batch {batch_size}), "
              "one epoch each",
        columns=["configuration", "steps", "real tokens", "tokens incl. padding", "seconds", "real tok/s",
                 "peak MB", "packed speed-up"],
        rows=rows,
        target="packed >= 2x the unpacked real tok/s on mixed lengths",
        met=ratio >= 2.0,
        notes=[f"packed / unpacked = {ratio:.2f}x",
               "packed micro-batches hold as many rows of max_length as make the unpacked batch's real tokens, so "
               "both take about the same number of optimizer steps over the same data",
               "peak MB: each configuration's own subprocess (max RSS on CPU, max allocated on CUDA)"],
    )
    return [table]


def run_worker(job: dict[str, Any], module: str = "hanlin.plugins.finetuners.bench",
               what: str = "") -> dict[str, Any]:
    """``python -m module JOB`` in a fresh process; the last JSON line it prints."""
    proc = subprocess.run([sys.executable, "-m", module, json.dumps(job)], capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        from hanlin.errors import HanlinError

        raise HanlinError(f"benchmark {what or 'configuration ' + repr(job['config'])} failed:\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1])


# ---- one configuration, in its own process ------------------------------------------------------
def _worker(job: dict[str, Any]) -> dict[str, Any]:
    from hanlin.plugins.finetuners.config import load_config
    from hanlin.plugins.finetuners.trainer import Trainer, peak_memory_mb

    packed = job["config"] == CONFIGS[0]
    cfg = load_config(None, model=job["model"], data=[job["data"]], method="lora", epochs=1,
                      batch_size=job["batch_size"], max_length=job["max_length"], packing=packed,
                      learning_rate=1e-4, output_dir=job["out"], threads=job["threads"], seed=job["seed"],
                      log_every=1000, lora={"r": 16, "alpha": 32, "dropout": 0.0})
    trainer = Trainer(cfg)
    if packed:  # same real tokens per optimizer step as an unpacked step, so both take the same number of steps
        mean = sum(len(x.input_ids) for x in trainer.data.samples) / len(trainer.data.samples)
        rows = max(1, round(job["batch_size"] * mean / job["max_length"]))
        trainer.config = trainer.data.config = cfg.model_copy(update={"batch_size": rows})
    _warm_up(trainer)
    if job["config"] == CONFIGS[2]:
        return _hf_trainer(trainer, job)
    batches = trainer.data.micro_batches(0)
    padded = sum(len(rows) * max(len(r.input_ids) for r in rows) for rows in batches)
    result = trainer.train()
    return {"steps": result.steps, "tokens": result.tokens, "padded_tokens": padded, "seconds": result.seconds,
            "tokens_per_s": result.tokens_per_s, "peak_mb": peak_memory_mb(trainer.base.device)}


def _warm_up(trainer: Any) -> None:
    """One forward and backward on a short batch before the clock starts: the first step pays for allocator and
    thread-pool start-up, which would otherwise weigh most on the configuration with the fewest steps."""
    from hanlin.plugins.finetuners.losses import token_loss_sum
    from hanlin.plugins.finetuners.packing import unpacked

    rows = unpacked(sorted(trainer.data.samples, key=lambda s: len(s.input_ids))[:2])
    loss, _ = token_loss_sum(trainer.model, trainer._batch(rows), trainer.fused)
    loss.backward()
    trainer.model.zero_grad(set_to_none=True)


def _hf_trainer(trainer: Any, job: dict[str, Any]) -> dict[str, Any]:
    """The baseline most people write: transformers' Trainer over padded batches, peft's LoRA, the same samples."""

    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from hanlin.plugins.finetuners.trainer import peak_memory_mb

    samples = trainer.data.samples
    trainer.base.model.set_attn_implementation("sdpa")  # the plain loop: transformers' own attention and masks
    rows = [{"input_ids": s.input_ids, "labels": s.labels, "attention_mask": [1] * len(s.input_ids)} for s in samples]
    tokenizer = trainer.base.tokenizer
    args = TrainingArguments(output_dir=job["out"], per_device_train_batch_size=job["batch_size"], num_train_epochs=1,
                             learning_rate=1e-4, lr_scheduler_type="cosine", logging_strategy="no", save_strategy="no",
                             report_to=[], use_cpu=trainer.base.device == "cpu", disable_tqdm=True, seed=job["seed"],
                             dataloader_num_workers=0)
    hf = Trainer(model=trainer.model, args=args, train_dataset=rows,
                 data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100))
    started = time.perf_counter()
    hf.train()
    seconds = time.perf_counter() - started
    tokens = sum(len(s.input_ids) for s in samples)
    bs = job["batch_size"]
    padded = sum(len(group) * max(len(s.input_ids) for s in group)
                 for group in (samples[i : i + bs] for i in range(0, len(samples), bs)))
    return {"steps": math.ceil(len(samples) / bs), "tokens": tokens, "padded_tokens": padded, "seconds": seconds,
            "tokens_per_s": tokens / seconds, "peak_mb": peak_memory_mb(trainer.base.device)}


if __name__ == "__main__":
    print(json.dumps(_worker(json.loads(sys.argv[1]))))
