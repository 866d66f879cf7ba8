"""One model pass over labelled messages, then every threshold decided by replay: the evaluation's tuning.

Each message goes through every stage once with the gates open (question and relevance scores, the best retrieval
score, the answer and whether the check passed it); a decision under any thresholds is then a comparison, no model
call. That is exact because nothing a stage produces depends on a threshold (the passages that go to the model are
chosen relative to the best one, ``retrieve.kept``), and it lets the evaluation tune all three thresholds for the
whole pipeline on one fold of messages and apply them to the other, as a team tuning on a few labelled messages
then meets new ones. Tuning the retrieval threshold alone (``kb_tuning``) trades recall for precision that the
later stages already give, so the pipeline's recall was capped at the retrieval's (0.75 held out, measured).

A message whose best retrieval score is below every threshold the tuner can write (under the lowest answerable
message's score, less the margin) is silent under all of them: it is not asked the model.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from hanlin.plugins.apps.assistant.answer import Answer
from hanlin.plugins.apps.assistant.check import Check
from hanlin.plugins.apps.assistant.is_question import IsQuestion
from hanlin.plugins.apps.assistant.records import Passage
from hanlin.plugins.apps.assistant.relevance import Relevance
from hanlin.plugins.apps.assistant.retrieve import OPEN, Retrieve
from hanlin.plugins.apps.assistant.settings import Thresholds
from hanlin.plugins.apps.assistant.tune import Row, search, thresholds_of


@dataclass(slots=True)
class Probe:
    """What every stage made of one message with the gates open."""

    good: bool
    question: float  # -1: refused by the length gate, before any model call
    retrieval: float
    relevance: float = 0.0
    answer: str = ""
    checked: bool = False  # the check passed it on everything but support (which is a tuned threshold)
    check_reason: str = "not asked: below every retrieval threshold the tuner can choose"
    passages: list[Passage] = field(default_factory=list)
    asked: bool = True  # False: under every retrievable threshold, so never asked the model
    support: float = 0.0  # the check's support score of the answer
    coverage: float = 0.0  # the share of the question's words the passages hold

    def row(self, text: str) -> Row:
        return Row(text, self.good, self.question, self.retrieval, self.relevance, self.checked, self.support,
                   self.coverage)


def probe(model: Any, kb: Any, texts: Sequence[tuple[str, bool]], floor: float, top_k: int = 3,
          progress: Callable[[int], None] | None = None) -> list[Probe]:
    """Every stage once per message (gates open); messages under ``floor`` get the retrieval score only."""
    is_q, rel, ans, check = IsQuestion(model, 0), Relevance(model, 0), Answer(model), Check(min_support=0.0)
    retrieve = Retrieve(kb, top_k, OPEN)
    probes = []
    for n, (text, good) in enumerate(texts, 1):
        passages, record = retrieve.run(text)
        score, coverage = float(record.score or 0.0), float(record.detail["coverage"])
        if score < floor:
            probes.append(Probe(good, -1.0, score, asked=False, coverage=coverage, passages=passages))
        else:
            q = is_q.run(text).score
            relevance = rel.run(text, passages).score or 0.0 if q is not None else 0.0
            answer, _ = ans.run(text, passages)
            verdict = check.run(answer, passages, text) if answer else None
            answer = verdict.detail.get("answer", answer) if verdict else answer
            probes.append(Probe(good, -1.0 if q is None else float(q), score, float(relevance), answer,
                                bool(verdict and verdict.passed),
                                verdict.reason if verdict else "the model wrote an empty answer", passages,
                                support=float(verdict.detail.get("support", 0.0)) if verdict else 0.0,
                                coverage=coverage))
        if progress is not None:
            progress(n)
    return probes


def save(path: Path, probes: Sequence[Probe], asked: Sequence[tuple[str, bool]], model: str) -> None:
    """Keep a model pass: one JSON line per message, with the message and the model that answered it."""
    def plain(p: Probe) -> dict[str, Any]:
        return {**{f.name: getattr(p, f.name) for f in fields(p)}, "passages": [q.model_dump() for q in p.passages]}

    lines = [json.dumps({"model": model, "text": text, "probe": plain(p)}) for p, (text, _) in zip(probes, asked)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def load(path: Path, asked: Sequence[tuple[str, bool]], model: str, retrieve: Retrieve,
         floor: float = OPEN) -> list[Probe | None]:
    """The kept probe of each message (same text, label and model), or None where the model must be asked: a message
    not kept, or one kept unasked that ``floor`` now reaches. Adding labelled messages asks the model for them only.
    The check and the coverage need no model, so they are computed again (``retrieve`` gives the knowledge base's
    word frequencies): a change to either is measured without a new pass."""
    kept: dict[tuple[str, bool], dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip() and (row := json.loads(line))["model"] == model:
                kept[(row["text"], row["probe"]["good"])] = row["probe"]
    probes: list[Probe | None] = []
    check = Check(min_support=0.0)
    for text, good in asked:
        row = kept.get((text, good))
        p = None if row is None else Probe(**{**row, "passages": [Passage(**q) for q in row["passages"]]})
        if p is not None and not p.asked and p.retrieval >= floor:
            p = None
        if p is not None and p.passages:
            p.coverage = retrieve.covered(text, [q.text for q in p.passages]).share
        if p is not None and p.answer:
            verdict = check.run(p.answer, p.passages, text)
            p.checked, p.check_reason = verdict.passed, verdict.reason
            p.answer = verdict.detail.get("answer", p.answer)
            p.support = float(verdict.detail.get("support", 0.0))
        probes.append(p)
    return probes


def lowest_threshold(scores: list[float], goods: list[bool]) -> float:
    """The lowest retrieval threshold the tuner can write on these messages: a candidate under the lowest
    answerable score only adds unanswerable ones (lower precision), and the margin goes halfway down from there."""
    from hanlin.plugins.tools.kb_tuning import with_margin

    answerable = [s for s, g in zip(scores, goods, strict=True) if g]
    return with_margin(min(answerable), scores) if answerable else max(scores, default=0.0)


def tuned_full(probes: Sequence[Probe], texts: Sequence[str]) -> Thresholds:
    return thresholds_of(search([p.row(t) for p, t in zip(probes, texts, strict=True)]))


def tuned_without_model(probes: Sequence[Probe], texts: Sequence[str]) -> Thresholds:
    """The retrieval and coverage thresholds tuned together as if no model stage scored or checked anything."""
    rows = [p.row(t) for p, t in zip(probes, texts, strict=True)]
    for r in rows:
        r.question, r.relevance, r.checked, r.support = 10.0, 10.0, True, 1.0
    return thresholds_of(search(rows))


def tuned_retrieval(probes: Sequence[Probe]) -> float:
    from hanlin.plugins.tools.kb_tuning import choose, sweep, with_margin

    scores, goods = [p.retrieval for p in probes], [p.good for p in probes]
    return with_margin(choose(sweep(scores, goods)).threshold, scores)


def decide(p: Probe, t: Thresholds, full: bool, coverage: bool | None = None) -> tuple[bool, str]:
    """(answered, the stage that decided and why) under thresholds ``t``; ``full`` False: no model scores or check
    (the retrieval score only, and the question's coverage too when ``coverage``, by default as ``full``)."""
    from hanlin.plugins.tools.kb_index import accepts

    coverage = full if coverage is None else coverage

    retrieved = accepts(p.retrieval, t.retrieval if t.retrieval is not None else OPEN)
    if not p.asked or (not retrieved and not full):
        return False, f"retrieve: best passage {p.retrieval:.3f} < {t.retrieval:.3f}"
    if full and p.question < t.question:
        return False, ("is_question: too short" if p.question < 0 else
                       f"is_question: scored {p.question:g} < {t.question:g}")
    if not retrieved:
        return False, f"retrieve: best passage {p.retrieval:.3f} < {t.retrieval:.3f}"
    if coverage and p.coverage < t.coverage:
        return False, f"retrieve: coverage {p.coverage:.2f} < {t.coverage:g}"
    if full and p.relevance < t.relevance:
        return False, f"relevance: scored {p.relevance:g} < {t.relevance:g}"
    if not p.answer:
        return False, "answer: empty"
    if full and not p.checked:
        return False, f"check: {p.check_reason}"
    if full and p.support < t.support:
        return False, f"check: support {p.support:.2f} < {t.support:g}"
    return True, "check: passed" if full else "answer: written"
