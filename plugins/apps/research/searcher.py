"""The searchers: one hanlin ``Agent`` per node of the plan, answering its question from numbered search results.

Each searcher is given its first search (its question, with what the parent nodes answered, as the query) and the
best lines of the pages behind those results; its answer is decoded under a schema whose ``quote`` can only be a
sentence it was shown (grounding.py), so the citation is the result that sentence came from. Its local result
numbers are mapped to the run's global ones by the ledger, and a number it was not shown is removed and flagged.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, Field

from hanlin import Agent, ConfigurationError, Message, Tool, ToolResult
from hanlin.chat_model import Constraint
from hanlin.events import ErrorEvent, FinalAnswer, RunFinished, ToolCallEvent, ToolResultEvent
from hanlin.plugins.apps.research.citations import Ledger, Passage, cited, strip_citations
from hanlin.plugins.apps.research.events import CitationFlagged, NodeAnswered, NodeFailed, SearcherStep
from hanlin.plugins.apps.research.graph import Node, PlanGraph
from hanlin.plugins.apps.research.grounding import (
    answer_model,
    describe,
    name_in,
    query_for,
    quote_number,
    sentences,
    supported_answer,
)
from hanlin.plugins.apps.research.reader import read_pages

SEARCHER_INSTRUCTIONS = """You answer one question from numbered search results. Quote the sentence of the results \
that answers it (with its [n]) and give the short answer (the name or phrase asked for) taken from that sentence. If \
the results do not have the answer, call search with other keywords."""



class SearcherAnswer(BaseModel):
    """A searcher's final answer, decoded under its JSON schema so that it always names a source."""

    answer: str = Field(description="One sentence answering the question, using only the search results.")
    source: int = Field(description="The number of the search result the answer comes from, e.g. 2.")


def make_search_backend(search: Any) -> Any:
    """``local:DIR`` (BM25 over a folder), ``ddgs`` (live web), ``packages`` (the installed packages' descriptions,
    built once into a cache folder), or an object with ``search(query, max_results)``."""
    from hanlin.plugins.tools.web_search import make_backend

    if not isinstance(search, str):
        return make_backend(search)
    if search == "packages":
        from hanlin.plugins.apps.research.corpus import default_corpus_dir

        return make_backend("local", index_dir=default_corpus_dir(), snippet_chars=400)
    if search.startswith("local:"):
        folder = Path(search[len("local:"):]).expanduser()
        if not folder.is_dir():
            raise ConfigurationError(f"--search {search!r}: {str(folder)!r} is not a folder; give local:DIR with a "
                                     "folder of .md/.txt/.html files (or build one with hanlin research corpus DIR)")
        return make_backend("local", index_dir=folder, snippet_chars=400)
    if search == "ddgs":
        return make_backend("ddgs")
    raise ConfigurationError(f"unknown search {search!r}; use local:DIR, packages or ddgs")


def numbered_search_tool(backend: Any, k: int, ledger: Ledger, local: dict[int, int]) -> Tool:
    """A ``search`` tool whose results are numbered for the agent using it (``local``: its number -> the ledger's
    global number), every passage shown recorded in ``ledger`` so that a citation can be checked later."""

    def search(query: Annotated[str, Field(max_length=300)]) -> ToolResult:
        """Search the documents and return numbered passages with their source.

        Args:
            query: A few keywords, e.g. "httpx HTTP/2 support".
        """
        query = " ".join(query.split())
        if not query:
            return ToolResult.error("the query is empty; give a few keywords")
        hits = list(backend.search(query, k))[:k]
        if not hits:
            return ToolResult(content=f"no results for \"{query}\"; try other keywords")
        blocks = []
        for hit in hits:
            g = ledger.add(Passage(url=hit.url, title=hit.title, text=hit.snippet))
            n = next((ln for ln, gn in local.items() if gn == g), None)
            if n is None:
                n = len(local) + 1
                local[n] = g
            blocks.append(f"[{n}] {hit.title}: {hit.snippet}")
        return ToolResult(content="\n".join(blocks))

    return Tool(search, timeout=60.0)


class Searcher:
    """The searchers of one research run: they share its graph (to read parent answers), its ledger (citations) and
    its event stream."""

    def __init__(self, research: Any, graph: PlanGraph, ledger: Ledger, emit: Callable[[Any], None],
                 now: Callable[[], float]) -> None:
        self.r, self.graph, self.ledger, self.emit, self.now = research, graph, ledger, emit, now

    def search_tool(self, local: dict[int, int]) -> Tool:
        return numbered_search_tool(self.r.backend, self.r.max_results, self.ledger, local)

    def task(self, node: Node, first_results: str) -> str:
        lines = [f"Question: {node.question}"]
        if node.depends_on:
            lines.append("Known from earlier steps:")
            for parent_id in node.depends_on:
                parent = self.graph.nodes[parent_id]
                known = strip_citations(parent.answer) if parent.status == "answered" else f"unknown ({parent.error})"
                lines.append(f"- {parent.question} {known}")
        lines += ["Search results:", first_results]
        return "\n".join(lines)

    def query(self, node: Node) -> str:
        """The node's question naming what its parents answered ("that toolkit" -> "Starlette", see grounding.py)."""
        answers = [name_in(parent.short or strip_citations(parent.answer), self.query(parent)) for parent in
                   (self.graph.nodes[p] for p in node.depends_on) if parent.status == "answered"]
        return " ".join(query_for(node.question, answers).split())[:300]

    def fail(self, node: Node, error: str) -> None:
        node.status, node.error, node.ended = "failed", error, self.now()
        self.emit(NodeFailed(node_id=node.id, error=error))

    def shown_passages(self, local: dict[int, int]) -> dict[int, str]:
        """``{result number: passage text}`` of every result this searcher was shown."""
        return {n: p.text for n, g in sorted(local.items()) if (p := self.ledger.get(g)) is not None}

    def _quoted(self, node: Node, output: Any, shown: list[str]) -> str:
        """The node's answer from a decoded QuotedAnswer: the short answer if its quote, or another of the ``shown``
        sentences, supports it (else the quoted sentence), cited with that sentence's result number."""
        short, quote, _ = describe(output)
        text, kept, quote = supported_answer(strip_citations(short), quote, self.query(node), shown)
        number = quote_number(quote)
        node.short, node.quote = text, quote
        if not kept:
            self.emit(SearcherStep(node_id=node.id, kind="error", text=f"the answer {short!r} is not in the sentence "
                                   "it quotes, or only repeats the question; the quoted sentence is the answer"))
        return f"{node.short} [{number}]."

    async def _answer_once(self, node: Node, results: str, output_type: type[BaseModel]) -> BaseModel:
        """One answer decoded under ``output_type``'s schema, from the node's task (its question and results)."""
        messages = [Message.system(SEARCHER_INSTRUCTIONS + " Reply as JSON."),
                    Message.user(self.task(node, results))]
        params = self.r.params.model_copy(update={"constraint": Constraint(
            json_schema=output_type.model_json_schema(), max_tokens=self.r.params.max_tokens)})
        done = await self.r.model.agenerate(messages, params)
        return output_type.model_validate_json(done.text)

    async def answer(self, node: Node) -> None:
        """Search for the node's question, read, answer under a quote schema; the node ends answered or failed."""
        local: dict[int, int] = {}
        # The first search is made for the searcher, with its question as the query: small models otherwise answer
        # from memory without searching at all (Qwen2.5-Coder-0.5B did, on the first question tried).
        search = self.search_tool(local)
        query = self.query(node)
        self.emit(SearcherStep(node_id=node.id, kind="tool_call", text=f"search({json.dumps({'query': query})})"))
        first = await search.ainvoke({"query": query})
        self.emit(SearcherStep(node_id=node.id, kind="tool_result", text=first.content[:300]))
        # ... and the pages behind those results are read: their best lines for the query are results too
        read = await asyncio.to_thread(read_pages, self.ledger, local, query, self.r.read_lines) \
            if self.r.read_lines and not first.is_error else ""
        if read:
            self.emit(SearcherStep(node_id=node.id, kind="tool_result", text=f"read: {read[:300]}"))
        results = first.content + (f"\nRead in those pages:\n{read}" if read else "")
        # the answer quotes one sentence of these results (an enum in its schema, see grounding.py); nothing shown:
        # the plain {answer, source} schema, and the searcher can search again
        quotes = sentences(self.shown_passages(local), query)
        output_type = answer_model(quotes) if quotes else SearcherAnswer
        # one step has room for the answer only (a search it could not read on would be cut off by max_steps, as the
        # 0.5B model's first step always was): then the search tool is not offered and the step is the answer
        tools = [search] if self.r.searcher_max_steps > 1 else []
        agent = Agent(self.r.model, tools, protocol=self.r.searcher_protocol,
                      instructions=SEARCHER_INSTRUCTIONS if tools else SEARCHER_INSTRUCTIONS.split(" If the")[0],
                      max_steps=self.r.searcher_max_steps,
                      params=self.r.params, examples=False, output_type=output_type)
        result, last_error = None, ""
        async for event in agent.astream(self.task(node, results)):
            if isinstance(event, ToolCallEvent):
                self.emit(SearcherStep(node_id=node.id, kind="tool_call",
                                       text=f"{event.call.name}({json.dumps(event.call.arguments)})"))
            elif isinstance(event, ToolResultEvent):
                self.emit(SearcherStep(node_id=node.id, kind="tool_result", text=event.content[:300]))
            elif isinstance(event, ErrorEvent):
                last_error = event.message[:300]
                self.emit(SearcherStep(node_id=node.id, kind="error", text=last_error))
            elif isinstance(event, FinalAnswer):
                output = event.output
                if isinstance(output, SearcherAnswer):
                    text = output.answer.strip()
                    result = text if cited(text) else f"{text.rstrip('.')} [{output.source}]."
                    node.short = strip_citations(text).rstrip(".")
                elif output is not None and hasattr(output, "quote"):
                    result = self._quoted(node, output, quotes)
                else:
                    result = event.text
            elif isinstance(event, RunFinished) and event.status != "answered" and quotes:
                # the agent searched on without answering: one constrained answer over the results it was first shown
                self.emit(SearcherStep(node_id=node.id, kind="error", text=f"the searcher ended {event.status}; "
                                       "answering from the first results"))
                # (what it found in its own searches is quotable too)
                seen = self.shown_passages(local)
                everything = "\n".join(f"[{n}] {self.ledger.get(local[n]).title}: {text}"  # type: ignore[union-attr]
                                        for n, text in seen.items())
                offered = sentences(seen, query)
                result = self._quoted(node, await self._answer_once(node, everything, answer_model(offered)), offered)
            elif isinstance(event, RunFinished) and event.status != "answered":
                self.fail(node, f"the searcher ended {event.status} without an answer"
                                 + (f" ({last_error})" if last_error else ""))
                return
        if not result or not result.strip():
            self.fail(node, "the searcher gave an empty answer")
            return
        answer, dropped = self.ledger.globalize(result, local)
        for n in dropped:
            self.emit(CitationFlagged(where=node.id, number=n, reason="no search result with this number was "
                                                                     "shown to this searcher; removed"))
        if not cited(answer):
            self.emit(CitationFlagged(where=node.id, number=0, reason="the answer cites no passage"))
        node.status, node.answer, node.ended = "answered", answer, self.now()
        node.cited = cited(answer)
        self.emit(NodeAnswered(node_id=node.id, answer=answer,
                               references=[self.ledger.reference(g) for g in node.cited]))
