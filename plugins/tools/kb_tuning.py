"""Tune the knowledge base's rejection threshold from labelled questions (HuixiangDou's approach).

A retriever always returns *something*; whether the best match is an answer or noise depends on its score, and
where to draw that line depends on the documents and the embedder. So we measure it: each labelled question says
whether the knowledge base should answer it. Asking each one gives its best score; every observed best score is a
candidate threshold (accept when best >= threshold), and the candidate with the highest F1 for detecting
answerable questions wins. Ties go to higher precision (fewer noisy answers), then to the lower threshold (fewer
real questions refused).

The winning candidate is the score of the weakest accepted question, so a paraphrase scoring a hair lower would
be refused. The threshold written to the index therefore sits midway between it and the next lower observed
score: no labelled question lies in between, so precision, recall and F1 are exactly those of the candidate.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hanlin.plugins.tools.kb_index import SCORE_EPS, KnowledgeBaseError, KnowledgeIndex, accepts


@dataclass(slots=True)
class Labelled:
    question: str
    answerable: bool
    line: int


@dataclass(slots=True)
class Metrics:
    threshold: float
    precision: float
    recall: float
    f1: float
    tp: int
    fp: int
    fn: int
    tn: int


@dataclass(slots=True)
class Scored:
    question: str
    answerable: bool
    best_score: float
    best_source: str


@dataclass(slots=True)
class TuneReport:
    chosen: Metrics  # the best candidate (an observed score)
    threshold: float  # what gets written: midway below the chosen candidate, same metrics on these questions
    previous: Metrics  # the index's threshold before tuning, measured on the same questions
    rows: list[Scored]
    candidates: list[Metrics]

    def as_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "chosen": asdict(self.chosen), "previous": asdict(self.previous),
                "questions": [asdict(r) for r in self.rows], "candidates": [asdict(c) for c in self.candidates]}


def read_labelled(path: str | Path) -> list[Labelled]:
    """Rows of {"question": str, "answerable": bool}, one JSON object a line; blank lines are skipped.

    Any malformed row is an error naming its line, so a typo cannot silently drop a question from the tuning.
    """
    source = Path(path)
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise KnowledgeBaseError(f"cannot read the labelled questions {str(path)!r}: {exc.strerror or exc}") from None
    rows: list[Labelled] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"line {number} of {source}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise KnowledgeBaseError(f"{where} is not valid JSON ({exc.msg}); each line must be an object like "
                                     '{"question": "...", "answerable": true}') from None
        if not isinstance(row, dict):
            raise KnowledgeBaseError(f"{where} is a JSON {type(row).__name__}, not an object with "
                                     "'question' and 'answerable'")
        question, answerable = row.get("question"), row.get("answerable")
        if not isinstance(question, str) or not question.strip():
            raise KnowledgeBaseError(f"{where}: 'question' must be a non-empty string, got {question!r}")
        if not isinstance(answerable, bool):
            raise KnowledgeBaseError(f"{where}: 'answerable' must be true or false, got {answerable!r}")
        rows.append(Labelled(question.strip(), answerable, number))
    kinds = {r.answerable for r in rows}
    if kinds != {True, False}:
        have = "no questions" if not rows else f"only {'answerable' if True in kinds else 'unanswerable'} questions"
        raise KnowledgeBaseError(f"{source} has {have}; tuning needs both answerable and unanswerable ones")
    return rows


def evaluate(scores: list[float], labels: list[bool], threshold: float) -> Metrics:
    """Precision, recall and F1 of 'answerable' when a question is accepted iff its best score >= threshold."""
    tp = fp = fn = tn = 0
    for score, label in zip(scores, labels, strict=True):
        accepted = accepts(score, threshold)
        tp += int(accepted and label)
        fp += int(accepted and not label)
        fn += int(not accepted and label)
        tn += int(not accepted and not label)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Metrics(threshold, precision, recall, f1, tp, fp, fn, tn)


def sweep(scores: list[float], labels: list[bool]) -> list[Metrics]:
    """Metrics at every distinct observed best score, lowest threshold first."""
    return [evaluate(scores, labels, t) for t in sorted(set(scores))]


def choose(candidates: list[Metrics]) -> Metrics:
    return max(candidates, key=lambda m: (m.f1, m.precision, -m.threshold))


def with_margin(chosen: float, scores: list[float]) -> float:
    """Midway between ``chosen`` and the highest observed score below it (``chosen`` itself when none is)."""
    below = [s for s in scores if s < chosen - 2 * SCORE_EPS]
    return (chosen + max(below)) / 2 if below else chosen


def tune(index: KnowledgeIndex, labelled: list[Labelled]) -> TuneReport:
    rows = []
    for item in labelled:
        best = index.search(item.question, top_k=1)[0]
        rows.append(Scored(item.question, item.answerable, best.score, best.chunk.where))
    scores, labels = [r.best_score for r in rows], [r.answerable for r in rows]
    candidates = sweep(scores, labels)
    chosen = choose(candidates)
    return TuneReport(chosen, with_margin(chosen.threshold, scores), evaluate(scores, labels, index.threshold),
                      rows, candidates)


def write_threshold(index: KnowledgeIndex, report: TuneReport, labelled_path: str | Path) -> Path:
    """Store the chosen threshold in the index's meta.json: the tool then uses it unless told otherwise."""
    chosen = report.chosen
    index.meta["threshold"] = report.threshold
    index.meta["tuning"] = {"labelled": str(Path(labelled_path).resolve()), "questions": len(report.rows),
                            "candidate": chosen.threshold, "precision": chosen.precision, "recall": chosen.recall,
                            "f1": chosen.f1}
    index.write_meta()
    assert index.folder is not None
    return index.folder / "meta.json"
