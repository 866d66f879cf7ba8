"""Stage 1: is this message a question with a topic? Short or empty messages are dropped without asking the model."""

from __future__ import annotations

from dataclasses import dataclass

from hanlin.chat_model import ChatModel
from hanlin.plugins.apps.assistant.records import StageRecord
from hanlin.plugins.apps.assistant.scoring import ask_score

SYSTEM = ("Decide whether a group-chat message is a technical question that asks how to do something, what something "
          "is, or why something fails. Reply as JSON {\"score\": N} with N from 0 to 10: 10 for a clear technical "
          "question, 0 for greetings, thanks, jokes, small talk, plans and announcements.")
# Worked examples as earlier turns: without them Qwen2.5-Coder-0.5B scored every message 5 (measured).
SHOTS = (("hi everyone, good morning!", 0), ("How do I set a timeout on a request?", 10), ("lol that's so funny", 0),
         ("What does the --reload flag do?", 10), ("anyone want to grab lunch?", 0))


@dataclass(slots=True)
class IsQuestion:
    model: ChatModel
    threshold: float = 6.0
    min_chars: int = 6
    min_words: int = 2

    def run(self, text: str) -> StageRecord:
        words = text.split()
        if len(text.strip()) < self.min_chars or len(words) < self.min_words:
            return StageRecord(stage="is_question", passed=False,
                               reason=f"too short to be a question ({len(words)} word(s), {len(text.strip())} "
                                      f"characters; need {self.min_words} words and {self.min_chars} characters)")
        score = ask_score(self.model, SYSTEM, f"Message: {text}", "is_question",
                          [(f"Message: {t}", f'{{"score": {n}}}') for t, n in SHOTS])
        passed = score >= self.threshold
        reason = (f"the model scored it {score}/10 as a technical question (threshold {self.threshold:g})"
                  + ("" if passed else ": not a question for the assistant"))
        return StageRecord(stage="is_question", passed=passed, reason=reason, score=score, threshold=self.threshold)
