"""The research run as typed events: what a terminal, a server or a trace file reads.

Each event has a ``type`` tag and the seconds since the run started (``t``), so a JSONL trace parses back with
``parse_research_event`` and replays into the same result (``replay``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, TypeAdapter

from hanlin.errors import ConfigurationError


class _ResearchEvent(BaseModel):
    t: float = 0.0


class ResearchStarted(_ResearchEvent):
    type: Literal["research_started"] = "research_started"
    question: str
    max_nodes: int
    max_depth: int


class NodeAdded(_ResearchEvent):
    type: Literal["node_added"] = "node_added"
    node_id: str
    question: str
    depends_on: list[str] = Field(default_factory=list)
    depth: int = 1


RejectKind = Literal["unknown_parent", "cycle", "duplicate_id", "too_many_nodes", "too_deep", "malformed"]


class PlanRejected(_ResearchEvent):
    """A planner call refused: the planner sees ``message`` as its observation and the run goes on."""

    type: Literal["plan_rejected"] = "plan_rejected"
    kind: RejectKind
    message: str
    node_id: str | None = None


class NodeStarted(_ResearchEvent):
    type: Literal["node_started"] = "node_started"
    node_id: str


class SearcherStep(_ResearchEvent):
    """One step of a node's searcher: a tool call, its result, or an error it recovered from."""

    type: Literal["searcher_step"] = "searcher_step"
    node_id: str
    kind: Literal["tool_call", "tool_result", "error"]
    text: str


class CitationFlagged(_ResearchEvent):
    """A ``[n]`` that points at no passage the writer read: removed from the text, never shown as a reference."""

    type: Literal["citation_flagged"] = "citation_flagged"
    where: str  # a node id, or "final"
    number: int
    reason: str


class Reference(BaseModel):
    number: int
    url: str
    title: str = ""
    passage: str


class NodeAnswered(_ResearchEvent):
    type: Literal["node_answered"] = "node_answered"
    node_id: str
    answer: str  # with global citation numbers
    references: list[Reference] = Field(default_factory=list)


class NodeFailed(_ResearchEvent):
    type: Literal["node_failed"] = "node_failed"
    node_id: str
    error: str


class PlannerNote(_ResearchEvent):
    """Something the planner loop did that is not a graph change: a wait, an error it recovered from."""

    type: Literal["planner_note"] = "planner_note"
    text: str


class ResearchFinal(_ResearchEvent):
    type: Literal["final"] = "final"
    status: Literal["answered", "gave_up", "error"]
    answer: str  # citations renumbered 1..m in order of first use
    references: list[Reference] = Field(default_factory=list)
    error: str | None = None


ResearchEvent = Annotated[
    ResearchStarted | NodeAdded | PlanRejected | NodeStarted | SearcherStep | CitationFlagged | NodeAnswered
    | NodeFailed | PlannerNote | ResearchFinal,
    Field(discriminator="type"),
]
_adapter: TypeAdapter[ResearchEvent] = TypeAdapter(ResearchEvent)


def parse_research_event(data: dict[str, Any] | str) -> ResearchEvent:
    return _adapter.validate_json(data) if isinstance(data, str) else _adapter.validate_python(data)


def write_trace(events: list[Any], path: str | Path) -> Path:
    """One event per line (JSONL); ``load_trace`` reads it back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for event in events:
            fh.write(event.model_dump_json() + "\n")
    return path


def load_trace(path: str | Path) -> list[ResearchEvent]:
    events = []
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            events.append(parse_research_event(json.loads(line)))
        except Exception as exc:
            raise ConfigurationError(f"{path}:{lineno}: not a research trace event ({exc})") from None
    return events
