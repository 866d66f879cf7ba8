"""What a run produces: one ``Prediction`` per item and sample, and a ``DatasetResult`` per dataset that the
report, the comparison and the charts read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hanlin.plugins.evaluators.metrics import Score


@dataclass(slots=True)
class Prediction:
    id: str
    sample: int
    group: str
    gold: str
    output: str
    extracted: str | None
    correct: bool
    detail: str = ""
    cached: bool = False
    finish_reason: str = ""
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(slots=True)
class DatasetResult:
    dataset: str
    kind: str
    model: str
    metrics: dict[str, Score]
    groups: dict[str, Score]
    predictions: list[Prediction]
    prompts: list[dict[str, Any]]
    shots: int
    model_calls: int
    cached: int
    elapsed_s: float
    info: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def answered(self) -> float:
        """Share of outputs the extractor found an answer in: a low value means a prompt-format problem."""
        return sum(p.extracted is not None for p in self.predictions) / max(1, len(self.predictions))

    @property
    def errors(self) -> int:
        return sum(p.error is not None for p in self.predictions)
