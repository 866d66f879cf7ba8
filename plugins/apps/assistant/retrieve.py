"""Stage: look the question up in the knowledge base (hanlin's ``knowledge_base`` toolkit): top-k passages and the
tuned rejection threshold. A best score below it means the topic is not in the knowledge base: silence."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hanlin.plugins.apps.assistant.records import Passage, StageRecord


@dataclass(slots=True)
class Retrieve:
    kb: Any  # hanlin.plugins.tools.knowledge_base.KnowledgeBaseToolkit
    top_k: int = 3
    threshold: float | None = None  # None: the index's tuned threshold (hanlin kb tune / hanlin assistant tune)

    @property
    def applied(self) -> float:
        return self.threshold if self.threshold is not None else self.kb.threshold

    def run(self, query: str) -> tuple[list[Passage], StageRecord]:
        from hanlin.plugins.tools.kb_index import accepts

        threshold = self.applied
        hits = self.kb.index.search(query, self.top_k)
        best = hits[0]
        kept = [h for h in hits if accepts(h.score, threshold)]
        passages = [Passage(number=n, source=h.chunk.where, score=round(h.score, 6), text=h.chunk.text)
                    for n, h in enumerate(kept, 1)]
        detail = {"hits": [{"source": h.chunk.where, "score": round(h.score, 6)} for h in hits]}
        if not kept:
            return [], StageRecord(stage="retrieve", passed=False, score=best.score, threshold=threshold, detail=detail,
                                   reason=f"not in the knowledge base: the best passage ({best.chunk.where}) scored "
                                          f"{best.score:.3f}, below the rejection threshold {threshold:.3f}")
        return passages, StageRecord(stage="retrieve", passed=True, score=best.score, threshold=threshold, detail=detail,
                                     reason=f"{len(kept)} passage(s) at or above the threshold {threshold:.3f}")
