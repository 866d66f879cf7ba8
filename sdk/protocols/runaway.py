"""A reply that ran to the token limit repeating itself is decoded once more, with a repetition penalty.

Greedy decoding is deterministic: asked again, a model that looped gives the same loop. Qwen2.5-Coder-0.5B wrote
"12 * 18 * 30 / (12 * 18) / (12 * 18) / ..." to the length limit, was told its call was cut off, and wrote exactly
that again, twice, until the run gave up; the same with "3 * 1200 / 1000000...", "5 * 5 * 5 * ..." and a code cell
that repeated one comment and one assignment fourteen times. The retry has to differ from the first try, and the
penalty OpenAI's API defines for this (``frequency_penalty``: each token's logit lowered by how often the reply has
written it) is the difference: a loop makes its own tokens dearer with every turn, where ordinary text barely pays.

Only a reply cut at the limit whose tail is one unit written again and again counts, or a string that looped until
the step's grammar closed it at its cap (the reply then ends well-formed: "12 * 18 * 30 / (12 * 18) / ..." as a
native call's 500-character argument, "5 * 5 * 5 * ..." as ReAct's Action Input): a long answer cut off is not a
loop, and re-decoding it would only cost time. A caller who set a penalty of their own keeps theirs.
"""

from __future__ import annotations

from hanlin.chat_model import Completion, GenerationParams
from hanlin.grammar import STEP_STRING_CHARS

RUNAWAY_PENALTY = 1.0
_MIN_REPEATS = 4  # a loop is one unit written this many times in a row
_MIN_SPAN = 24  # and that many characters: "0000" or "...." is no runaway
_MAX_UNIT = 400  # characters: a repeated line of code with its comment fits
_CLOSING = " \t\r\n\"'}])"  # what may close a loop after it ('"', '"\n    }' where a grammar closed the string)
_CAPPED_SPAN = STEP_STRING_CHARS * 4 // 5  # a loop this long in a finished reply ran into the grammar's string cap


def loop_span(text: str) -> int:
    """How many characters at the end of ``text`` are one unit of up to _MAX_UNIT characters written _MIN_REPEATS
    times or more in a row (the cut may fall inside the last one), give or take the quotes, brackets and blank space
    that close it (``...0000"`` where a grammar closed the string); 0 when none are."""
    body, best = text.rstrip(_CLOSING), 0
    for unit in range(1, min(_MAX_UNIT, len(body) // _MIN_REPEATS) + 1):
        i = len(body) - unit - 1
        while i >= 0 and body[i] == body[i + unit]:
            i -= 1
        span = len(body) - 1 - i
        if span >= max(unit * _MIN_REPEATS, _MIN_SPAN):
            best = max(best, span)
    return best


def repeats_itself(text: str) -> bool:
    """``text`` ends in a loop (see loop_span)."""
    return loop_span(text) > 0


def is_runaway(completion: Completion, params: GenerationParams) -> bool:
    """The reply looped to the length limit, or looped inside a string until the step's grammar closed it (the
    reply then ends well-formed: a native call's argument, ReAct's Action Input), and the caller left the penalties
    unset (see the module's docstring)."""
    if params.frequency_penalty or params.presence_penalty:
        return False
    if completion.finish_reason == "length":
        return repeats_itself(completion.text)
    texts = [completion.text, *(v for c in completion.tool_calls for v in c.arguments.values() if isinstance(v, str))]
    return any(len(t) >= _CAPPED_SPAN and loop_span(t) >= _CAPPED_SPAN for t in texts)


def penalised(params: GenerationParams) -> GenerationParams:
    """``params`` for the second decode of a runaway reply."""
    return params.model_copy(update={"frequency_penalty": RUNAWAY_PENALTY})
