"""Stage: does the retrieved text actually answer the question? A constrained model score over the passages."""

from __future__ import annotations

from dataclasses import dataclass

from hanlin.chat_model import ChatModel
from hanlin.plugins.apps.assistant.records import Passage, StageRecord
from hanlin.plugins.apps.assistant.scoring import ask_score

SYSTEM = ("You check search results for a question. Reply as JSON {\"score\": N}: 10 when the passages state the "
          "answer to the question, 5 when they are on the topic but do not give the answer, 0 when unrelated.")


def render_passages(passages: list[Passage], limit: int = 700) -> str:
    return "\n\n".join(f"[{p.number}] ({p.source})\n{p.text[:limit]}" for p in passages)


@dataclass(slots=True)
class Relevance:
    model: ChatModel
    threshold: float = 5.0

    def run(self, query: str, passages: list[Passage]) -> StageRecord:
        score = ask_score(self.model, SYSTEM, f"Question: {query}\n\nPassages:\n{render_passages(passages)}",
                          "relevance")
        passed = score >= self.threshold
        reason = (f"the model scored the passages {score}/10 for answering it (threshold {self.threshold:g})"
                  + ("" if passed else ": the retrieved text does not answer the question"))
        return StageRecord(stage="relevance", passed=passed, reason=reason, score=score, threshold=self.threshold)
