"""Typed events an agent run emits as it happens.

Each event carries a ``type`` tag so a stream of them serialises to JSONL and
parses back with ``parse_event``; a UI, a server or a trace file all read the
same objects.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, TypeAdapter

from hanlin.messages import ToolCall, Usage

RunStatus = Literal["answered", "gave_up", "error"]


class _Event(BaseModel):
    step: int = 0


class StepStarted(_Event):
    type: Literal["step_started"] = "step_started"
    phase: str = "act"


class TokenDelta(_Event):
    type: Literal["token"] = "token"
    text: str


class ToolCallEvent(_Event):
    type: Literal["tool_call"] = "tool_call"
    call: ToolCall


class ToolResultEvent(_Event):
    type: Literal["tool_result"] = "tool_result"
    call_id: str
    name: str
    content: str
    is_error: bool = False
    duration_s: float = 0.0


class FinalAnswer(_Event):
    type: Literal["final_answer"] = "final_answer"
    output: Any
    text: str


class ErrorEvent(_Event):
    """Something went wrong. ``recoverable`` errors were shown to the model and the run went on."""

    type: Literal["error"] = "error"
    kind: Literal["parse", "unknown_tool", "invalid_arguments", "tool_failed", "output_invalid", "example_answer",
                  "model", "max_steps", "runaway"]
    message: str
    recoverable: bool = True


class RunFinished(_Event):
    type: Literal["run_finished"] = "run_finished"
    status: RunStatus
    usage: Usage = Field(default_factory=Usage)


Event = Annotated[
    StepStarted | TokenDelta | ToolCallEvent | ToolResultEvent | FinalAnswer | ErrorEvent | RunFinished,
    Field(discriminator="type"),
]
_event_adapter: TypeAdapter[Event] = TypeAdapter(Event)


def parse_event(data: dict[str, Any] | str) -> Event:
    """Rebuild an event from its dict or JSON form."""
    if isinstance(data, str):
        return _event_adapter.validate_json(data)
    return _event_adapter.validate_python(data)
