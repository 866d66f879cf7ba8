"""Tune the assistant's three thresholds (question score, retrieval score, relevance score) for F1 of the
answer-or-stay-silent decision on labelled messages: ``good`` should be answered, ``bad`` should get silence.

Each message is scored once by each stage (the model scores are integers 0..10, the retrieval score is the best
passage's; the evaluation's replay also knows the check's verdict and support score of its answer); a message is
accepted when every score reaches its threshold. The support threshold is searched over ``SUPPORT_STEPS``. The search is exact: every pair of model
thresholds (0..10), and for each pair the knowledge base's own retrieval sweep (``kb_tuning``: every observed best
score is a candidate, ties to higher precision then the lower threshold), with the messages the model thresholds
refuse pushed below every retrieval candidate. Across pairs, ties go to the higher precision, then to the model
thresholds nearest the defaults (a few labelled messages rarely justify switching a stage off).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hanlin.errors import ConfigurationError
from hanlin.plugins.apps.assistant.is_question import IsQuestion
from hanlin.plugins.apps.assistant.records import Passage
from hanlin.plugins.apps.assistant.relevance import Relevance
from hanlin.plugins.apps.assistant.settings import Thresholds

MODEL_STEPS = tuple(range(11))
SUPPORT_STEPS = (0.0, 0.25, 0.5, 0.75)
DEFAULT = Thresholds()


@dataclass(slots=True)
class Row:
    text: str
    good: bool
    question: float
    retrieval: float
    relevance: float
    checked: bool = True  # the check stage passed its answer (the evaluation's replay knows; `tune` asks no answer)
    support: float = 1.0  # the check's support score of that answer


@dataclass(slots=True)
class Tuned:
    question: float
    retrieval: float  # the candidate (an observed score)
    written: float  # what is stored: midway below the candidate (kb_tuning.with_margin)
    relevance: float
    precision: float
    recall: float
    f1: float
    support: float = DEFAULT.support


def read_messages(path: str | Path, good: bool) -> list[str]:
    """One JSON object a line with ``text`` (or ``question``); blank lines skipped; errors name the line."""
    source = Path(path)
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigurationError(f"cannot read labelled messages {str(path)!r}: {exc.strerror or exc}") from None
    texts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"line {number} of {source} is not valid JSON ({exc.msg}); each line must be an "
                                     'object like {"text": "how do I ..."}') from None
        text = row.get("text", row.get("question")) if isinstance(row, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise ConfigurationError(f"line {number} of {source} needs a non-empty string 'text', got {row!r}")
        texts.append(text.strip())
    if not texts:
        raise ConfigurationError(f"{source} has no messages; the {'good' if good else 'bad'} file needs at least one")
    return texts


def score_rows(model: Any, kb: Any, good: list[str], bad: list[str], top_k: int = 3) -> list[Row]:
    is_q, rel = IsQuestion(model), Relevance(model)
    rows = []
    for text, label in [(t, True) for t in good] + [(t, False) for t in bad]:
        hits = kb.index.search(text, top_k)
        passages = [Passage(number=n, source=h.chunk.where, score=h.score, text=h.chunk.text)
                    for n, h in enumerate(hits, 1)]
        q = is_q.run(text).score
        rows.append(Row(text, label, -1.0 if q is None else q, hits[0].score,
                        rel.run(text, passages).score or 0.0))
    return rows


def search(rows: list[Row]) -> Tuned:
    from hanlin.plugins.tools.kb_tuning import choose, sweep, with_margin

    labels = [r.good for r in rows]
    floor = min(r.retrieval for r in rows) - 1.0  # below every real retrieval score: never accepted by a real one
    best: tuple[tuple[float, ...], Tuned] | None = None
    real = [r.retrieval for r in rows]
    for tq, tv, ts in itertools.product(MODEL_STEPS, MODEL_STEPS, SUPPORT_STEPS):
        scores = [r.retrieval if r.question >= tq and r.relevance >= tv and r.checked and r.support >= ts else floor
                  for r in rows]
        candidates = [c for c in sweep(scores, labels) if c.threshold > floor]
        if not candidates:  # these thresholds refuse every message: F1 0, never better than a real choice
            continue
        m = choose(candidates)
        key = (m.f1, m.precision, -abs(tq - DEFAULT.question), -abs(tv - DEFAULT.relevance),
               -abs(ts - DEFAULT.support))
        if best is None or key > best[0]:
            best = (key, Tuned(tq, m.threshold, with_margin(m.threshold, real), tv, m.precision, m.recall, m.f1, ts))
    if best is None:  # no thresholds answer any message: the defaults, and a retrieval threshold above them all
        top = max(r.retrieval for r in rows) + 1.0
        return Tuned(DEFAULT.question, top, top, DEFAULT.relevance, 0.0, 0.0, 0.0)
    return best[1]


def thresholds_of(tuned: Tuned) -> Thresholds:
    return Thresholds(question=tuned.question, retrieval=tuned.written, relevance=tuned.relevance,
                      support=tuned.support)


def report(tuned: Tuned, rows: list[Row]) -> dict[str, Any]:
    return {"chosen": asdict(tuned), "messages": [asdict(r) for r in rows]}
