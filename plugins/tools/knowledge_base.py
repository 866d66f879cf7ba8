"""The `knowledge_base` tool (HuixiangDou-style retrieval with rejection) and the `hanlin kb` commands.

The tool answers with the passages that match a question, with their sources and scores, or, when even the best
match scores below the threshold, with a plain "not in the knowledge base": a small model handed noise tends to
answer from it, so saying nothing relevant was found is the useful observation. The threshold comes from
``hanlin kb tune`` (written into the index), else the backend's default; ``threshold=`` overrides both.

The index work lives in ``kb_index`` and the tuning in ``kb_tuning``; both (and typer, numpy, torch) are imported
only when a tool is built or a ``hanlin kb`` command runs, so registering this plugin costs nothing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from hanlin import ConfigurationError, Tool, ToolResult, ToolSpec, Toolkit, hookimpl, tool

INDEX_ENV = "HANLIN_KB_INDEX"  # lets `hanlin run --tool knowledge_base` find an index without tool options
OPTIONS = ("index", "docs", "top_k", "threshold", "backend", "max_chars", "overlap", "description")
DEFAULT_OUT = ".hanlin-kb"  # inside the documents folder; hidden, so indexing skips it


@dataclass(slots=True)
class Answer:
    """One lookup: the top hits, the threshold applied, and whether the best hit passed it."""

    question: str
    threshold: float
    hits: list[Any]  # kb_index.Hit, best first
    found: bool

    @property
    def passages(self) -> list[Any]:
        from hanlin.plugins.tools.kb_index import accepts

        return [h for h in self.hits if accepts(h.score, self.threshold)]

    def as_dict(self) -> dict[str, Any]:
        return {"question": self.question, "found": self.found, "threshold": self.threshold,
                "best_score": self.hits[0].score, "hits": [h.as_dict() for h in self.hits]}

    def render(self) -> str:
        if not self.found:
            best = self.hits[0]
            return (f"Not in the knowledge base: nothing in it answers {self.question!r}. The closest passage "
                    f"({best.chunk.where}) scored {best.score:.3f}, below the threshold {self.threshold:.3f}. "
                    "Say that the knowledge base does not cover this rather than guessing.")
        parts = [f"{len(self.passages)} passage(s) from the knowledge base for {self.question!r}:"]
        parts += [f"[{h.rank}] {h.chunk.where} (score {h.score:.3f})\n{h.chunk.text}" for h in self.passages]
        return "\n\n".join(parts)


class KnowledgeBaseToolkit(Toolkit):
    """One ``knowledge_base`` tool over an index: a saved one (``index=``) or documents indexed now (``docs=``).

    Loading happens here, not in the first call, so the tool's call timeout never races the embedding model's
    start-up. ``backend``, ``max_chars`` and ``overlap`` apply to ``docs=`` only; ``description`` tells the model
    what the knowledge base is about (its sources are listed in the tool description either way).
    """

    def __init__(self, index: str | Path | Any | None = None, docs: str | Path | None = None, top_k: int = 3,
                 threshold: float | None = None, backend: str = "auto", max_chars: int = 800, overlap: int = 100,
                 description: str | None = None) -> None:
        from hanlin.plugins.tools.kb_index import KnowledgeIndex

        if index is None and docs is None and os.environ.get(INDEX_ENV):
            index = os.environ[INDEX_ENV]
        if (index is None) == (docs is None):
            raise ConfigurationError(
                "the knowledge_base tool needs exactly one of index=FOLDER (made by `hanlin kb build`) or "
                "docs=FOLDER (indexed in memory now)" + ("" if index is not None else f", or {INDEX_ENV} set")
            )
        if top_k < 1:
            raise ConfigurationError(f"top_k must be at least 1, got {top_k}")
        if isinstance(index, KnowledgeIndex):
            self.index = index
        elif index is not None:
            self.index = KnowledgeIndex.load(index)
        else:
            assert docs is not None
            self.index = KnowledgeIndex.build(docs, backend=backend, max_chars=max_chars, overlap=overlap)
        self.top_k = top_k
        self._threshold = threshold
        self.about = description

    @property
    def threshold(self) -> float:
        return self._threshold if self._threshold is not None else self.index.threshold

    def lookup(self, question: str, top_k: int | None = None) -> Answer:
        from hanlin.plugins.tools.kb_index import accepts

        hits = self.index.search(question, top_k or self.top_k)
        return Answer(question, self.threshold, hits, accepts(hits[0].score, self.threshold))

    @tool
    def knowledge_base(self, query: Annotated[str, Field(min_length=1, max_length=500)]) -> ToolResult:
        """Search the knowledge base for passages that answer a question; it says so when the answer is not there.

        Args:
            query: the question to look up, e.g. "how often should tomatoes be watered".
        """
        answer = self.lookup(query)
        return ToolResult(content=answer.render(), data=answer.as_dict())

    def tools(self) -> list[Tool]:
        made = super().tools()
        sources = sorted({c.source for c in self.index.chunks})
        shown = ", ".join(sources[:8]) + (f" and {len(sources) - 8} more" if len(sources) > 8 else "")
        about = f" It covers: {self.about}." if self.about else ""
        for item in made:
            item.description = f"{item.description}{about} Sources: {shown}."
        return made


def make_knowledge_base(**config: Any) -> list[Tool]:
    unknown = sorted(set(config) - set(OPTIONS))
    if unknown:
        raise ConfigurationError(f"the knowledge_base tool does not take {unknown}; its options are {list(OPTIONS)}")
    return KnowledgeBaseToolkit(**config).tools()


@hookimpl
def register_tools(register: Any) -> None:
    register(ToolSpec(
        name="knowledge_base", factory=make_knowledge_base, default=False,
        description="Retrieve passages from a document index (MiniLM embeddings or BM25) with sources and scores; "
                    "questions it does not cover are answered 'not in the knowledge base'.",
    ))


# ---- `hanlin kb` ---------------------------------------------------------------------------------
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
