"""Stage: write the answer from the passages only, citing them as [n]."""

from __future__ import annotations

from dataclasses import dataclass

from hanlin.chat_model import ChatModel, GenerationParams
from hanlin.messages import Message
from hanlin.plugins.apps.assistant.records import Passage, StageRecord
from hanlin.plugins.apps.assistant.relevance import render_passages

# No "say I don't know" instruction: with it Qwen2.5-Coder-0.5B refused 6 of 10 answerable questions (measured);
# whether to answer is decided by the stages before, and the check stage still refuses an answer that admits it.
SYSTEM = ("Answer the question in one or two sentences using only the passages. End each sentence with the number "
          "of the passage it comes from, like [1].")


@dataclass(slots=True)
class Answer:
    model: ChatModel
    max_tokens: int = 120

    def run(self, query: str, passages: list[Passage]) -> tuple[str, StageRecord]:
        done = self.model.generate(
            [Message.system(SYSTEM), Message.user(f"Passages:\n{render_passages(passages)}\n\nQuestion: {query}\n"
                                                f"Answer in one or two sentences, citing the passage number like [1]:")],
            GenerationParams(max_tokens=self.max_tokens, temperature=0.0))
        text = done.text.strip()
        if text and not any(f"[{p.number}]" in text for p in passages) and len(passages) == 1:
            text = f"{text} [1]"  # one passage: the answer can only come from it; say so
        return text, StageRecord(stage="answer", passed=bool(text), reason="answer written from the passages"
                                 if text else "the model wrote an empty answer", detail={"finish": done.finish_reason})
