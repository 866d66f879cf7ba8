"""``hanlin research "question"``: the graph as it grows (a rich tree when rich is installed, else plain lines), then
the answer and its references. ``--json`` prints each event as a JSON line instead; ``--trace F`` saves them."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"


def describe(event: Any) -> str:
    """One plain line per event."""
    kind = event.type
    if kind == "research_started":
        return f"research: {event.question}"
    if kind == "node_added":
        deps = f" (after {', '.join(event.depends_on)})" if event.depends_on else ""
        return f"+ node {event.node_id}: {event.question}{deps}"
    if kind == "plan_rejected":
        return f"! plan refused ({event.kind}): {event.message}"
    if kind == "node_started":
        return f"> {event.node_id} searching"
    if kind == "searcher_step":
        return f"  {event.node_id} {event.kind}: {event.text.splitlines()[0] if event.text else ''}"
    if kind == "node_answered":
        return f"= {event.node_id}: {event.answer}"
    if kind == "node_failed":
        return f"x {event.node_id} failed: {event.error}"
    if kind == "citation_flagged":
        return f"! citation [{event.number}] in {event.where}: {event.reason}"
    if kind == "planner_note":
        return f"  planner: {event.text}"
    return f"final ({event.status})"


class _Tree:
    """The plan as a rich tree, redrawn on each event."""

    def __init__(self, question: str) -> None:
        from rich.tree import Tree

        self.root = Tree(f"[bold]{question}")
        self.branches: dict[str, Any] = {}
        self.labels: dict[str, str] = {}

    def update(self, event: Any) -> None:
        if event.type == "node_added":
            parent = self.branches.get(event.depends_on[-1]) if event.depends_on else None
            self.labels[event.node_id] = f"{event.node_id}: {event.question}"
            self.branches[event.node_id] = (parent or self.root).add(self.labels[event.node_id])
        elif event.type in ("node_started", "node_answered", "node_failed") and event.node_id in self.branches:
            mark = {"node_started": "[yellow]… ", "node_answered": "[green]✓ ", "node_failed": "[red]✗ "}[event.type]
            extra = f"\n   {event.answer}" if event.type == "node_answered" else (
                f"\n   {event.error}" if event.type == "node_failed" else "")
            self.branches[event.node_id].label = mark + self.labels[event.node_id] + extra
        elif event.type == "plan_rejected":
            self.root.add(f"[red]refused ({event.kind}): {event.message}")


def add_research_command(cli: Any) -> None:
    import typer

    @cli.command("research")
    def research(
        question: str = typer.Argument(..., help="The question to research."),
        search: str = typer.Option("packages", help="local:DIR (a folder of .md/.txt/.html), packages (the "
                                                     "installed packages' descriptions) or ddgs (live web)."),
        model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="Model name, alias, .gguf file or HF folder."),
        max_nodes: int = typer.Option(4, help="Most sub-questions in the plan."),
        max_depth: int = typer.Option(3, help="Longest chain of dependent sub-questions."),
        max_parallel: int = typer.Option(1, help="Most searchers at a time. Raise it on the gpu runtime or an "
                                                  "endpoint that batches requests; the cpu runtime queues them, so "
                                                  "there 1 is fastest (37.7 s vs 74.1 s at 3 for three nodes)."),
        protocol: str = typer.Option("react", help="Agent protocol of the searchers."),
        planner_protocol: str = typer.Option("tools", help="Agent protocol of the planner."),
        max_tokens: int = typer.Option(160, help="Most tokens per model reply."),
        decompose: bool = typer.Option(True, "--decompose/--no-decompose",
                                       help="Seed the plan with one constrained split of the question (--no-decompose: "
                                            "the planner agent plans from scratch)."),
        json_out: bool = typer.Option(False, "--json", help="Print each event as a JSON line."),
        trace: Path | None = typer.Option(None, help="Save the run's events as JSONL (replayable)."),
    ) -> None:
        """Answer a question by planning sub-questions, searching them concurrently and citing what was read."""
        from hanlin.errors import HanlinError
        from hanlin.plugins.apps.research.pipeline import Research

        try:
            app = Research(model, search, max_nodes=max_nodes, max_depth=max_depth, max_parallel=max_parallel,
                           planner_protocol=planner_protocol, searcher_protocol=protocol, max_tokens=max_tokens,
                           decompose=decompose)
        except HanlinError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        try:
            tree = None
            live = None
            if not json_out and sys.stdout.isatty():
                try:
                    from rich.live import Live

                    tree = _Tree(question)
                    live = Live(tree.root, refresh_per_second=4)
                    live.start()
                except ImportError:
                    tree = None

            def show(event: Any) -> None:
                if json_out:
                    typer.echo(event.model_dump_json())
                elif tree is not None:
                    tree.update(event)
                elif event.type != "final":
                    typer.echo(describe(event))

            try:
                result = app.run(question, on_event=show)
            except HanlinError as exc:
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(2) from None
            finally:
                if live is not None:
                    live.stop()
        finally:
            app.close()
        if trace is not None:
            result.save_trace(trace)
        if not json_out:
            typer.echo("")
            typer.echo(result.render())
            if result.error:
                typer.echo(f"({result.status}: {result.error})", err=True)
        raise typer.Exit(0 if result.status == "answered" else 1)

    @cli.command("research-corpus", hidden=True)
    def research_corpus(folder: Path = typer.Argument(..., help="Folder to write the package corpus into."),
                        names: list[str] = typer.Option(None, "--package", "-p", help="Only these packages.")) -> None:
        """Write the installed packages' long descriptions into FOLDER (one .md per package)."""
        from hanlin.plugins.apps.research.corpus import build_package_corpus

        out = build_package_corpus(folder, names or None)
        typer.echo(f"{len(list(out.glob('*.md')))} documents in {out}")
