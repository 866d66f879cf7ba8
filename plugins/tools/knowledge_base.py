"""The `knowledge_base` tool: HuixiangDou-style retrieval with rejection.

The tool answers with the passages that match a question, with their sources and scores, or, when even the best
match scores below the threshold, with a plain "not in the knowledge base": a small model handed noise tends to
answer from it, so saying nothing relevant was found is the useful observation. The threshold comes from
``hanlin kb tune`` (written into the index), else the backend's default; ``threshold=`` overrides both. A query
that singles out a line or two of the passages gets just those lines (kb_focus; ``focus=False`` turns it off).

Inside an agent run the query is read together with the run's request (``hanlin.current_task``): passages and
lines are ranked by the mean of their similarity to the two. A small model's query drops what the user asked:
Qwen2.5-Coder-0.5B looked up "Lumen Harbor" for the minimum password length and "Lumen Harbor travel policy" for
four hotel nights, and got the company's description or three whole passages; read with the request, the same
queries find "Every Lumen Harbor account password must be at least 14 characters long." and the hotel limit
(history-aware retrieval, as chat assistants rewrite a follow-up question with its conversation). Embeddings only:
BM25 scores a long request far above its query, so there the query is used alone. ``with_task=False`` turns it off.

The index work lives in ``kb_index``, the tuning in ``kb_tuning`` and the ``hanlin kb`` commands in ``kb_cli``;
the first two (and numpy, torch) are imported only when a tool is built, so registering this plugin costs nothing.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from hanlin import ConfigurationError, Tool, ToolResult, ToolSpec, Toolkit, current_task, hookimpl, tool

INDEX_ENV = "HANLIN_KB_INDEX"  # lets `hanlin run --tool knowledge_base` find an index without tool options
OPTIONS = ("index", "docs", "top_k", "threshold", "backend", "max_chars", "overlap", "description", "focus",
           "with_task")


@dataclass(slots=True)
class Answer:
    """One lookup: the top hits, the threshold applied, and whether the best hit passed it."""

    question: str
    threshold: float
    hits: list[Any]  # kb_index.Hit, best first
    found: bool
    focus: list[Any] = field(default_factory=list)  # kb_focus.Sentence: the passages' best lines, best first

    @property
    def passages(self) -> list[Any]:
        from hanlin.plugins.tools.kb_index import accepts

        return [h for h in self.hits if accepts(h.score, self.threshold)]

    def as_dict(self) -> dict[str, Any]:
        return {"question": self.question, "found": self.found, "threshold": self.threshold,
                "best_score": self.hits[0].score, "hits": [h.as_dict() for h in self.hits],
                "focus": [{"text": s.text, "where": s.where} for s in self.focus]}

    def render(self) -> str:
        if not self.found:
            best = self.hits[0]
            return (f"Not in the knowledge base: nothing in it answers {self.question!r}. The closest passage "
                    f"({best.chunk.where}) scored {best.score:.3f}, below the threshold {self.threshold:.3f}. "
                    "Say that the knowledge base does not cover this rather than guessing.")
        if self.focus:
            return "\n".join([f"From the knowledge base for {self.question!r}, the lines that match it best:"]
                             + [f"- {s.text} ({s.where})" for s in self.focus])
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
                 description: str | None = None, focus: bool = True, with_task: bool = True) -> None:
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
        self.focus = focus
        self.with_task = with_task

    @property
    def threshold(self) -> float:
        return self._threshold if self._threshold is not None else self.index.threshold

    def lookup(self, question: str, top_k: int | None = None, task: str | None = None) -> Answer:
        """The answer to ``question``, read together with ``task`` (the request it was asked for) where that says
        more than the question itself and the backend's scores allow it (see the module's docstring)."""
        from hanlin.plugins.tools.kb_index import accepts

        backend = self.index.backend
        context = task if self.with_task and backend.kind == "embeddings" and _says_more(task, question) else None
        hits = self.index.search(question, top_k or self.top_k, context=context)
        answer = Answer(question, self.threshold, hits, accepts(hits[0].score, self.threshold))
        if answer.found and self.focus:
            from hanlin.plugins.tools.kb_focus import best_sentences

            rank = backend.rank if context is None else functools.partial(backend.rank, context=context)
            answer.focus = best_sentences(question, [h.chunk for h in answer.passages], rank, backend.focus_margin)
        return answer

    @tool
    def knowledge_base(self, query: Annotated[str, Field(min_length=1, max_length=500)]) -> ToolResult:
        """Search the knowledge base for passages that answer a question; it says so when the answer is not there.

        Args:
            query: the one fact you need, as a short question in your own words (not the whole task).
        """
        answer = self.lookup(query, task=current_task())
        return ToolResult(content=answer.render(), data=answer.as_dict())

    def tools(self) -> list[Tool]:
        made = super().tools()
        sources = sorted({c.source for c in self.index.chunks})
        shown = ", ".join(sources[:8]) + (f" and {len(sources) - 8} more" if len(sources) > 8 else "")
        about = f" It covers: {self.about}." if self.about else ""
        for item in made:
            item.description = f"{item.description}{about} Sources: {shown}."
        return made


def _says_more(task: str | None, question: str) -> bool:
    """Whether the run's request holds words the query does not (a query that is the request, or part of it, gains
    nothing from it)."""
    if not task:
        return False
    words = set(re.findall(r"\w+", question.lower()))
    return any(w not in words for w in re.findall(r"\w+", task.lower()))


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
