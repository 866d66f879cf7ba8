"""What every `hanlin bench` sub-command shares: finding the bench group, printing its tables.

Benchmarks live with the plugin that owns the thing measured (the cpu runtime, the gpu engine, the evaluators, the
finetuners); each adds its own sub-command through ``register_commands``, so the core CLI knows no runtime.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from hanlin.bench import BenchTable, render_table
from hanlin.errors import HanlinError


def bench_group(cli: Any) -> Any | None:
    """The CLI's ``bench`` group (a typer app), or None on a CLI without one (an app embedding hanlin's commands)."""
    return next((g.typer_instance for g in getattr(cli, "registered_groups", []) if g.name == "bench"), None)


def print_tables(make: Callable[[], Iterable[BenchTable]], as_json: bool) -> None:
    """Run a benchmark and print its tables as they come (or all at once as JSON); a HanlinError is one clear line
    and exit status 2, as everywhere in the CLI."""
    import typer

    tables = []
    try:
        for table in make():
            tables.append(table)
            if not as_json:
                typer.echo(render_table(table) + "\n")
    except HanlinError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps([t.as_dict() for t in tables], indent=2))
