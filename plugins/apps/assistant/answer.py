"""Stage: write the answer from the passages only, citing them as [n].

The reply is decoded under a JSON schema ``{"source": n, "answer": "..."}`` whose ``source`` can only be one of
the given passage numbers: a small model left to free text copied the passage headers ("[1] (httpx.md › ...)")
or wrote bare citations ("[1] [2] [3]") in most answers (measured on the default model), and a reply that cites
a passage it was not given is impossible. Choosing the passage first, then writing the sentence, keeps the answer
next to the text it comes from. A model that ignores the schema (a scripted one, a remote endpoint without
constrained decoding) is read as free text, and the check stage judges it like any other answer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from hanlin.chat_model import ChatModel, Constraint, GenerationParams
from hanlin.messages import Message
from hanlin.plugins.apps.assistant.records import Passage, StageRecord
from hanlin.plugins.apps.assistant.relevance import render_passages

# No "say I don't know" instruction: with it Qwen2.5-Coder-0.5B refused 6 of 10 answerable questions (measured);
# whether to answer is decided by the stages before, and the check stage refuses an unsupported answer.
SYSTEM = ("Answer the question from the numbered passages only. Reply as JSON: \"source\" is the number of the "
          "passage that answers it, \"answer\" is one or two sentences in your own words with the facts from "
          "that passage.")
ANSWER_CHARS = 400
_CITATION = re.compile(r"\s*\[\d+\]")
_END = re.compile(r"(.*?)([.!?]*)$", re.S)  # the citation goes before the closing full stop


def answer_schema(numbers: list[int]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"source": {"type": "integer", "enum": numbers},
                       "answer": {"type": "string", "minLength": 1, "maxLength": ANSWER_CHARS}},
        "required": ["source", "answer"],
        "additionalProperties": False,
    }


def read_reply(text: str, numbers: list[int]) -> tuple[str, str]:
    """(answer with its citation, how it was read): the schema's JSON, else the text as the model wrote it."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if isinstance(value, dict) and isinstance(value.get("answer"), str) and value.get("source") in numbers:
        sentence = _CITATION.sub("", value["answer"]).strip()
        body, end = _END.match(sentence).groups()  # type: ignore[union-attr]  # the pattern matches any string
        return (f"{body} [{value['source']}]{end}" if body else ""), "json"
    return text, "text"


@dataclass(slots=True)
class Answer:
    model: ChatModel
    max_tokens: int = 160

    def run(self, query: str, passages: list[Passage]) -> tuple[str, StageRecord]:
        numbers = [p.number for p in passages]
        schema = answer_schema(numbers)
        done = self.model.generate(
            [Message.system(SYSTEM), Message.user(f"Passages:\n{render_passages(passages)}\n\nQuestion: {query}")],
            GenerationParams(max_tokens=self.max_tokens, temperature=0.0,
                             constraint=Constraint(json_schema=schema, max_tokens=self.max_tokens)))
        text, form = read_reply(done.text.strip(), numbers)
        if form == "text" and text and len(passages) == 1 and not _CITATION.search(text):
            text = f"{text} [1]"  # one passage: a free-text answer can only come from it; say so
        return text, StageRecord(stage="answer", passed=bool(text), reason="answer written from the passages"
                                 if text else "the model wrote an empty answer",
                                 detail={"finish": done.finish_reason, "format": form})
