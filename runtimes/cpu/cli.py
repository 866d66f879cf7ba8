"""`hanlin bench cpu`: the cpu runtime's own benchmark command."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from hanlin.cli_bench import bench_group, print_tables


def add_commands(cli: Any) -> None:
    group = bench_group(cli)
    if group is None:
        return

    @group.command("cpu")
    def bench_cpu(
        model: Annotated[list[str] | None, typer.Option("--model", "-m", help="Models for the agent tables (repeatable).")] = None,
        limit: Annotated[int | None, typer.Option(help="Use only the first N tool-use prompts.")] = None,
        only: Annotated[list[str] | None, typer.Option(help="Run only these tables: speed, reuse, validity, healing.")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the tables as JSON.")] = False,
    ) -> None:
        """CPU runtime vs raw llama-cpp-python; prefix reuse on a ReAct run; format validity with/without grammars;
        token healing on code completions."""
        from hanlin.runtimes.cpu.bench import run_all

        options = {k: v for k, v in {"models": model, "limit": limit, "only": only}.items() if v is not None}
        print_tables(lambda: run_all(**options), as_json)
