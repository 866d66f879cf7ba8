"""Stage: look the question up in the knowledge base (hanlin's ``knowledge_base`` toolkit): top-k passages and the
tuned rejection threshold. A best score below it means the topic is not in the knowledge base: silence. So does
passages that hold too little of what the question asks (``coverage.py``: same topic, but not this question).

The threshold decides *whether* (on the best passage); *which* passages go to the model does not depend on it:
the top-k that score at least ``KEEP`` of the best. So the passages, the answer and the check a message gets are
the same under every threshold, and thresholds can be tuned by replaying one pass over labelled messages
(``evaluation.py``) instead of one model pass per candidate."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hanlin.plugins.apps.assistant.coverage import Coverage, Covered
from hanlin.plugins.apps.assistant.records import Passage, StageRecord

OPEN = -1e9  # a retrieval threshold every message clears
KEEP = 0.85  # a passage goes with the best one when it scores at least this share of the best


def kept(hits: list[Any]) -> list[Any]:
    """The hits that go to the model (when the best clears the threshold): the best and those close to it."""
    if not hits:
        return []
    floor = hits[0].score - (1 - KEEP) * abs(hits[0].score)  # scores may be negative (cosine)
    return [h for h in hits if h.score >= floor]


@dataclass(slots=True)
class Retrieve:
    kb: Any  # hanlin.plugins.tools.knowledge_base.KnowledgeBaseToolkit
    top_k: int = 3
    threshold: float | None = None  # None: the index's tuned threshold (hanlin kb tune / hanlin assistant tune)
    coverage: float = 0.0  # the least share of the question's words the passages must hold (0: not tested)
    _coverage: Coverage | None = field(default=None, init=False, repr=False)

    def covered(self, query: str, texts: list[str]) -> Covered:
        """The question's coverage by the passages' ``texts`` (document frequencies counted once per knowledge base)."""
        if self._coverage is None:
            self._coverage = Coverage(c.text for c in self.kb.index.chunks)
        return self._coverage.of(query, texts)

    @property
    def applied(self) -> float:
        return self.threshold if self.threshold is not None else self.kb.threshold

    def run(self, query: str) -> tuple[list[Passage], StageRecord]:
        from hanlin.plugins.tools.kb_index import accepts

        threshold = self.applied
        hits = self.kb.index.search(query, self.top_k)
        best = hits[0]
        passages = [Passage(number=n, source=h.chunk.where, score=round(h.score, 6), text=h.chunk.text)
                    for n, h in enumerate(kept(hits), 1)]
        covered = self.covered(query, [p.text for p in passages])
        detail = {"hits": [{"source": h.chunk.where, "score": round(h.score, 6)} for h in hits],
                  "coverage": covered.share, "coverage_threshold": self.coverage, "missing": covered.missing}
        if not accepts(best.score, threshold):
            return [], StageRecord(stage="retrieve", passed=False, score=best.score, threshold=threshold, detail=detail,
                                   reason=f"not in the knowledge base: the best passage ({best.chunk.where}) scored "
                                          f"{best.score:.3f}, below the rejection threshold {threshold:.3f}")
        if covered.share < self.coverage:
            return [], StageRecord(stage="retrieve", passed=False, score=best.score, threshold=threshold, detail=detail,
                                   reason=f"the knowledge base has the topic but not this question: the passages hold "
                                          f"{covered.share:.0%} of its words (at least {self.coverage:.0%} needed); "
                                          f"missing: {', '.join(covered.missing[:5])}")
        return passages, StageRecord(stage="retrieve", passed=True, score=best.score, threshold=threshold, detail=detail,
                                     reason=f"the best passage scored {best.score:.3f}, at or above the threshold "
                                            f"{threshold:.3f}; {len(passages)} passage(s) within {KEEP:.0%} of "
                                            f"it, holding {covered.share:.0%} of the question's words")
