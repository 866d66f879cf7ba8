"""Registers the built-in training methods as finetuner plugins, and the ``hanlin tune`` command.

A finetuner plugin's factory returns an object with ``tune(config, *, resume, progress, **settings)``; the
command and ``hanlin.tune()`` find it by the config's ``method``, so a third party adds a method (say ORPO) by
registering one more name. Nothing heavy is imported until a run starts.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hanlin import ComponentSpec, hookimpl

METHODS = {
    "full": "supervised fine-tuning of every weight (sft-full)",
    "lora": "supervised fine-tuning of a LoRA adapter (peft); the base stays frozen",
    "qlora": "LoRA over 4-bit base weights (bitsandbytes, CUDA only)",
    "dpo": "direct preference optimisation of a LoRA adapter on prompt/chosen/rejected pairs",
}


class BuiltinFinetuner:
    """One of hanlin's methods; they share one trainer and differ in the model they wrap and the loss."""

    def __init__(self, method: str) -> None:
        self.method = method

    def tune(self, config: Any = None, *, resume: bool = False, progress: Any = None, **settings: Any) -> Any:
        from hanlin.plugins.finetuners.api import tune

        return tune(config, resume=resume, progress=progress, **{"method": self.method, **settings})


PRETRAIN = "pre-training of a llama-style model from scratch (or continued) on packed token shards"


def _pretrain_factory(**options: Any) -> Any:
    from hanlin.plugins.finetuners.pretrain import make_finetuner

    return make_finetuner(**options)


def _factory(method: str) -> Any:
    def make(**options: Any) -> BuiltinFinetuner:
        if options:
            from hanlin.errors import ConfigurationError

            raise ConfigurationError(f"finetuner '{method}' takes no options; put settings in the tune config")
        return BuiltinFinetuner(method)

    return make


@hookimpl
def register_finetuners(register: Any) -> None:
    for name, description in METHODS.items():
        register(ComponentSpec(name=name, factory=_factory(name), description=description))
    register(ComponentSpec(name="pretrain", factory=_pretrain_factory, description=PRETRAIN))


@hookimpl
def register_commands(cli: Any) -> None:
    import typer

    from hanlin.plugins.finetuners.launcher import with_launch_flags

    @cli.command("tune")
    @with_launch_flags
    def tune_cmd(
        config: Path | None = typer.Argument(None, help="YAML config (its keys: see `hanlin tune --help` options)."),
        model: str | None = typer.Option(None, "--model", "-m", help="Base model: name, .gguf file or HF folder."),
        data: list[str] | None = typer.Option(None, "--data", "-d", help="Training file (repeatable)."),
        method: str | None = typer.Option(None, "--method", help="full, lora, qlora or dpo (default lora)."),
        # --out, as every command that writes a folder names it; --output-dir (the config key) stays an alias
        output_dir: str | None = typer.Option(None, "--out", "-o", "--output-dir",
                                              help="Where checkpoints and exports go (config key: output_dir)."),
        max_steps: int | None = typer.Option(None, "--max-steps", help="Stop after this many optimizer steps."),
        epochs: float | None = typer.Option(None, "--epochs"),
        learning_rate: float | None = typer.Option(None, "--lr"),
        batch_size: int | None = typer.Option(None, "--batch-size"),
        max_length: int | None = typer.Option(None, "--max-length"),
        packing: bool | None = typer.Option(None, "--packing/--no-packing", help="Pack samples into full rows."),
        save_every: int | None = typer.Option(None, "--save-every", help="Checkpoint every N steps."),
        export: list[str] | None = typer.Option(None, "--export", help="adapter, merged, gguf (repeatable)."),
        quant: str | None = typer.Option(None, "--quant", help="Quantize the GGUF export: q4_k_m, q5_k_m, q6_k, "
                                                               "q8_0 or q4_0 (config key: gguf_quant)."),
        skip_bad_records: bool = typer.Option(False, "--skip-bad-records", help="Skip malformed rows (counted)."),
        resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint in --out."),
        seed: int | None = typer.Option(None, "--seed"),
        launch: Any = None,
    ) -> None:
        """Fine-tune a model on chats, agent traces, plain text or preference pairs."""
        from hanlin.cli import fail
        from hanlin.errors import HanlinError
        from hanlin.loading import tune

        settings = {"model": model, "data": data, "method": method, "output_dir": output_dir,
                    "max_steps": max_steps, "epochs": epochs, "learning_rate": learning_rate,
                    "batch_size": batch_size, "max_length": max_length, "packing": packing,
                    "save_every": save_every, "export": export, "seed": seed, "gguf_quant": quant,
                    "skip_bad_records": skip_bad_records or None}
        try:
            if launch is not None:  # --nproc/--nnodes: torchrun + FSDP2 (launcher.py)
                from hanlin.plugins.finetuners.config import load_config
                from hanlin.plugins.finetuners.launcher import launch_tune

                result = launch_tune(load_config(config, **settings), launch, resume=resume)
            else:
                result = tune(config, resume=resume, progress=_print_progress, **settings)
        except HanlinError as exc:
            fail(str(exc))
        sys.stderr.write("\n")
        print(result.summary)

    _add_bench(cli, typer)
    from hanlin.plugins.finetuners.pretrain_cli import add_commands as add_pretrain_commands

    add_pretrain_commands(cli, typer)


def _add_bench(cli: Any, typer: Any) -> None:
    from hanlin.cli_bench import bench_group, print_tables

    bench = bench_group(cli)
    if bench is None:
        return

    @bench.command("tune")
    def bench_tune_cmd(
        model: str = typer.Option("smollm2", "--model", "-m", help="Base model to tune."),
        samples: int = typer.Option(32, "--samples", help="Mixed-length chats in the data set."),
        max_length: int = typer.Option(512, "--max-length"),
        batch_size: int = typer.Option(8, "--batch-size"),
        threads: int | None = typer.Option(None, "--threads", help="torch threads (default: torch's choice)."),
        as_json: bool = typer.Option(False, "--json", help="Print the table as JSON."),
        nproc: int | None = typer.Option(None, "--nproc", help="Instead: 1 vs N processes (torchrun + FSDP2), "
                                         "tokens/s, scaling efficiency and memory per process."),
        steps: int = typer.Option(4, "--steps", help="Optimizer steps per configuration (with --nproc)."),
    ) -> None:
        """LoRA tokens/s and peak memory: packed vs unpacked vs transformers Trainer + peft, same data."""
        if nproc:
            from hanlin.plugins.finetuners.dist_bench import bench_tune_nproc

            print_tables(lambda: bench_tune_nproc(model, nproc=nproc, samples=samples, max_length=max_length,
                                                  batch_size=batch_size, steps=steps), as_json)
            return
        from hanlin.plugins.finetuners.bench import bench_tune

        print_tables(lambda: bench_tune(model, samples=samples, max_length=max_length, batch_size=batch_size,
                                        threads=threads), as_json)


def _print_progress(record: dict[str, Any]) -> None:
    line = (f"step {record['step']}/{record['of']}  loss {record['loss']:.4f}  lr {record['lr']:.2e}  "
            f"{record['tokens_per_s']:.0f} tok/s  {record['memory_mb']:.0f} MB")
    if "eval_loss" in record:
        line += f"  eval {record['eval_loss']:.4f} (ppl {record['eval_ppl']:.2f})"
    if sys.stderr.isatty():
        sys.stderr.write("\r" + line.ljust(100))
    else:
        sys.stderr.write(line + "\n")
    sys.stderr.flush()
