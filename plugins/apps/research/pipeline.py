"""The research pipeline: a planner agent grows the plan, one searcher agent per node answers it, concurrently.

The planner is a hanlin ``Agent`` whose tools are ``add_node(id, question, depends_on)``, ``wait()`` and
``finish(answer)``: typed calls checked by the tools' JSON schemas and by ``PlanGraph``, never executed code. A
node starts as soon as the nodes it depends on are done (at most ``max_parallel`` at a time); ``wait()`` gives the
planner the answers that came in, so it can add nodes after seeing results. Each searcher is a hanlin ``Agent`` with
a ``search`` tool over a backend (the local index by default) that numbers the passages it shows; the searcher
cites those numbers, the ledger turns them into the run's global numbers, and the final answer is renumbered and
checked (a number that points at nothing is removed and reported).

``sdk/agent.py`` has no tool that ends a run, so ``finish`` records the answer and the pipeline stops reading the
planner's stream there (closing it cancels the planner's run); a planner that answers in plain words is taken as
having called ``finish`` with those words.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, Field

from hanlin import Agent, ChatModel, ConfigurationError, GenerationParams, Message, Tool, ToolResult
from hanlin.chat_model import Constraint
from hanlin.events import ErrorEvent, FinalAnswer, RunFinished, ToolCallEvent, ToolResultEvent
from hanlin.plugins.apps.research.citations import Ledger, Passage, cited, strip_citations
from hanlin.plugins.apps.research.events import (
    CitationFlagged,
    NodeAdded,
    NodeAnswered,
    NodeFailed,
    NodeStarted,
    PlannerNote,
    PlanRejected,
    Reference,
    ResearchEvent,
    ResearchFinal,
    ResearchStarted,
    SearcherStep,
    write_trace,
)
from hanlin.plugins.apps.research.graph import Node, PlanError, PlanGraph
from hanlin.plugins.apps.research.reader import read_pages
from hanlin.plugins.tools.search_backends import tokenize
from hanlin.plugins.apps.research.grounding import (
    answer_model,
    content_words,
    describe,
    grounded_answer,
    query_for,
    refers_back,
    sentences,
)
from hanlin.sync_bridge import iterate_sync, run_sync

PLANNER_INSTRUCTIONS = """You answer a hard question by splitting it into simple sub-questions that a search \
assistant answers for you.
- add_node(id, question, depends_on): ask one simple sub-question; depends_on lists ids of earlier nodes whose \
answers it needs (sub-questions that do not need each other run at the same time).
- wait(): get the answers of the nodes you added. Each answer cites sources as [n].
- finish(answer): give the final answer, keeping the [n] citations of the answers you use.
Add the nodes, call wait(), then finish. Use at most {max_nodes} nodes. A first node depends on nothing: depends_on=[].
Example, for "Which company makes the Zeta phone, and where is that company based?":
add_node(id="maker", question="Which company makes the Zeta phone?", depends_on=[])
add_node(id="base", question="Where is the company that makes the Zeta phone based?", depends_on=["maker"])
wait()
finish(answer="The Zeta phone is made by Orbo [1], which is based in Lyon [2].")"""

SEARCHER_INSTRUCTIONS = """You answer one question from numbered search results. Quote the sentence of the results \
that answers it (with its [n]) and give the short answer (the name or phrase asked for) taken from that sentence. If \
the results do not have the answer, call search with other keywords."""


SEEDED_PLANNER_STEPS = 3


class SearcherAnswer(BaseModel):
    """A searcher's final answer, decoded under its JSON schema so that it always names a source."""

    answer: str = Field(description="One sentence answering the question, using only the search results.")
    source: int = Field(description="The number of the search result the answer comes from, e.g. 2.")


class ResearchResult(BaseModel):
    question: str
    status: str
    answer: str
    references: list[Reference] = Field(default_factory=list)
    events: list[Any] = Field(default_factory=list)
    error: str | None = None

    def render(self) -> str:
        lines = [self.answer or "(no answer)"]
        if self.references:
            lines += ["", "References:"]
            for ref in self.references:
                lines.append(f"[{ref.number}] {ref.title} <{ref.url}>")
                lines.append(f"    \"{ref.passage}\"")
        return "\n".join(lines)

    def save_trace(self, path: str | Path) -> Path:
        return write_trace(self.events, path)


def replay(events: list[Any]) -> ResearchResult:
    """Rebuild a run's result from its events (a trace file read with ``load_trace``)."""
    question = next((e.question for e in events if getattr(e, "type", "") == "research_started"), "")
    final = next((e for e in reversed(events) if getattr(e, "type", "") == "final"), None)
    if final is None:
        return ResearchResult(question=question, status="error", answer="", events=list(events),
                              error="the trace has no final event (the run was cut short)")
    return ResearchResult(question=question, status=final.status, answer=final.answer, references=final.references,
                          events=list(events), error=final.error)


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


class Research:
    """Plan, search concurrently, cite. ``model``: a ChatModel (shared by planner and searchers) or a model name;
    ``planner_model``: another ChatModel for the planner alone."""

    def __init__(
        self,
        model: ChatModel | str,
        search: Any = "packages",
        *,
        max_nodes: int = 4,
        max_depth: int = 3,
        max_parallel: int = 2,
        planner_protocol: str = "tools",
        searcher_protocol: str = "react",
        planner_max_steps: int = 10,
        searcher_max_steps: int = 1,
        max_results: int = 3,
        max_tokens: int = 160,
        node_timeout_s: float | None = 300.0,
        examples: bool = True,
        planner_model: ChatModel | None = None,
        decompose: bool = False,
        read_lines: int = 2,
    ) -> None:
        for name, value, low in (("max_nodes", max_nodes, 1), ("max_depth", max_depth, 1),
                                 ("max_parallel", max_parallel, 1), ("max_results", max_results, 1)):
            if not isinstance(value, int) or value < low:
                raise ConfigurationError(f"{name} must be an integer of at least {low}, got {value!r}")
        self.backend = make_search_backend(search)  # before loading a model: a bad --search fails at once
        self._owns_model = isinstance(model, str)
        if isinstance(model, str):
            from hanlin import load_model

            model = load_model(model)
        self.model: ChatModel = model
        self.planner_model: ChatModel = planner_model or model  # e.g. a larger planner over small searchers
        self.max_nodes, self.max_depth, self.max_parallel = max_nodes, max_depth, max_parallel
        self.planner_protocol, self.searcher_protocol = planner_protocol, searcher_protocol
        self.planner_max_steps, self.searcher_max_steps = planner_max_steps, searcher_max_steps
        self.max_results, self.node_timeout_s, self.examples = max_results, node_timeout_s, examples
        self.params = GenerationParams(max_tokens=max_tokens, temperature=0.0)
        # seed the plan with one constrained split of the question (decompose.py). Off by default: on the default
        # model it raised citation validity (0.40 -> 0.73) and document recall (0.10 -> 0.30) on 5 questions but not
        # correctness, and on the end-to-end test question the unsplit question was answered better.
        self.decompose = decompose
        # each searcher reads the pages of its first results: their `read_lines` best lines are results too (0: off)
        self.read_lines = read_lines

    def close(self) -> None:
        if self._owns_model:
            self.model.close()

    # ---- public API ----------------------------------------------------------------------------------------
    async def astream(self, question: str) -> AsyncIterator[ResearchEvent]:
        question = " ".join(str(question).split())
        if not question:
            raise ConfigurationError("the research question is empty; ask something, e.g. \"which HTTP client ...\"")
        run = _Run(self, question)
        async for event in run.events():
            yield event

    def stream(self, question: str) -> Iterator[ResearchEvent]:
        return iterate_sync(self.astream(question), thread_name="hanlin-research")

    async def arun(self, question: str, on_event: Callable[[Any], None] | None = None) -> ResearchResult:
        events: list[Any] = []
        async for event in self.astream(question):
            events.append(event)
            if on_event is not None:
                on_event(event)
        return replay(events)

    def run(self, question: str, on_event: Callable[[Any], None] | None = None) -> ResearchResult:
        return run_sync(self.arun(question, on_event), thread_name="hanlin-research-run")


class _Run:
    """One research run: the graph, the ledger, the node tasks and the event queue."""

    def __init__(self, research: Research, question: str) -> None:
        self.r, self.question = research, question
        self.graph = PlanGraph(max_nodes=research.max_nodes, max_depth=research.max_depth)
        self.ledger = Ledger()
        self.t0 = time.perf_counter()
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.done: dict[str, asyncio.Event] = {}
        self.reported: set[str] = set()
        self.shown: set[int] = set()  # global citation numbers the planner was shown
        self.final_answer: str | None = None
        self.semaphore = asyncio.Semaphore(research.max_parallel)

    def now(self) -> float:
        return round(time.perf_counter() - self.t0, 4)

    def emit(self, event: Any) -> None:
        event.t = self.now()
        self.queue.put_nowait(event)

    # ---- planner tools -----------------------------------------------------------------------------------
    def planner_tools(self) -> list[Tool]:
        async def add_node(id: str, question: str, depends_on: list[str] | None = None) -> str:
            """Add a sub-question to the plan; it is searched as soon as the nodes it depends on are answered.

            Args:
                id: A short name for this node, e.g. "license".
                question: One simple question a search can answer.
                depends_on: Ids of earlier nodes whose answers this question needs; [] if none.
            """
            return self.add_node(id, question, depends_on)

        async def wait() -> str:
            """Wait for the nodes added so far and return their answers (with their [n] citations)."""
            pending = [t for n, t in self.tasks.items() if n not in self.reported]
            if not pending:
                return "no node is waiting to be reported; add a node, or finish(answer)."
            self.emit(PlannerNote(text=f"waiting for {len(pending)} node(s)"))
            await asyncio.gather(*(asyncio.shield(t) for t in pending), return_exceptions=True)
            return self.report()

        async def finish(answer: str) -> str:
            """Give the final answer to the original question, citing sources as [n].

            Args:
                answer: The final answer, with the [n] citations of the node answers it uses.
            """
            running = [n for n in self.tasks if n not in self.reported]
            if running:
                return f"nodes {running} are not answered yet: call wait() first, then finish(answer)."
            if not answer.strip():
                return "the answer is empty: write the answer to the question, with [n] citations."
            foreign = self.unsupported_words(answer)
            if foreign:
                return (f"refused: the answer says {', '.join(foreign[:6])}, which no node answer says. Write the "
                        "final answer from the node answers alone (keep their [n]):\n" + self.node_answers())
            self.final_answer = answer
            return "finished."

        return [Tool(add_node, timeout=None), Tool(wait, timeout=None), Tool(finish, timeout=None)]

    def add_node(self, id: str, question: str, depends_on: list[str] | None = None) -> str:
        try:
            node = self.graph.add(id, question, depends_on)
        except PlanError as exc:
            self.emit(PlanRejected(kind=exc.kind, message=exc.message, node_id=exc.node_id))
            return f"refused ({exc.kind}): {exc.message}"
        self.emit(NodeAdded(node_id=node.id, question=node.question, depends_on=node.depends_on, depth=node.depth))
        self.done[node.id] = asyncio.Event()
        self.tasks[node.id] = asyncio.ensure_future(self.run_node(node))
        return (f"node {node.id!r} added and being searched. Next: add_node for another sub-question, or wait() "
                "to get the answers.")

    async def seed(self) -> str:
        """The first nodes from one constrained split of the question (see decompose.py); the planner's first
        message says what was added, so it goes on from there."""
        from hanlin.plugins.apps.research.decompose import decompose

        steps = await decompose(self.r.planner_model, self.question, self.r.max_nodes)
        if not steps:
            self.emit(PlannerNote(text="the question was not split; the planner plans from scratch"))
            return ""
        added: list[str] = []
        for i, (question, needs_previous) in enumerate(steps, 1):
            # a step that says "that library" needs the step before it even when the split did not say so
            follows = needs_previous or refers_back(question)
            parent = [f"q{i - 1}"] if follows and i > 1 and f"q{i - 1}" in self.graph.nodes else []
            if self.add_node(f"q{i}", question, parent).startswith("node"):
                added.append(f"q{i} ({question})" + (f" after {parent[0]}" if parent else ""))
        self.emit(PlannerNote(text=f"the question split into {len(added)} node(s)"))
        return ("\nThese sub-questions were already added and are being searched: " + "; ".join(added)
                + ". Call wait() to get their answers; add_node only if something is still missing; then "
                  "finish(answer).") if added else ""

    def unsupported_words(self, answer: str) -> list[str]:
        """The answer's content words found in neither the question nor any node answer, when they are most of its
        content words: a final answer made up (the 0.5B planner copied its instructions' example answer, "The Zeta
        phone is made by Orbo [1]") rather than drawn from what the searchers read."""
        known = set(content_words(self.question))
        for node in self.graph.nodes.values():
            known.update(content_words(node.question) + content_words(node.answer))
        words = list(dict.fromkeys(content_words(strip_citations(answer))))
        foreign = [w for w in words if w not in known]
        return foreign if words and len(foreign) * 2 > len(words) else []

    def lost_parts(self, answer: str) -> list[Node]:
        """The answered nodes whose short answer the final answer does not say: fewer than half of the words it adds
        to its own query are in it ("ASGI toolkit: Starlette" is lost from "an ASGI toolkit [1]"), or, for an answer
        with none, such as "3.10", the answer itself is not."""
        said = strip_citations(answer).lower()
        words = set(tokenize(said))
        lost = []
        for node in self.graph.nodes.values():
            short = (node.short or strip_citations(node.answer)).strip().lower()
            if node.status != "answered" or not short:
                continue
            mine = set(tokenize(short)) - set(tokenize(self.searcher_query(node))) or set(tokenize(short))
            if (sum(w in words for w in mine) * 2 < len(mine)) if mine else short not in said:
                lost.append(node)
        return lost

    def node_answers(self) -> str:
        return "\n".join(f"{n.id}: {n.answer}" for n in self.graph.nodes.values() if n.status == "answered") \
            or "(no node was answered)"

    def report(self) -> str:
        lines = []
        for node_id, node in self.graph.nodes.items():
            if node_id in self.reported or node.status not in ("answered", "failed"):
                continue
            self.reported.add(node_id)
            if node.status == "answered":
                self.shown.update(cited(node.answer))
                lines.append(f"{node_id} ({node.question}): {node.answer}")
            else:
                lines.append(f"{node_id} ({node.question}) FAILED: {node.error}. You may add a node that asks "
                             "it another way.")
        return "\n".join(lines) or "no new answers."

    # ---- searchers ---------------------------------------------------------------------------------------
    def search_tool(self, local: dict[int, int]) -> Tool:
        return numbered_search_tool(self.r.backend, self.r.max_results, self.ledger, local)

    def searcher_task(self, node: Node, first_results: str) -> str:
        lines = [f"Question: {node.question}"]
        if node.depends_on:
            lines.append("Known from earlier steps:")
            for parent_id in node.depends_on:
                parent = self.graph.nodes[parent_id]
                known = strip_citations(parent.answer) if parent.status == "answered" else f"unknown ({parent.error})"
                lines.append(f"- {parent.question} {known}")
        lines += ["Search results:", first_results]
        return "\n".join(lines)

    def searcher_query(self, node: Node) -> str:
        """The node's question naming what its parents answered ("that toolkit" -> "Starlette", see grounding.py)."""
        answers = [parent.short or strip_citations(parent.answer) for parent in
                   (self.graph.nodes[p] for p in node.depends_on) if parent.status == "answered"]
        return " ".join(query_for(node.question, answers).split())[:300]

    async def run_node(self, node: Node) -> None:
        try:
            for parent in node.depends_on:
                await self.done[parent].wait()
            async with self.semaphore:
                node.status, node.started = "running", self.now()
                self.emit(NodeStarted(node_id=node.id))
                try:
                    if self.r.node_timeout_s is None:
                        await self._search(node)
                    else:
                        await asyncio.wait_for(self._search(node), self.r.node_timeout_s)
                except asyncio.TimeoutError:
                    self._fail(node, f"the searcher took longer than {self.r.node_timeout_s} s")
                except Exception as exc:  # a searcher's own failure: the node fails, the run goes on
                    self._fail(node, f"{type(exc).__name__}: {exc}")
        finally:
            self.done[node.id].set()

    def _fail(self, node: Node, error: str) -> None:
        node.status, node.error, node.ended = "failed", error, self.now()
        self.emit(NodeFailed(node_id=node.id, error=error))

    def shown_passages(self, local: dict[int, int]) -> dict[int, str]:
        """``{result number: passage text}`` of every result this searcher was shown."""
        return {n: p.text for n, g in sorted(local.items()) if (p := self.ledger.get(g)) is not None}

    def _quoted(self, node: Node, output: Any) -> str:
        """The node's answer from a decoded QuotedAnswer: the short answer if its quote supports it (else the quoted
        sentence), cited with the quote's result number."""
        short, quote, number = describe(output)
        text, kept = grounded_answer(strip_citations(short), quote, self.searcher_query(node))
        node.short, node.quote = text, quote
        if not kept:
            self.emit(SearcherStep(node_id=node.id, kind="error", text=f"the answer {short!r} is not in the sentence "
                                   "it quotes, or only repeats the question; the quoted sentence is the answer"))
        return f"{node.short} [{number}]."

    async def _answer_once(self, node: Node, results: str, output_type: type[BaseModel]) -> BaseModel:
        """One answer decoded under ``output_type``'s schema, from the node's task (its question and results)."""
        messages = [Message.system(SEARCHER_INSTRUCTIONS + " Reply as JSON."),
                    Message.user(self.searcher_task(node, results))]
        params = self.r.params.model_copy(update={"constraint": Constraint(
            json_schema=output_type.model_json_schema(), max_tokens=self.r.params.max_tokens)})
        done = await self.r.model.agenerate(messages, params)
        return output_type.model_validate_json(done.text)

    async def _search(self, node: Node) -> None:
        local: dict[int, int] = {}
        # The first search is made for the searcher, with its question as the query: small models otherwise answer
        # from memory without searching at all (Qwen2.5-Coder-0.5B did, on the first question tried).
        search = self.search_tool(local)
        query = self.searcher_query(node)
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
        async for event in agent.astream(self.searcher_task(node, results)):
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
                    short, quote, number = describe(output)
                    result = self._quoted(node, output)
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
                result = self._quoted(node, await self._answer_once(node, everything,
                                                                    answer_model(sentences(seen, query))))
            elif isinstance(event, RunFinished) and event.status != "answered":
                self._fail(node, f"the searcher ended {event.status} without an answer"
                                 + (f" ({last_error})" if last_error else ""))
                return
        if not result or not result.strip():
            self._fail(node, "the searcher gave an empty answer")
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

    # ---- the run ---------------------------------------------------------------------------------------------
    async def events(self) -> AsyncIterator[Any]:
        self.emit(ResearchStarted(question=self.question, max_nodes=self.r.max_nodes, max_depth=self.r.max_depth))
        driver = asyncio.ensure_future(self.drive())
        try:
            while True:
                event = await self.queue.get()
                if event is None:
                    break
                yield event
            await driver
        finally:
            if not driver.done():
                driver.cancel()
            await self.cancel_nodes()
            await asyncio.gather(driver, return_exceptions=True)

    async def cancel_nodes(self) -> None:
        for task in self.tasks.values():
            if not task.done():
                task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)

    async def drive(self) -> None:
        status, error = "answered", None
        try:
            await self.plan()
        except Exception as exc:  # the planner's model failing: still a final event, never a crash
            status, error = "error", f"{type(exc).__name__}: {exc}"
        if not self.graph.nodes:
            # the planner added nothing (small models copy the example, or answer from memory): the question
            # itself is searched as the one node, so the answer still rests on passages read
            self.emit(PlannerNote(text="the planner added no node" + (f" ({error})" if error else "")
                                  + "; the question is searched as one node"))
            status, error = "answered", None
            node = self.graph.add("question", self.question if len(self.question.split()) > 1 else
                                  f"{self.question} ?")
            self.emit(NodeAdded(node_id=node.id, question=node.question, depends_on=[], depth=1))
            self.done[node.id] = asyncio.Event()
            self.tasks[node.id] = asyncio.ensure_future(self.run_node(node))
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        answer = self.final_answer
        if answer:
            lost = self.lost_parts(answer)
            if lost:  # the planner's answer dropped what a node found: those node answers are added, cited
                self.emit(PlannerNote(text=f"the final answer left out the answers of {[n.id for n in lost]}; "
                                           "they are added from the nodes"))
                answer = " ".join(dict.fromkeys([answer.strip(), *(n.answer for n in lost)]))
                self.shown.update(g for n in lost for g in n.cited)
        if answer is None:
            self.report()
            answered = [n for n in self.graph.nodes.values() if n.status == "answered"]
            if answered:  # the planner never finished: the node answers are the best answer there is
                self.emit(PlannerNote(text="the planner did not call finish; the answer is built from the node "
                                           "answers"))
                answer = " ".join(n.answer for n in answered)
                self.shown.update(g for n in answered for g in n.cited)
            else:
                answer = ""
                if status == "answered":
                    status, error = "gave_up", "the planner did not finish and no node was answered"
        text, refs, dropped = self.ledger.finalize(answer, allowed=self.shown)
        for n in dropped:
            self.emit(CitationFlagged(where="final", number=n, reason="the final answer cites a number no node "
                                                                      "answer gave it; removed"))
        if text and not refs:
            self.emit(CitationFlagged(where="final", number=0, reason="the final answer cites no passage"))
        self.emit(ResearchFinal(status=status, answer=text, references=refs, error=error))
        self.queue.put_nowait(None)

    async def plan(self) -> None:
        seeded = await self.seed() if self.r.decompose else ""
        # a seeded plan leaves the planner wait(), finish() and a re-plan: on the 0.5B model its further steps were
        # refused finishes (copies of its instructions' example) that cost ~10 s each and changed nothing
        steps = min(self.r.planner_max_steps, SEEDED_PLANNER_STEPS) if seeded else self.r.planner_max_steps
        agent = Agent(self.r.planner_model, self.planner_tools(), protocol=self.r.planner_protocol,
                      instructions=PLANNER_INSTRUCTIONS.format(max_nodes=self.r.max_nodes),
                      max_steps=steps, params=self.r.params, examples=False)
        stream = agent.astream(f"Question: {self.question}{seeded}")
        try:
            async for event in stream:
                if isinstance(event, ErrorEvent):
                    if event.kind in ("parse", "invalid_arguments", "unknown_tool"):
                        self.emit(PlanRejected(kind="malformed", message=event.message[:400]))
                    else:
                        self.emit(PlannerNote(text=f"planner {event.kind}: {event.message[:300]}"))
                elif isinstance(event, ToolCallEvent):
                    self.emit(PlannerNote(text=f"planner calls {event.call.name}"
                                               f"({json.dumps(event.call.arguments)[:300]})"))
                elif isinstance(event, ToolResultEvent) and self.final_answer is not None:
                    break  # finish() was accepted
                elif isinstance(event, FinalAnswer) and self.final_answer is None:
                    if not self.reported:
                        # answered in plain words before seeing any node's answer: a guess, not research; the
                        # node answers (drive's fallback) are the answer instead
                        self.emit(PlannerNote(text=f"the planner answered before reading any node answer "
                                                   f"({event.text[:200]!r}); its words are not used"))
                    else:
                        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
                        self.report()
                        text = re.sub(r"^\s*final answer\s*:\s*", "", event.text, flags=re.IGNORECASE)
                        foreign = self.unsupported_words(text)
                        if foreign:  # made up, like a refused finish(): the node answers are the answer instead
                            self.emit(PlannerNote(text=f"the planner's answer says {', '.join(foreign[:6])}, which "
                                                       "no node answer says; not used"))
                        else:
                            self.final_answer = text
                elif isinstance(event, RunFinished) and event.status == "error":
                    raise RuntimeError("the planner's model failed; see the planner notes")
        finally:
            await stream.aclose()
