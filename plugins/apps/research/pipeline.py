"""The research pipeline: a planner agent grows the plan, one searcher agent per node answers it, concurrently.

The planner is a hanlin ``Agent`` whose tools are ``add_node(id, question, depends_on)``, ``wait()`` and
``finish(answer)``: typed calls checked by the tools' JSON schemas and by ``PlanGraph``, never executed code. A
node starts as soon as the nodes it depends on are done (at most ``max_parallel`` at a time); ``wait()`` gives the
planner the answers that came in, so it can add nodes after seeing results. Each searcher (``searcher.py``) is a
hanlin ``Agent`` over numbered results from a backend (the local index by default); it cites those numbers, the
ledger turns them into the run's global numbers, and the final answer is renumbered and checked (a number that
points at nothing is removed and reported).

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
from typing import Any

from pydantic import BaseModel, Field

from hanlin import Agent, ChatModel, ConfigurationError, GenerationParams, Tool
from hanlin.events import ErrorEvent, FinalAnswer, RunFinished, ToolCallEvent, ToolResultEvent
from hanlin.plugins.apps.research.citations import Ledger, cited, strip_citations
from hanlin.plugins.apps.research.events import (
    CitationFlagged,
    NodeAdded,
    NodeStarted,
    PlannerNote,
    PlanRejected,
    Reference,
    ResearchEvent,
    ResearchFinal,
    ResearchStarted,
    write_trace,
)
from hanlin.plugins.apps.research.graph import Node, PlanError, PlanGraph
from hanlin.plugins.apps.research.grounding import content_words, refers_back
from hanlin.plugins.apps.research.searcher import Searcher, make_search_backend
from hanlin.plugins.tools.search_backends import tokenize
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



SEEDED_PLANNER_STEPS = 3


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
        decompose: bool = True,
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
        # seed the plan with one constrained split of the question (decompose.py). On by default: on the default
        # model, the first 12 questions of `hanlin eval -d research` in one session on one machine, unsplit 0/12
        # correct and document recall 0.38, split 3/12 and 0.58 (the unsplit planner called a tool named after the
        # question's subject, then searched the whole question as one node).
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
        self.searcher = Searcher(research, self.graph, self.ledger, self.emit, self.now)

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
            mine = set(tokenize(short)) - set(tokenize(self.searcher.query(node))) or set(tokenize(short))
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

    # ---- the nodes ----------------------------------------------------------------------------------------
    async def run_node(self, node: Node) -> None:
        try:
            for parent in node.depends_on:
                await self.done[parent].wait()
            async with self.semaphore:
                node.status, node.started = "running", self.now()
                self.emit(NodeStarted(node_id=node.id))
                try:
                    if self.r.node_timeout_s is None:
                        await self.searcher.answer(node)
                    else:
                        await asyncio.wait_for(self.searcher.answer(node), self.r.node_timeout_s)
                except asyncio.TimeoutError:
                    self.searcher.fail(node, f"the searcher took longer than {self.r.node_timeout_s} s")
                except Exception as exc:  # a searcher's own failure: the node fails, the run goes on
                    self.searcher.fail(node, f"{type(exc).__name__}: {exc}")
        finally:
            self.done[node.id].set()

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
