"""The assistant's thresholds, kept beside the knowledge-base index in ``assistant.json`` (written by tune)."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hanlin.errors import ConfigurationError

FILE = "assistant.json"


class Thresholds(BaseModel):
    model_config = ConfigDict(extra="forbid")

    retrieval: float | None = None  # None: the index's own (hanlin kb tune), else the backend default
    question: float = Field(default=6.0, ge=0, le=10)
    relevance: float = Field(default=5.0, ge=0, le=10)
    support: float = Field(default=0.5, ge=0, le=1)  # check: share of an answer's new words its passages must hold
    coverage: float = Field(default=0.3, ge=0, le=1)  # retrieve: share of the question's words the passages must hold


def load_thresholds(kb: str | Path) -> Thresholds:
    path = Path(kb) / FILE
    if not path.is_file():
        return Thresholds()
    try:
        data = json.loads(path.read_text())
        return Thresholds.model_validate(data.get("thresholds", data))
    except (ValueError, ValidationError) as exc:
        raise ConfigurationError(f"{path} is damaged ({exc}); delete it or run `hanlin assistant tune` again") from None


def save_thresholds(kb: str | Path, thresholds: Thresholds, report: dict) -> Path:
    path = Path(kb) / FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"thresholds": thresholds.model_dump(), "tuning": report}, indent=2))
    tmp.replace(path)
    return path
