"""A model score the format of which cannot be ignored: a JSON object ``{"score": 0..10}`` decoded under a schema.

Real runtimes decode under the schema (``GenerationParams.constraint``), so a small model cannot answer in prose;
a model without constrained decoding (a scripted one, a remote endpoint that ignores it) that returns anything
else gets a ``ScoreFormatError`` naming what came back, never a silently guessed number.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from hanlin.chat_model import ChatModel, Constraint, GenerationParams
from hanlin.errors import ModelError
from hanlin.messages import Message

SCORE_SCHEMA = {
    "type": "object",
    "properties": {"score": {"type": "integer", "minimum": 0, "maximum": 10}},
    "required": ["score"],
    "additionalProperties": False,
}


class ScoreFormatError(ModelError):
    """The model's reply to a scoring prompt was not ``{"score": <integer 0..10>}``."""


def parse_score(text: str, stage: str) -> int:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    score = value.get("score") if isinstance(value, dict) else None
    if isinstance(score, bool) or not isinstance(score, int) or not 0 <= score <= 10:
        raise ScoreFormatError(
            f"the {stage} stage asked the model for a score as JSON {{\"score\": 0..10}} and got {text[:200]!r}; "
            "use a runtime with constrained decoding (cpu, transformers, gpu) so the format is enforced, "
            "or script a reply like '{\"score\": 7}'")
    return score


def ask_score(model: ChatModel, system: str, user: str, stage: str,
              shots: Sequence[tuple[str, str]] = ()) -> int:
    params = GenerationParams(max_tokens=16, temperature=0.0,
                              constraint=Constraint(json_schema=SCORE_SCHEMA, max_tokens=16))
    messages = [Message.system(system)]
    for asked, replied in shots:
        messages += [Message.user(asked), Message.assistant(replied)]
    done = model.generate([*messages, Message.user(user)], params)
    return parse_score(done.text.strip(), stage)
