"""A request about a date, answered by a function that takes none: the call is withheld and the reply says why.

Asked "What was the weather like in London on 1 January 1900?" with only ``get_current_weather(city, unit)``
offered, the default model called it for London. The call is well formed and grounded (London is in the request),
so nothing else stops it, and its result, today's weather, would be taken for the answer to a question about 1900.
The same holds for a share price or an exchange rate on a named day asked of a function that only knows the present.
A call that silently drops the one constraint the function cannot honour answers another question.

So where the request names a calendar date with its year (``2025-04-09``, ``1 January 1900``, ``March 3, 2021``,
``June 1998``) and the reply's calls, all to one function, neither carry that year in any argument nor could (the
function has no parameter about dates or times: ``date``, ``start_time``, ``days``, ``year``, ...), the calls are
withheld with a note. Only a first answer to the request is judged (the conversation ends with the user's message):
later in an agent's run a call may serve a step of the work, not the dated question itself. A call with free text
among its values (a message, code: three words or more) is left alone, since the model chose what to write there.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from hanlin.messages import Message, ToolCall

_MONTHS = ("january|february|march|april|may|june|july|august|september|october|november|december"
           "|jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec")
_YEAR = r"(?P<year>1\d{3}|20\d{2})"
# each form binds the year; an ISO date, "1 January 1900", "March 3, 2021", "June 1998"
_DATES = [re.compile(p, re.IGNORECASE) for p in (
    rf"\b{_YEAR}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])\b",
    rf"\b\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?(?:{_MONTHS})\.?,?\s+{_YEAR}\b",
    rf"\b(?:{_MONTHS})\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+{_YEAR}\b",
    rf"\b(?:{_MONTHS})\.?\s+{_YEAR}\b",
)]
# words of a parameter's name or description that say it is about when
_TIME_WORDS = frozenset({"date", "dates", "time", "times", "datetime", "timestamp", "day", "days", "week", "weeks",
                         "month", "months", "year", "years", "when", "period", "start", "end", "historical",
                         "history", "since", "until"})
_WORD = re.compile(r"[a-z]+")


def named_dates(text: str) -> list[tuple[str, str]]:
    """(the date as written, its year) of each calendar date with a year in ``text``, in order, each once."""
    found: dict[int, tuple[str, str]] = {}
    for pattern in _DATES:
        for match in pattern.finditer(text):
            if not any(start <= match.start() < start + len(seen) for start, (seen, _) in found.items()):
                found[match.start()] = (match[0], match["year"])
    return [found[start] for start in sorted(found)]


def takes_a_date(parameters: Mapping[str, Any]) -> bool:
    """Whether a function's parameters (JSON schema) include one about dates or times, by its name, its
    description or its format."""
    for name, spec in (parameters.get("properties") or {}).items():
        spec = spec if isinstance(spec, Mapping) else {}
        words = re.sub(r"([a-z])([A-Z])", r"\1 \2", name).lower().replace("_", " ") + " " + \
            str(spec.get("description") or "").lower()
        if _TIME_WORDS.intersection(_WORD.findall(words)) or spec.get("format") in ("date", "date-time", "time"):
            return True
    return False


def _free_text(value: Any) -> bool:
    if isinstance(value, str):
        return len(value.split()) >= 3
    if isinstance(value, Mapping):
        return any(map(_free_text, value.values()))
    if isinstance(value, list):
        return any(map(_free_text, value))
    return False


def undated_note(calls: Sequence[ToolCall], tools: Sequence[Mapping[str, Any]],
                 conversation: Sequence[Message]) -> str | None:
    """The note that withholds ``calls`` (the reply's, to offered ``tools`` in OpenAI's shape) because the request
    names a date none of them carries or can take; None when the calls stand."""
    asked = next((i for i in range(len(conversation) - 1, -1, -1) if conversation[i].role == "user"), None)
    if not calls or asked is None or asked != len(conversation) - 1:
        return None  # a call after tool results serves a step of the work, not the request itself
    names = {call.name for call in calls}
    if len(names) != 1:
        return None  # calls to several functions: one of them may serve the dated part, another the rest
    name = next(iter(names))
    fn = next((t.get("function", t) for t in tools if t.get("function", t).get("name") == name), None)
    if fn is None or takes_a_date(fn.get("parameters") or {}):
        return None
    if any(_free_text(call.arguments) for call in calls):
        return None
    carried = " ".join(json.dumps(call.arguments, ensure_ascii=False) for call in calls)
    missing = [written for written, year in named_dates(conversation[asked].content or "") if year not in carried]
    if not missing:
        return None
    return f"Not calling {name}: the request is about {missing[0]}, and {name} takes no date."
