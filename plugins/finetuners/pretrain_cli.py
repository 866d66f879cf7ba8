"""The ``hanlin pretrain`` and ``hanlin bench pretrain`` commands, added by the finetuners' register_commands.

Flags map one to one onto PretrainConfig's fields (a YAML file gives the same keys); nothing heavy is imported
until a command runs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


def add_commands(cli: Any, typer: Any) -> None:
    from hanlin.plugins.finetuners.launcher import with_launch_flags

    @cli.command("pretrain")
    @with_launch_flags
    def pretrain_cmd(
        config: Path | None = typer.Argument(None, help="YAML config (its keys: the options below)."),
        data: str | None = typer.Option(None, "--data", "-d", help="Packed token folder (from `hanlin data`)."),
        eval_data: str | None = typer.Option(None, "--eval-data", help="A second packed folder held out."),
        eval_split: float | None = typer.Option(None, "--eval-split", help="Share of sequences held out instead."),
        eval_sequences: int | None = typer.Option(None, "--eval-sequences", help="Held-out sequences evaluated."),
        tokenizer: str | None = typer.Option(None, "--tokenizer", help="Tokenizer folder or model (default: data's)."),
        preset: str | None = typer.Option(None, "--preset", help="1m, 3m, tiny, small, 100m, 350m or 1b."),
        model_config_file: str | None = typer.Option(None, "--model-config", help="JSON of LlamaConfig fields."),
        init_from: str | None = typer.Option(None, "--init-from", help="Continue pre-training this model."),
        output_dir: str | None = typer.Option(None, "--out", "-o", help="Checkpoints, metrics and exports."),
        max_steps: int | None = typer.Option(None, "--max-steps"),
        max_minutes: float | None = typer.Option(None, "--max-minutes", help="Fit the run to this many minutes."),
        epochs: float | None = typer.Option(None, "--epochs"),
        learning_rate: float | None = typer.Option(None, "--lr"),
        batch_size: int | None = typer.Option(None, "--batch-size"),
        grad_accum: int | None = typer.Option(None, "--grad-accum"),
        eval_every: int | None = typer.Option(None, "--eval-every"),
        save_every: int | None = typer.Option(None, "--save-every", help="Checkpoint every N steps."),
        export: list[str] | None = typer.Option(None, "--export", help="merged, gguf (repeatable)."),
        threads: int | None = typer.Option(None, "--threads"),
        checkpointing: bool = typer.Option(False, "--activation-checkpointing",
                                           help="Recompute activations in the backward pass (less memory)."),
        compile_layers: bool = typer.Option(False, "--compile",
                                            help="torch.compile each decoder layer (pays in runs of a few hundred "
                                                 "steps: the first compile takes ~20 s on 2 cores)."),
        resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint in --out."),
        seed: int | None = typer.Option(None, "--seed"),
        launch: Any = None,
    ) -> None:
        """Pre-train a llama-style model from scratch (or continue one) on packed token shards."""
        from hanlin.cli import fail
        from hanlin.errors import HanlinError
        from hanlin.plugins.finetuners.pretrain import pretrain

        settings = {"data": data, "eval_data": eval_data, "eval_split": eval_split, "tokenizer": tokenizer,
                    "eval_sequences": eval_sequences,
                    "preset": preset, "model_config_file": model_config_file, "init_from": init_from,
                    "output_dir": output_dir, "max_steps": max_steps, "max_minutes": max_minutes, "epochs": epochs,
                    "learning_rate": learning_rate, "batch_size": batch_size, "grad_accum": grad_accum,
                    "eval_every": eval_every, "save_every": save_every, "export": export, "threads": threads,
                    "gradient_checkpointing": checkpointing or None, "compile": compile_layers or None,
                    "seed": seed}
        try:
            if launch is not None:  # --nproc/--nnodes: torchrun + FSDP2 (launcher.py, dist_pretrain.py)
                from hanlin.plugins.finetuners.dist_pretrain import launch_pretrain

                result = launch_pretrain(config, settings, launch, resume=resume)
            else:
                result = pretrain(config, resume=resume, progress=print_progress, **settings)
        except HanlinError as exc:
            fail(str(exc))
        sys.stderr.write("\n")
        print(result.summary)

    from hanlin.cli_bench import bench_group, print_tables

    bench = bench_group(cli)
    if bench is None:
        return

    @bench.command("pretrain")
    def bench_pretrain_cmd(
        preset: str = typer.Option("tiny", "--preset", help="Model size preset."),
        docs: int = typer.Option(48, "--docs", help="Standard-library source files in the corpus."),
        seq_len: int = typer.Option(1024, "--seq-len"),
        batch_size: int = typer.Option(4, "--batch-size"),
        steps: int = typer.Option(6, "--steps", help="Optimizer steps per loop."),
        tokenizer: str = typer.Option("train", "--tokenizer",
                                      help="'train' (an 8k BPE fitted to the documents), a folder or a model."),
        threads: int | None = typer.Option(None, "--threads"),
        repeats: int = typer.Option(1, "--repeats", help="Run every loop this many times, in alternating order, "
                                    "and report each loop's median (a shared machine drifts between loops)."),
        as_json: bool = typer.Option(False, "--json", help="Print the table as JSON."),
    ) -> None:
        """Pre-training tokens/s and MFU: hanlin's loop vs a plain transformers Trainer, same model and data."""
        from hanlin.plugins.finetuners.pretrain_bench import bench_pretrain

        print_tables(lambda: bench_pretrain(preset=preset, docs=docs, seq_len=seq_len, batch_size=batch_size,
                                            steps=steps, tokenizer=tokenizer, threads=threads, repeats=repeats),
                     as_json)


def print_progress(record: dict[str, Any]) -> None:
    line = (f"step {record['step']}/{record['of']}  loss {record['loss']:.4f}  lr {record['lr']:.2e}  "
            f"{record['tokens_per_s']:.0f} tok/s  MFU {100 * record.get('mfu', 0):.1f}%")
    if "eval_loss" in record:
        line += f"  eval {record['eval_loss']:.4f} (ppl {record['eval_ppl']:.2f})"
    sys.stderr.write("\r" + line.ljust(100) if sys.stderr.isatty() else line + "\n")
    sys.stderr.flush()
