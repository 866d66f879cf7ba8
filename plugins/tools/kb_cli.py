"""The ``hanlin kb`` commands: build an index from a folder, query it, tune its rejection threshold.

A plugin of its own, apart from the ``knowledge_base`` tool: the tool answers a model inside an agent, these
commands answer a person at a terminal, and neither needs the other's imports. typer, the index and the tuning are
imported only when the command group is built or a command runs, so registering this plugin costs nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hanlin import hookimpl
from hanlin.plugins.tools.knowledge_base import KnowledgeBaseToolkit

DEFAULT_OUT = ".hanlin-kb"  # inside the documents folder; hidden, so indexing skips it


@hookimpl
def register_commands(cli: Any) -> None:
    import typer

    cli.add_typer(_kb_app(typer), name="kb")


def _kb_app(typer: Any) -> Any:
    from hanlin.errors import HanlinError

    app = typer.Typer(help="Knowledge bases: index documents, query the index, tune its rejection threshold.",
                      no_args_is_help=True)

    def fail(exc: Exception) -> None:
        message = f"{exc.strerror}: {exc.filename}" if isinstance(exc, OSError) and exc.strerror else str(exc)
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(2)

    @app.command("build")
    def build(
        docs: Path = typer.Argument(..., help="Folder of .md, .txt, .html and .pdf files (searched recursively)."),
        out: Path | None = typer.Option(None, "--out", "-o", help=f"Index folder (default: DOCS/{DEFAULT_OUT})."),
        backend: str = typer.Option("auto", help="embeddings, bm25, or auto (embeddings when installed)."),
        max_chars: int = typer.Option(800, help="Largest chunk, in characters."),
        overlap: int = typer.Option(100, help="Characters a chunk repeats from the one before it."),
    ) -> None:
        """Index a folder of documents and save the index."""
        from hanlin.plugins.tools.kb_index import KnowledgeIndex

        try:
            index = KnowledgeIndex.build(docs, backend=backend, max_chars=max_chars, overlap=overlap)
            folder = index.save(out if out is not None else Path(docs) / DEFAULT_OUT)
        except (HanlinError, OSError) as exc:
            fail(exc)
            return
        meta = index.meta
        typer.echo(f"indexed {meta['chunks']} chunks from {len(meta['files']) - len(meta['skipped'])} files with "
                   f"{meta['backend']} ({meta['embedder']['name']}) -> {folder}")
        for name, reason in meta["skipped"].items():
            typer.echo(f"skipped {name}: {reason}", err=True)
        if meta["note"]:
            typer.echo(f"note: {meta['note']}", err=True)

    @app.command("query")
    def query(
        index: Path = typer.Argument(..., help="Index folder made by `hanlin kb build`."),
        question: str = typer.Argument(..., help="What to look up."),
        top_k: int = typer.Option(3, "--top-k", "-k", help="How many passages to show."),
        threshold: float | None = typer.Option(None, help="Rejection threshold (default: the index's)."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    ) -> None:
        """Look a question up; exits 1 when it is not in the knowledge base (like grep)."""
        try:
            answer = KnowledgeBaseToolkit(index=index, top_k=top_k, threshold=threshold).lookup(question)
        except (HanlinError, OSError) as exc:
            fail(exc)
            return
        if as_json:
            typer.echo(json.dumps(answer.as_dict(), ensure_ascii=False))
        else:
            kept = {id(h) for h in answer.passages}
            for hit in answer.hits:
                mark = "+" if id(hit) in kept else "-"
                preview = " ".join(hit.chunk.text.split())
                typer.echo(f"{hit.rank}. {mark} {hit.score:.3f}  {hit.chunk.where}\n   {preview[:240]}")
            if answer.focus:  # what the knowledge_base tool shows an agent in place of the whole passages
                typer.echo("the lines that answer it best (what an agent is shown):")
                for line in answer.focus:
                    typer.echo(f"   {line.text} ({line.where})")
            if not answer.found:
                typer.echo(f"not in the knowledge base: best score {answer.hits[0].score:.3f} is below the "
                           f"threshold {answer.threshold:.3f}")
        raise typer.Exit(0 if answer.found else 1)

    @app.command("tune")
    def tune_cmd(
        index: Path = typer.Argument(..., help="Index folder made by `hanlin kb build`."),
        labelled: Path = typer.Argument(..., help='JSONL of {"question": ..., "answerable": true|false} rows.'),
        write: bool = typer.Option(False, "--write", help="Store the chosen threshold in the index for the tool."),
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    ) -> None:
        """Pick the rejection threshold that best separates answerable from unanswerable questions (F1)."""
        from hanlin.plugins.tools.kb_index import KnowledgeIndex
        from hanlin.plugins.tools.kb_tuning import read_labelled, tune, write_threshold

        try:
            rows = read_labelled(labelled)
            kb = KnowledgeIndex.load(index)
            report = tune(kb, rows)
            written = write_threshold(kb, report, labelled) if write else None
        except (HanlinError, OSError) as exc:
            fail(exc)
            return
        if as_json:
            typer.echo(json.dumps({**report.as_dict(), "written": str(written) if written else None}))
            return
        c, p = report.chosen, report.previous
        answerable = sum(r.answerable for r in report.rows)
        typer.echo(f"{len(report.rows)} questions ({answerable} answerable, {len(report.rows) - answerable} not), "
                   f"{len(report.candidates)} candidate thresholds")
        typer.echo(f"best candidate {c.threshold:.4f}: precision {c.precision:.3f}  recall {c.recall:.3f}  "
                   f"F1 {c.f1:.3f}  (tp {c.tp}, fp {c.fp}, fn {c.fn}, tn {c.tn})")
        typer.echo(f"chosen threshold {report.threshold:.4f} (midway to the next lower score; same F1 here)")
        typer.echo(f"before: threshold {p.threshold:.4f}: precision {p.precision:.3f}  recall {p.recall:.3f}  "
                   f"F1 {p.f1:.3f}")
        from hanlin.plugins.tools.kb_index import accepts

        for row in report.rows:
            if accepts(row.best_score, report.threshold) != row.answerable:
                label = "answerable but rejected" if row.answerable else "unanswerable but accepted"
                typer.echo(f"  {label} ({row.best_score:.4f}): {row.question}")
        typer.echo(f"written to {written}" if written else "run again with --write to make the tool use it")

    return app
