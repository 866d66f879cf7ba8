"""The typed records the assistant produces: what came in, what each stage decided, and the final decision."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Stage = Literal["rate_limit", "is_question", "rewrite", "retrieve", "relevance", "answer", "check"]


class ChatMessage(BaseModel):
    """One message of a group chat, as the webhook and ``ask`` take it."""

    model_config = ConfigDict(extra="forbid")

    group: str = Field(default="default", min_length=1, max_length=200)
    sender: str = Field(default="user", min_length=1, max_length=200)
    text: str = Field(max_length=8000)


class StageRecord(BaseModel):
    """What one stage saw and decided: ``passed`` False stops the pipeline with ``reason``."""

    stage: Stage
    passed: bool
    reason: str
    score: float | None = None
    threshold: float | None = None
    detail: dict[str, Any] = Field(default_factory=dict)


class Passage(BaseModel):
    number: int  # the [n] an answer cites
    source: str
    score: float
    text: str


class Decision(BaseModel):
    """The assistant's verdict on one message. ``answer`` is empty when silent; ``reason`` always says why."""

    group: str
    sender: str
    message: str
    query: str  # the message after the coreference rewrite (the message itself when none)
    answered: bool
    answer: str = ""
    stage: Stage  # the stage that decided: the last one on an answer, the refusing one on silence
    reason: str
    passages: list[Passage] = Field(default_factory=list)
    citations: list[int] = Field(default_factory=list)
    records: list[StageRecord] = Field(default_factory=list)
