"""``hanlin bench pretrain``: tokens/s and MFU of hanlin's pre-training loop beside a plain transformers ``Trainer``
on the same model, the same documents and the same batch shape, in the same run (one process per loop).

The documents are real and offline: the installed packages' METADATA descriptions and standard-library modules,
tokenized by a BPE fitted to them (or a tokenizer folder you name). Three loops train the same freshly initialised
llama for the same number of optimizer steps of ``batch_size`` rows of up to ``seq_len`` tokens:

- hanlin: the documents packed into full rows (hanlin-packed-v1), per-document positions and attention (varlen);
- transformers Trainer, per-document rows: each document cut into ``seq_len`` pieces, batches padded to their
  longest row with an attention mask (DataCollatorForLanguageModeling): the same per-document attention as hanlin,
  the way most HF pre-training scripts that respect document boundaries feed it;
- transformers Trainer, concatenated chunks (run_clm.py's ``group_texts``): no padding, but attention runs across
  document boundaries, which is a different (cheaper, less correct) computation, shown for reference.

A fourth row is hanlin's loop with ``--compile`` (each decoder layer through torch.compile, compile_layers.py).
Each loop runs in a fresh process of its own, so none inherits another's heap, threads or allocator settings.
hanlin's loop raises glibc's allocator thresholds on a CPU (cpu_allocator.py), which a plain Trainer script does
not; a fifth, reference row runs the per-document Trainer with the same setting, so the table separates what the
allocator gives from what packing gives.

Tokens/s counts real tokens only (padding is work, not progress) over the timed steps' total time. The first step
of each loop is left out of the clock (allocator and thread-pool start-up, and the compile). Not the median step:
the padded Trainer's steps differ in work (each batch is padded to its own longest row). On 2 shared cores a loop's
time moves by up to a third between runs: ``--repeats N`` runs every loop N times in alternating order and reports
each loop's median, with every repeat's ratio beside it. MFU uses the same FLOPs per token and the same device
peak for all rows (pretrain_flops.py).
"""

from __future__ import annotations

import importlib.metadata
import json
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

from hanlin.plugins.finetuners import cpu_allocator
from hanlin.plugins.finetuners.bench import run_worker


def bench_documents(n: int) -> list[str]:
    """Up to ``n`` real documents: package descriptions, then standard-library modules (in name order)."""
    docs = []
    for dist in sorted(importlib.metadata.distributions(), key=lambda d: d.metadata.get("Name") or ""):
        text = dist.metadata.get_payload() if hasattr(dist.metadata, "get_payload") else None
        if text and len(text) > 200:
            docs.append(text)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.glob("*.py")):
        docs.append(path.read_text(encoding="utf-8", errors="replace"))
    # interleave the two kinds so any prefix mixes short descriptions and long modules
    half = len(docs) // 2
    mixed = [d for pair in zip(docs[:half], docs[half:]) for d in pair]
    return mixed[:n]


ROWS = {  # name -> the loop that one subprocess runs
    "hanlin (packed, per-document attention)": {"loop": "hanlin", "compile": False},
    "hanlin, --compile (the same, decoder layers through torch.compile)": {"loop": "hanlin", "compile": True},
    "transformers Trainer, per-document rows (padded)": {"loop": "trainer", "rows": "per-document"},
    "transformers Trainer, concatenated chunks (attention crosses documents)": {"loop": "trainer",
                                                                                "rows": "concatenated"},
    "transformers Trainer, per-document rows, with hanlin's allocator thresholds (reference)": {
        "loop": "trainer", "rows": "per-document", "keep_freed_memory": True},
}
HANLIN, COMPILED, PADDED, _, KEPT = ROWS


def bench_pretrain(*, preset: str = "tiny", docs: int = 48, seq_len: int = 1024, batch_size: int = 4,
                   steps: int = 6, tokenizer: str = "train", threads: int | None = None,
                   repeats: int = 1) -> list[Any]:
    from hanlin.bench import BenchTable
    from hanlin.errors import ConfigurationError

    if steps < 3:
        raise ConfigurationError(f"--steps {steps}: need at least 3 (the first step of each loop is not timed)")
    if repeats < 1:
        raise ConfigurationError(f"--repeats {repeats}: run each loop at least once")
    texts = bench_documents(docs)
    with tempfile.TemporaryDirectory(prefix="hanlin-bench-pretrain-") as tmp:
        tok_folder = _tokenizer(tokenizer, texts, Path(tmp))
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(tok_folder))
        ids = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts]
        packed = _write_packed(Path(tmp) / "packed", tok_folder, ids, seq_len, tok)
        (Path(tmp) / "ids.json").write_text(json.dumps(ids))
        common = {"tmp": tmp, "packed": str(packed), "tokenizer": str(tok_folder), "preset": preset,
                  "seq_len": seq_len, "batch_size": batch_size, "steps": steps, "threads": threads}
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in ROWS}
        # the architecture the Trainer rows build: hanlin's, from a trainer that never trains in this process
        fields = _hanlin_trainer(packed, tok_folder, Path(tmp) / "fields", preset, batch_size, steps, None,
                                 False).fields
        for r in range(repeats):
            order = list(ROWS) if r % 2 == 0 else list(reversed(ROWS))  # drift weighs on every loop alike
            for name in order:
                job = {**common, **ROWS[name], "out": str(Path(tmp) / f"run{r}-{len(runs[name])}"), "fields": fields}
                runs[name].append(run_worker(job, __name__, f"loop {name!r}"))
    results = {name: _median_run(done) for name, done in runs.items()}
    hanlin_run, compiled, padded, kept = (results[k] for k in (HANLIN, COMPILED, PADDED, KEPT))
    if not hanlin_run["kept_freed_memory"]:
        del results[KEPT]  # the setting was not applied anywhere: that row is the padded one again
    fields, flops, peak, source = (hanlin_run[k] for k in ("fields", "flops", "peak", "peak_source"))
    base = hanlin_run["tokens_per_s"]
    rows = []
    for name, r in results.items():
        mfu = r["tokens_per_s"] * flops / peak if peak else 0.0
        rows.append([name, r["timed_steps"], r["tokens"], f"{r['padding']:.0%}", f"{r['seconds']:.1f}",
                     f"{r['tokens_per_s']:.0f}", f"{100 * mfu:.1f}%", f"{base / r['tokens_per_s']:.2f}x"])
    ratio = base / padded["tokens_per_s"]
    compiled_ratio = compiled["tokens_per_s"] / padded["tokens_per_s"]
    each = [a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(runs[HANLIN], runs[PADDED])]
    spread = (f"; each repeat: {', '.join(f'{x:.2f}x' for x in each)} (medians of {repeats} runs in the table)"
              if repeats > 1 else "; one run of each loop: run with --repeats 3 before reading a ratio")
    if hanlin_run["kept_freed_memory"]:
        allocator = (f"hanlin's loop keeps freed memory for the next step (cpu_allocator.py), a plain Trainer script "
                     f"does not; the reference row is the per-document Trainer with the same setting: hanlin / that "
                     f"row = {base / kept['tokens_per_s']:.2f}x, what packing and the loop give without it")
    else:
        allocator = "the allocator's thresholds were left alone (not a CPU, not glibc, or HANLIN_KEEP_FREED_MEMORY=0)"
    table = BenchTable(
        title=f"pre-training a {preset} llama ({fields['num_hidden_layers']} layers, hidden {fields['hidden_size']}, "
              f"vocab {fields['vocab_size']}) on {len(texts)} real documents, {steps} steps of {batch_size} x "
              f"{seq_len}, each loop in a fresh process",
        columns=["loop", "timed steps", "real tokens", "padding", "seconds", "real tok/s", "MFU",
                 "hanlin speed-up"],
        rows=rows,
        target="hanlin >= 1.3x the transformers Trainer's real tok/s on the same per-document computation",
        met=ratio >= 1.3,
        notes=[f"hanlin / Trainer per-document = {ratio:.2f}x; with --compile {compiled_ratio:.2f}x (its first step, "
               f"compile included, took {compiled['first_step']:.1f} s; eager {hanlin_run['first_step']:.1f} s)"
               + spread,
               f"MFU against {peak / 1e12:.3f} TFLOP/s ({source}), {flops / 1e6:.1f} MFLOP per token", allocator,
               "the concatenated-chunks row computes something else (tokens attend to the previous document); "
               "it is the speed of a loop without any boundary handling, for reference"],
    )
    return [table]


def _median_run(done: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median tokens/s (the lower middle one of an even count)."""
    return sorted(done, key=lambda r: r["tokens_per_s"])[(len(done) - 1) // 2]


def _worker(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    if job["threads"]:
        torch.set_num_threads(job["threads"])
    if job["loop"] == "hanlin":
        trainer = _hanlin_trainer(Path(job["packed"]), Path(job["tokenizer"]), Path(job["out"]), job["preset"],
                                  job["batch_size"], job["steps"], job["threads"], job["compile"])
        return {**_train(trainer, job["steps"]), "fields": trainer.fields, "flops": trainer.flops_per_token,
                "peak": trainer.peak, "peak_source": trainer.peak_source, "kept_freed_memory": cpu_allocator.applied()}
    from transformers import AutoTokenizer

    if job.get("keep_freed_memory"):
        cpu_allocator.keep_freed_memory("cpu")
    ids = json.loads((Path(job["tmp"]) / "ids.json").read_text())
    rows = (_per_document_rows if job["rows"] == "per-document" else _concatenated_rows)(ids, job["seq_len"])
    tok = AutoTokenizer.from_pretrained(job["tokenizer"])
    return _hf_trainer(job["fields"], rows, tok, job["batch_size"], job["steps"], Path(job["out"]))


def _tokenizer(name: str, texts: list[str], tmp: Path) -> Path:
    if name == "train":
        from hanlin.plugins.finetuners.pretrain_tokenizer import train_tokenizer

        return train_tokenizer(texts, tmp / "tokenizer", vocab_size=8192)
    from hanlin.plugins.finetuners.pretrain import resolve_tokenizer_folder

    return resolve_tokenizer_folder(name)


def _write_packed(folder: Path, tok_folder: Path, ids: list[list[int]], seq_len: int, tok: Any) -> Path:
    from hanlin.plugins.data.packed import PackedWriter

    with PackedWriter(folder, tokenizer=str(tok_folder), seq_len=seq_len, eos_id=tok.eos_token_id,
                      vocab_size=len(tok)) as writer:
        for doc in ids:
            writer.add(doc[:-1])  # the writer adds the eos
    return folder


def _timing(stamps: list[float], tokens: int, steps: int) -> dict[str, Any]:
    """Seconds and real tokens/s of the timed steps (2..steps) from the end-of-step stamps."""
    timed = stamps[: steps]
    seconds = timed[-1] - timed[0]
    return {"timed_steps": len(timed) - 1, "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}


def _hanlin_trainer(packed: Path, tok_folder: Path, out: Path, preset: str, batch_size: int, steps: int,
                    threads: int | None, compile_layers: bool) -> Any:
    from hanlin.plugins.finetuners.pretrain import PretrainTrainer
    from hanlin.plugins.finetuners.pretrain_config import load_pretrain_config

    cfg = load_pretrain_config(None, data=str(packed), tokenizer=str(tok_folder), preset=preset, output_dir=str(out),
                               batch_size=batch_size, max_steps=steps, learning_rate=1e-3, export=[],
                               threads=threads, log_every=1000, compile=compile_layers)
    return PretrainTrainer(cfg)


def _train(trainer: Any, steps: int) -> dict[str, Any]:
    stamps: list[float] = []
    trainer.progress = lambda _: stamps.append(time.perf_counter())
    stamps.append(time.perf_counter())  # the first step's clock starts here: its time includes the compile
    trainer.train()
    rows = trainer.data.micro_batches(0)[1:steps]
    tokens = sum(len(r.input_ids) for batch in rows for r in batch)
    return {**_timing(stamps[1:], tokens, steps), "padding": 0.0, "first_step": stamps[1] - stamps[0]}


def _per_document_rows(ids: list[list[int]], seq_len: int) -> list[list[int]]:
    return [doc[i : i + seq_len] for doc in ids for i in range(0, len(doc), seq_len) if len(doc[i : i + seq_len]) > 1]


def _concatenated_rows(ids: list[list[int]], seq_len: int) -> list[list[int]]:
    stream = [t for doc in ids for t in doc]
    return [stream[i : i + seq_len] for i in range(0, len(stream) - seq_len + 1, seq_len)]


def _hf_trainer(fields: dict[str, Any], rows: list[list[int]], tok: Any, batch_size: int, steps: int,
                out: Path) -> dict[str, Any]:
    """transformers' Trainer and collator, as a plain HF pre-training script uses them."""
    import torch
    from transformers import (DataCollatorForLanguageModeling, LlamaConfig, LlamaForCausalLM, Trainer,
                              TrainerCallback, TrainingArguments)

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**fields))
    model.set_attn_implementation("sdpa")
    collate = DataCollatorForLanguageModeling(tok, mlm=False)
    real: list[int] = []
    shapes: list[int] = []

    def counting(batch: list[dict[str, Any]]) -> Any:
        out = collate(batch)
        real.append(int(out["attention_mask"].sum()) if "attention_mask" in out else out["input_ids"].numel())
        shapes.append(out["input_ids"].numel())
        return out

    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            stamps.append(time.perf_counter())

    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=batch_size, max_steps=steps,
                             learning_rate=1e-3, lr_scheduler_type="cosine", warmup_steps=int(0.05 * steps), weight_decay=0.1,
                             max_grad_norm=1.0, logging_strategy="no", save_strategy="no", report_to=[],
                             use_cpu=not torch.cuda.is_available(), disable_tqdm=True, seed=0,
                             dataloader_num_workers=0)
    dataset = [{"input_ids": r} for r in rows]
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=counting,
                      callbacks=[Clock()])
    trainer.train()
    tokens = sum(real[1:steps])
    return {**_timing(stamps, tokens, steps), "padding": 1 - tokens / max(1, sum(shapes[1:steps]))}


if __name__ == "__main__":
    print(json.dumps(_worker(json.loads(sys.argv[1]))))
