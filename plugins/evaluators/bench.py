"""`hanlin bench eval`: likelihood scoring of HellaSwag on SmolLM2, batched beside one item at a time, same run.

Both ways go through the real evaluation path (``evaluate_likelihood``, no prediction cache): "batched" sends
``batch_size`` items (all their choices) to the runtime's ``score`` at once, "one item at a time" sends one item's
choices per call. Each runtime scores one warm-up item first, so loading and first-call costs are not counted. The
two ways should pick the same choices; on the cpu runtime a few may differ, because llama.cpp's quantized kernels
round differently with the batch's shape (the sums move by a fraction of a nat), which the table shows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from hanlin.bench import BenchTable

DEFAULT_MODEL = "smollm2-135m-instruct"


def default_runtimes() -> list[str]:
    """The cpu runtime (the model's own), transformers when installed, and gpu when a CUDA device is there."""
    import importlib.util

    names = []
    if importlib.util.find_spec("llama_cpp") is not None:
        names.append("cpu")
    if importlib.util.find_spec("transformers") is not None:
        names.append("transformers")
        import torch

        if torch.cuda.is_available():
            names.append("gpu")
    return names


def _timed(model: Any, dataset: Any, limit: int, batch_size: int) -> tuple[float, Any]:
    from hanlin.plugins.evaluators.runner import EvalSettings, evaluate_dataset

    settings = EvalSettings(mode="likelihood", limit=limit, batch_size=batch_size)
    start = time.perf_counter()
    result = evaluate_dataset(model, dataset, settings, cache=None)
    return time.perf_counter() - start, result


def bench_eval(model: str = DEFAULT_MODEL, runtimes: Sequence[str] | None = None, limit: int = 100,
               batch_size: int = 16, dataset: str = "hellaswag",
               say: Callable[[str], None] = lambda _: None) -> BenchTable:
    """The table; ``say`` hears a line as each timed run ends (the CLI prints them on stderr: a run takes minutes)."""
    from hanlin.loading import load_model
    from hanlin.plugins.evaluators.datasets import open_dataset

    data = open_dataset(dataset)
    n = len(data.select(limit))
    table = BenchTable(
        title=f"likelihood scoring of {dataset}-{n} on {model}: items/s, batched ({batch_size} items a call) vs one "
              "item at a time",
        columns=["runtime", "items", "batched items/s", "one at a time items/s", "ratio", "acc batched",
                 "acc one at a time", "same picks"],
        target="batched at least as fast as one item at a time on every runtime",
    )
    ratios = []
    for runtime in runtimes or default_runtimes():
        chat_model = load_model(model, runtime=runtime)
        try:
            _timed(chat_model, data, 1, 1)  # warm-up: first-call allocations, lazily made contexts
            batched_s, batched = _timed(chat_model, data, limit, batch_size)
            say(f"{runtime}: {n} items batched in {batched_s:.1f}s")
            single_s, single = _timed(chat_model, data, limit, 1)
            say(f"{runtime}: {n} items one at a time in {single_s:.1f}s")
        finally:
            chat_model.close()
        same = sum(a.detail == b.detail for a, b in zip(batched.predictions, single.predictions))
        ratio = (n / batched_s) / (n / single_s)
        ratios.append(ratio)
        table.rows.append([runtime, n, n / batched_s, n / single_s, f"{ratio:.2f}x",
                           f"{batched.metrics['acc'].value:.2f}", f"{single.metrics['acc'].value:.2f}", f"{same}/{n}"])
    table.met = all(r >= 1.0 for r in ratios) if ratios else None
    table.notes.append("same picks: items whose acc and acc_norm choices are the same both ways")
    return table


def add_bench_command(typer: Any, cli: Any) -> None:
    """``hanlin bench eval``, added to the CLI's existing ``bench`` group (nothing happens on a CLI without one)."""
    from hanlin.cli_bench import bench_group, print_tables

    group = bench_group(cli)
    if group is None:
        return

    def bench_eval_cmd(
        model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="Model name, .gguf file or HF folder."),
        runtime: list[str] | None = typer.Option(None, "--runtime", "-r", help=(
            "Runtime to measure, repeatable (default: cpu and transformers, and gpu on a CUDA machine).")),
        limit: int = typer.Option(100, help="HellaSwag items to score."),
        batch_size: int = typer.Option(16, help="Items per scoring call in the batched run."),
        as_json: bool = typer.Option(False, "--json", help="Print the table as JSON."),
        ray: bool = typer.Option(False, "--ray", help=(
            "Instead: generation on gsm8k (--limit items, default 100) locally vs on a local Ray of 2 actors, "
            "items/s, same run (needs hanlin[ray]).")),
    ) -> None:
        """Likelihood scoring of HellaSwag-100: items/s batched vs one item at a time, same run (--ray: local vs
        Ray)."""
        if ray:
            from hanlin.plugins.evaluators.ray_exec import bench_eval_ray

            print_tables(lambda: [bench_eval_ray(model, limit=limit, say=lambda line: typer.echo(line, err=True))],
                         as_json)
            return
        print_tables(lambda: [bench_eval(model, runtime or None, limit=limit, batch_size=batch_size,
                                         say=lambda line: typer.echo(line, err=True))], as_json)

    group.command("eval")(bench_eval_cmd)
