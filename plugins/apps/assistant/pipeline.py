"""The assistant: the stages in order over a knowledge base, with per-group history and rate limits.

``Assistant.handle(ChatMessage)`` returns a ``Decision``; it never raises for model or retrieval behaviour that a
message can cause except a score in the wrong format (``ScoreFormatError``, a configuration problem to fix).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hanlin.chat_model import ChatModel
from hanlin.plugins.apps.assistant.answer import Answer
from hanlin.plugins.apps.assistant.check import Check, citations
from hanlin.plugins.apps.assistant.groups import Groups
from hanlin.plugins.apps.assistant.is_question import IsQuestion
from hanlin.plugins.apps.assistant.records import ChatMessage, Decision, Passage, StageRecord
from hanlin.plugins.apps.assistant.relevance import Relevance
from hanlin.plugins.apps.assistant.retrieve import Retrieve
from hanlin.plugins.apps.assistant.rewrite import Rewrite
from hanlin.plugins.apps.assistant.settings import Thresholds, load_thresholds


def open_kb(kb: str | Path | Any) -> Any:
    """A KnowledgeBaseToolkit from an index folder (``hanlin kb build``) or an existing toolkit."""
    from hanlin.plugins.tools.knowledge_base import KnowledgeBaseToolkit

    return kb if isinstance(kb, KnowledgeBaseToolkit) else KnowledgeBaseToolkit(index=kb)


class Assistant:
    def __init__(self, model: ChatModel, kb: str | Path | Any, *, thresholds: Thresholds | None = None,
                 top_k: int = 3, rewrite: bool = False, banned: Sequence[str] = (), full: bool = True,
                 groups: Groups | None = None) -> None:
        self.kb = open_kb(kb)
        if thresholds is None:
            folder = self.kb.index.folder
            thresholds = load_thresholds(folder) if folder is not None else Thresholds()
        self.thresholds = thresholds
        self.model = model
        self.full = full  # False: retrieval threshold only (the ablation baseline)
        self.is_question = IsQuestion(model, thresholds.question)
        self.rewrite = Rewrite(model) if rewrite else None
        self.retrieve = Retrieve(self.kb, top_k, thresholds.retrieval, thresholds.coverage if full else 0.0)
        self.relevance = Relevance(model, thresholds.relevance)
        self.answer = Answer(model)
        self.check = Check(tuple(banned), thresholds.support)
        self.groups = groups or Groups()

    def handle(self, message: ChatMessage | str, *, dry_run: bool = False) -> Decision:
        """Decide on one message. ``dry_run``: a test of the pipeline (the retrieval-testing page): the group's history
        is read but nothing is remembered and no rate limit is spent."""
        msg = message if isinstance(message, ChatMessage) else ChatMessage(text=message)
        history = self.groups.history(msg.group)
        if not dry_run:
            self.groups.remember(msg.group, msg.sender, msg.text)
        records: list[StageRecord] = []
        query, passages = msg.text, []

        def silent(record: StageRecord) -> Decision:
            records.append(record)
            return Decision(group=msg.group, sender=msg.sender, message=msg.text, query=query, answered=False,
                            stage=record.stage, reason=record.reason, passages=passages, records=records)

        limited = None if dry_run else self.groups.take(msg.group)
        if limited:
            return silent(StageRecord(stage="rate_limit", passed=False, reason=limited))
        if self.full:
            record = self.is_question.run(msg.text)
            if not record.passed:
                return silent(record)
            records.append(record)
            if self.rewrite is not None:
                query, record = self.rewrite.run(msg.text, history)
                records.append(record)
        passages, record = self.retrieve.run(query)
        if not record.passed:
            return silent(record)
        records.append(record)
        if self.full:
            record = self.relevance.run(query, passages)
            if not record.passed:
                return silent(record)
            records.append(record)
        text, record = self.answer.run(query, passages)
        if not record.passed:
            return silent(record)
        records.append(record)
        if self.full:
            record = self.check.run(text, passages, query)
            if not record.passed:
                return silent(record)
            records.append(record)
            text = record.detail.get("answer", text)  # with the citations the check added
        if not dry_run:
            self.groups.remember(msg.group, "assistant", text)
        return Decision(group=msg.group, sender=msg.sender, message=msg.text, query=query, answered=True, answer=text,
                        stage=records[-1].stage, reason=records[-1].reason, passages=passages,
                        citations=citations(text), records=records)


def cited_passages(decision: Decision) -> list[Passage]:
    return [p for p in decision.passages if p.number in decision.citations]
