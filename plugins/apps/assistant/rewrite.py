"""Optional stage: resolve pronouns ("how do I install it?") from the group's recent messages into a standalone
question, so retrieval sees the topic. Off unless asked; on a model failure the message is kept as it is."""

from __future__ import annotations

from dataclasses import dataclass

from hanlin.chat_model import ChatModel, GenerationParams
from hanlin.messages import Message
from hanlin.plugins.apps.assistant.records import StageRecord

SYSTEM = ("Rewrite the last chat message as one standalone question, replacing pronouns such as 'it' or 'that' "
          "with what they refer to in the earlier messages. Reply with the question only.")
PRONOUNS = {"it", "its", "this", "that", "they", "them", "those", "these", "he", "she"}


@dataclass(slots=True)
class Rewrite:
    model: ChatModel
    max_history: int = 6

    def run(self, text: str, history: list[tuple[str, str]]) -> tuple[str, StageRecord]:
        words = {w.strip("?,.!").lower() for w in text.split()}
        if not history or not words & PRONOUNS:
            return text, StageRecord(stage="rewrite", passed=True, reason="no reference to resolve: kept as written")
        lines = "\n".join(f"{sender}: {said}" for sender, said in history[-self.max_history:])
        done = self.model.generate([Message.system(SYSTEM), Message.user(f"Earlier messages:\n{lines}\n\nLast "
                                                                         f"message: {text}")],
                                   GenerationParams(max_tokens=60, temperature=0.0, stop=["\n"]))
        rewritten = done.text.strip().strip('"') or text
        return rewritten, StageRecord(stage="rewrite", passed=True, reason="resolved references from the group history",
                                      detail={"rewritten": rewritten})
