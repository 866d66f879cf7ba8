"""Tune the assistant's thresholds (question score, retrieval score, question coverage, relevance score, and in the
evaluation the answer's support) for F1 of the answer-or-stay-silent decision on labelled messages: ``good`` should
be answered, ``bad`` should get silence.

Each message is scored once by each stage (the model scores are integers 0..10, the retrieval score is the best
passage's; the evaluation's replay also knows the check's verdict and support score of its answer); a message is
accepted when every score reaches its threshold. The support threshold is searched over ``SUPPORT_STEPS``, the
coverage threshold over ``COVERAGE_STEPS`` (coarse steps: a few labelled messages cannot place it finer). The search
is exact: every pair of model thresholds (0..10) with every support and coverage step, and for each the knowledge
base's own retrieval sweep (``kb_tuning``: every observed best score is a candidate, ties to higher precision then
the lower threshold), with the messages the other thresholds refuse pushed below every retrieval candidate. Across
combinations, ties go to the higher precision, then to the thresholds nearest the defaults (a few labelled messages
rarely justify switching a stage off).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hanlin.errors import ConfigurationError
from hanlin.plugins.apps.assistant.is_question import IsQuestion
from hanlin.plugins.apps.assistant.relevance import Relevance
from hanlin.plugins.apps.assistant.settings import Thresholds

MODEL_STEPS = tuple(range(11))
SUPPORT_STEPS = (0.0, 0.25, 0.5, 0.75)
COVERAGE_STEPS = tuple(round(0.05 * n, 2) for n in range(13))  # 0 .. 0.6
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
    coverage: float = 1.0  # the share of the question's words its passages hold (coverage.py)


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
    coverage: float = DEFAULT.coverage


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
    from hanlin.plugins.apps.assistant.retrieve import OPEN, Retrieve

    is_q, rel, retrieve = IsQuestion(model), Relevance(model), Retrieve(kb, top_k, OPEN)
    rows = []
    for text, label in [(t, True) for t in good] + [(t, False) for t in bad]:
        passages, record = retrieve.run(text)
        q = is_q.run(text).score
        rows.append(Row(text, label, -1.0 if q is None else q, float(record.score or 0.0),
                        rel.run(text, passages).score or 0.0, coverage=record.detail["coverage"]))
    return rows


def search(rows: list[Row]) -> Tuned:
    from hanlin.plugins.tools.kb_tuning import choose, sweep, with_margin

    labels = [r.good for r in rows]
    floor = min(r.retrieval for r in rows) - 1.0  # below every real retrieval score: never accepted by a real one
    best: tuple[tuple[float, ...], Tuned] | None = None
    real = [r.retrieval for r in rows]
    for tq, tv, ts, tc in itertools.product(MODEL_STEPS, MODEL_STEPS, SUPPORT_STEPS, COVERAGE_STEPS):
        scores = [r.retrieval if r.question >= tq and r.relevance >= tv and r.checked and r.support >= ts
                  and r.coverage >= tc else floor for r in rows]
        candidates = [c for c in sweep(scores, labels) if c.threshold > floor]
        if not candidates:  # these thresholds refuse every message: F1 0, never better than a real choice
            continue
        m = choose(candidates)
        key = (m.f1, m.precision, -abs(tq - DEFAULT.question), -abs(tv - DEFAULT.relevance),
               -abs(ts - DEFAULT.support), -abs(tc - DEFAULT.coverage))
        if best is None or key > best[0]:
            best = (key, Tuned(tq, m.threshold, with_margin(m.threshold, real), tv, m.precision, m.recall, m.f1, ts,
                               tc))
    if best is None:  # no thresholds answer any message: the defaults, and a retrieval threshold above them all
        top = max(r.retrieval for r in rows) + 1.0
        return Tuned(DEFAULT.question, top, top, DEFAULT.relevance, 0.0, 0.0, 0.0)
    return best[1]


def thresholds_of(tuned: Tuned) -> Thresholds:
    return Thresholds(question=tuned.question, retrieval=tuned.written, relevance=tuned.relevance,
                      support=tuned.support, coverage=tuned.coverage)


def report(tuned: Tuned, rows: list[Row]) -> dict[str, Any]:
    return {"chosen": asdict(tuned), "messages": [asdict(r) for r in rows]}
