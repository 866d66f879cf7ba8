"""The plan's first nodes from one constrained model call: the question split into sub-questions, as JSON.

Why: on the default 0.5B model the planner agent's first turns were its weakest (it called a tool named after the
question's subject, then added the whole question as one node), so the two hops of a two-hop question were never
searched apart. A single call decoded under a JSON schema cannot go wrong that way: it returns 1-3 sub-questions,
each saying whether it needs the answer before it. The planner agent then starts from these nodes (it can still
add more after reading their answers, and it writes the final answer).
"""

from __future__ import annotations

import json
from typing import Any

from hanlin import ChatModel, GenerationParams, Message
from hanlin.chat_model import Constraint

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "steps": {
            "type": "array", "minItems": 1, "maxItems": 3,
            "items": {
                "type": "object",
                "properties": {"question": {"type": "string", "minLength": 8, "maxLength": 200},
                               "needs_previous": {"type": "boolean"}},
                "required": ["question", "needs_previous"], "additionalProperties": False,
            },
        },
    },
    "required": ["steps"], "additionalProperties": False,
}

SYSTEM = ("Split a question into the simple questions a search must answer, in order. A question that needs the "
          "answer of the one before it says needs_previous: true and refers to that answer with words like "
          "'that company'. Reply as JSON.")

SHOTS = (
    ("Which company makes the Zeta phone, and where is that company based?",
     {"steps": [{"question": "Which company makes the Zeta phone?", "needs_previous": False},
                {"question": "Where is the company that makes the Zeta phone based?", "needs_previous": True}]}),
    ("What license does the Orbo library use, and who maintains the Pluma tool?",
     {"steps": [{"question": "What license does the Orbo library use?", "needs_previous": False},
                {"question": "Who maintains the Pluma tool?", "needs_previous": False}]}),
)


async def decompose(model: ChatModel, question: str, max_steps: int, max_tokens: int = 200) -> list[tuple[str, bool]]:
    """``[(sub-question, needs_previous), ...]`` (at most ``max_steps``); ``[]`` when the reply is not usable."""
    messages = [Message.system(SYSTEM)]
    for asked, plan in SHOTS:
        messages += [Message.user(asked), Message.assistant(json.dumps(plan))]
    messages.append(Message.user(question))
    params = GenerationParams(max_tokens=max_tokens, temperature=0.0,
                              constraint=Constraint(json_schema=SCHEMA, max_tokens=max_tokens))
    done = await model.agenerate(messages, params)
    try:
        steps = json.loads(done.text)["steps"]
        out = [(" ".join(str(s["question"]).split()), bool(s["needs_previous"])) for s in steps]
    except (ValueError, KeyError, TypeError):
        return []  # a runtime without constrained decoding said something else: the planner agent plans alone
    seen: set[str] = set()
    unique = [(q, dep) for q, dep in out if q and not (q.lower() in seen or seen.add(q.lower()))]
    whole = " ".join(question.lower().split())
    if len(unique) == 1 and unique[0][0].lower() == whole:
        return []  # the question copied back: no split to seed
    return unique[:max_steps]
