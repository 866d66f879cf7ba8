"""How many calls a reply makes: one, or as many as the request asks for, decided by asking the model.

A small model writes its first call in whatever shape it likes, and the shape, not the request, decides how many
calls follow. Qwen2.5-Coder-0.5B opens most calls with a bare ``{"name": ...}`` object and stops after one, even for
"What are -40 Celsius and 100 Celsius in Fahrenheit?" (parallel-011 of the function-calling set); framed as an
array (the grammar's ``[`` lead, tried before) it wrote a second, unasked call on one-call requests (multiple 0.66 ->
0.41), and inside a fence it often adds a third call nobody asked for.

So once a reply holds its calls, every "another call?" is put to the model as one question: with the calls so far
written as the items of a fenced JSON array (``FRAME``), how likely is a ``,`` (another item) as the next token?
Measured after the first call on the default model over the 157-item function-calling set (greedy, cpu; README,
Native tool calls): every parallel and parallel_multiple item with a call scored 0.65 to 0.995, every simple or
multiple item it got right between 0.03 and 0.50. At or above ``CONTINUE_AT`` the next call is taken from the
reply, or, when the reply has no more, decoded under a grammar of one call to an offered tool; below it the calls
end there, so a call the reply wrote but the model, asked this way, would not make is dropped (an unasked call runs
an action).

The threshold sits in the middle of the measured gap between the two groups and was chosen on that same set, so
its margin there (0.50 to 0.65) is what a new model or a new kind of request may not keep. Each question is one
evaluation of a few dozen tokens over the cached prompt.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import numpy as np

from hanlin import ToolCall
from hanlin.runtimes.tool_calls import call_key

FRAME = "```json\n[\n  "  # how the default model lays out an array of calls in a fence
GAP = ",\n  "  # between two items of that array
CONTINUE_AT = 0.6  # P(",") at or above which the model is taken to mean another call
MAX_CALLS = 8  # a guard against a model that would go on forever; requests here ask for at most three


def call_text(call: ToolCall) -> str:
    """One call as an array item, in the keys the call grammar allows."""
    return json.dumps({"name": call.name, "arguments": call.arguments}, ensure_ascii=False)


def probe_text(calls: Sequence[ToolCall]) -> str:
    """The text after the prompt whose next token says whether another call follows ``calls``."""
    return FRAME + GAP.join(call_text(c) for c in calls)


def continuation_text(calls: Sequence[ToolCall]) -> str:
    """The text after the prompt from which the next call is decoded."""
    return probe_text(calls) + GAP


def comma_mask(token_texts: Sequence[str]) -> np.ndarray:
    """Which tokens start another array item: a ``,`` after optional whitespace (``",\\n"``, ``" ,"``...)."""
    return np.array([text.lstrip().startswith(",") for text in token_texts], dtype=bool)


def continue_probability(logits: np.ndarray, mask: np.ndarray) -> float:
    """The probability mass of the tokens in ``mask`` under ``logits`` (one row, the whole vocabulary)."""
    row = np.asarray(logits, dtype=np.float64)
    probs = np.exp(row - row.max())
    return float(probs[mask].sum() / probs.sum())


def settle(calls: Sequence[ToolCall], p_another: Callable[[list[ToolCall]], float | None],
           write_next: Callable[[list[ToolCall]], ToolCall | None]) -> list[ToolCall]:
    """The calls a reply makes, given the ones it wrote (at least one, no two the same: ``ToolReply.finish``).

    ``p_another(kept)``: the model's probability that another call follows ``kept`` (``continue_probability`` after
    ``probe_text``), None when it cannot be asked (no room left in the context: the reply's calls stand as written);
    ``write_next(kept)``: the next call decoded after ``continuation_text(kept)``, None when none came. A repeated
    call ends the list (a small model loops on one call; it means it once).
    """
    kept = list(calls[:1])
    while len(kept) < MAX_CALLS:
        p = p_another(kept)
        if p is None:
            return kept + list(calls[len(kept):])
        if p < CONTINUE_AT:
            break
        following = calls[len(kept)] if len(kept) < len(calls) else write_next(kept)
        if following is None or call_key(following) in {call_key(c) for c in kept}:
            break
        kept.append(following)
    return kept
