"""The ``hanlin data`` commands (run, blocks, convert) and ``hanlin bench data``; typer and the pipeline are
imported only when the CLI starts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def add_data_commands(cli: Any) -> None:
    import typer

    from hanlin.errors import HanlinError

    app = typer.Typer(help="Data pipelines: read, clean, filter, dedup, mask PII, write and pack corpora.",
                      no_args_is_help=True)

    def fail(exc: Exception) -> None:
        message = f"{exc.strerror}: {exc.filename}" if isinstance(exc, OSError) and exc.strerror else str(exc)
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(2)

    @app.command("run")
    def run(
        pipeline: Path = typer.Argument(..., help="Pipeline file (YAML: output, blocks, workers, executor, on_error)."),
        workers: int | None = typer.Option(None, "--workers", "-w", help="Parallel tasks (default: the file's)."),
        executor: str | None = typer.Option(None, "--executor", help="local or ray (default: the file's)."),
        output: Path | None = typer.Option(None, "--output", "-o", help="Run folder (default: the file's)."),
        on_error: str | None = typer.Option(None, "--on-error", help="skip or stop on bad input."),
    ) -> None:
        """Run a pipeline; a re-run resumes, skipping the tasks already complete. Writes OUTPUT/report.json."""
        from hanlin.plugins.data.pipeline import Pipeline

        try:
            pipe = Pipeline.from_yaml(pipeline, output=output, on_error=on_error)
            report = pipe.run(workers=workers, executor=executor, progress=lambda m: typer.echo(m, err=True))
        except (HanlinError, OSError) as exc:
            fail(exc)
            return
        for b in report["blocks"]:
            dropped = ", ".join(f"{k}: {v}" for k, v in b["dropped"].items())
            typer.echo(f"{b['name']:<14} in {b['docs_in']:>8}  out {b['docs_out']:>8}" + (f"  ({dropped})" if dropped
                                                                                              else ""))
        typer.echo(f"{report['docs_in']} -> {report['docs_out']} documents in {report['seconds']:.1f}s "
                   f"({report['tasks_run']} task(s) run, {report['tasks_skipped']} resumed); "
                   f"report: {pipe.run_dir / 'report.json'}")

    @app.command("blocks")
    def blocks() -> None:
        """List the data blocks every plugin registered (names to use in a pipeline file)."""
        from hanlin.plugin_manager import plugins

        pm = plugins()
        for name, spec in sorted(pm.data_blocks().items()):
            typer.echo(f"{name:<14} {spec.description}  [{pm.owner('data', name)}]")

    @app.command("convert")
    def convert_cmd(
        inputs: list[str] = typer.Argument(..., help="Input files, folders or globs."),
        output: Path = typer.Option(..., "--output", "-o", help="The file to write."),
        reader: str = typer.Option("jsonl", "--from", help="Reader block: jsonl, parquet, text, html, chat."),
        to: str = typer.Option("chat", "--to", help="chat (finetuner records), jsonl or parquet (documents)."),
        text_key: str | None = typer.Option(None, help="Column holding the text (jsonl/parquet readers)."),
        prompt_key: str | None = typer.Option(None, help="Metadata field to use as the user turn (--to chat)."),
        on_error: str = typer.Option("skip", "--on-error", help="skip or stop on bad input."),
    ) -> None:
        """Convert between any reader's input and the chat/text JSONL the finetuners take, or documents."""
        from hanlin.errors import ConfigurationError
        from hanlin.plugins.data.convert import convert

        try:
            if to not in ("chat", "jsonl", "parquet"):
                raise ConfigurationError(f"--to must be chat, jsonl or parquet, got {to!r}")
            if on_error not in ("skip", "stop"):
                raise ConfigurationError(f"--on-error must be skip or stop, got {on_error!r}")
            options = {"text_key": text_key} if text_key else {}
            result = convert(inputs, output, reader=reader, to=to, reader_options=options,  # type: ignore[arg-type]
                             prompt_key=prompt_key, on_error=on_error)  # type: ignore[arg-type]
        except (HanlinError, OSError) as exc:
            fail(exc)
            return
        typer.echo(f"{result['written']} records -> {result['output']} ({result['read']} read"
                   + (f", skipped: {json.dumps(result['skipped'])}" if result["skipped"] else "") + ")")
        for e in result["examples"]:
            typer.echo(f"skipped {e['where']}: {e.get('detail', e['reason'])}", err=True)

    cli.add_typer(app, name="data")
    _add_bench(cli, typer)


def _add_bench(cli: Any, typer: Any) -> None:
    from hanlin.cli_bench import bench_group, print_tables

    bench = bench_group(cli)
    if bench is None:
        return

    @bench.command("data")
    def bench_data(
        docs: int = typer.Option(2000, help="Documents in the corpus (stdlib source files and package descriptions)."),
        workers: int = typer.Option(2, help="Workers for the local and Ray executors."),
        ray: bool = typer.Option(True, "--ray/--no-ray", help="Also run the pipeline on a local Ray."),
        near_dups: int = typer.Option(300, help="Planted near-duplicates for the MinHash recall/precision table."),
        as_json: bool = typer.Option(False, "--json", help="Print the tables as JSON."),
    ) -> None:
        """Docs/s per block and per pipeline (local vs Ray), MinHash dedup quality vs datasketch's MinHashLSH."""
        from hanlin.plugins.data.bench import run_bench

        print_tables(lambda: run_bench(docs=docs, workers=workers, ray=ray, near_dups=near_dups), as_json)
