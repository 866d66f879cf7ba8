"""A request about a date, answered by a function that only knows the present: the call is withheld, and the reply
says why.

Asked "What was the weather like in London on 1 January 1900?" with only ``get_current_weather(city, unit)``
offered ("Current weather conditions for a city."), the default model called it for London. The call is well formed
and grounded (London is in the request), so nothing else stops it, and its result, today's weather, would be taken
for the answer to a question about 1900. The same holds for a share price or a match result on a named day asked of
a function that gives the latest one.

So where the request names a calendar date with its year (``2025-04-09``, ``1 January 1900``, ``March 3, 2021``,
``June 1998``) other than today (give or take a day, for time zones), and the reply's calls, all to one function,
carry that year in no argument, the calls are withheld with a note when the function says it gives the present (its
name holds ``current``, ``latest``, ``live``, ``now`` or ``today``, or its description opens with one: "Current
weather conditions", "Latest trading price", "Live status") and has no parameter about dates or times. A function
that says nothing of when (``track_order``, "Shipping status of an order.") keeps its call: a request mentions dates
in passing ("my order of 2025-01-02 has not come"). Only a first answer to the request is judged (the conversation
ends with the user's message): later in an agent's run a call may serve a step of the work, not the dated question
itself. A call with free text among its values (a message, code: three words or more) is left alone, since the model
chose what to write there.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from hanlin.messages import Message, ToolCall

_MONTH_NAMES = ["january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
                "november", "december"]
_MONTHS = "|".join(_MONTH_NAMES + ["jan", "feb", "mar", "apr", "jun", "jul", "aug", "sept", "sep", "oct", "nov",
                                   "dec"])
_MONTH_NUMBER = {name[:3]: number for number, name in enumerate(_MONTH_NAMES, 1)}  # every form starts with these
_YEAR = r"(?P<year>1\d{3}|20\d{2})"
_DAY = r"(?P<day>[12]\d|3[01]|0?[1-9])(?:st|nd|rd|th)?"
# an ISO date, "1 January 1900", "March 3, 2021", "June 1998": each binds the year, the month and (but the last) the day
_DATES = [re.compile(p, re.IGNORECASE) for p in (
    rf"\b{_YEAR}-(?P<num>0[1-9]|1[0-2])-(?P<day>0[1-9]|[12]\d|3[01])\b",
    rf"\b{_DAY}\s+(?:of\s+)?(?P<month>{_MONTHS})\.?,?\s+{_YEAR}\b",
    rf"\b(?P<month>{_MONTHS})\.?\s+{_DAY},?\s+{_YEAR}\b",
    rf"\b(?P<month>{_MONTHS})\.?\s+{_YEAR}\b",
)]
# words of a parameter's name or description that say it is about when
_TIME_WORDS = frozenset({"date", "dates", "time", "times", "datetime", "timestamp", "day", "days", "week", "weeks",
                         "month", "months", "year", "years", "when", "period", "start", "end", "historical",
                         "history", "since", "until"})
# words by which a function says it gives the present
_PRESENT_WORDS = frozenset({"current", "latest", "live", "now", "today", "realtime"})
_WORD = re.compile(r"[a-z]+")


def _words(name: str) -> list[str]:
    return _WORD.findall(re.sub(r"([a-z])([A-Z])", r"\1 \2", name).lower().replace("real-time", "realtime"))


def named_dates(text: str, today: dt.date | None = None) -> list[tuple[str, str]]:
    """(the date as written, its year) of each calendar date with a year in ``text`` that is not ``today``, give or
    take a day (see _is_present), in order, each once."""
    today = today or dt.date.today()
    found: dict[int, tuple[str, str]] = {}
    for pattern in _DATES:
        for match in pattern.finditer(text):
            if any(start <= match.start() < start + len(seen) for start, (seen, _) in found.items()):
                continue
            groups = match.groupdict()
            month = int(groups["num"]) if groups.get("num") else _MONTH_NUMBER[groups["month"].lower()[:3]]
            if _is_present(int(match["year"]), month, groups.get("day"), today):
                continue
            found[match.start()] = (match[0], match["year"])
    return [found[start] for start in sorted(found)]


def _is_present(year: int, month: int, day: str | None, today: dt.date) -> bool:
    """Whether a named date is today, give or take a day (the user's time zone may be a day off the machine's); a
    month named with its year alone, whether it is the month of one of those days."""
    near = (today - dt.timedelta(days=1), today, today + dt.timedelta(days=1))
    if day is None:
        return any((d.year, d.month) == (year, month) for d in near)
    try:
        return dt.date(year, month, int(day)) in near
    except ValueError:  # 2025-02-30: no such day, so not today
        return False


def takes_a_date(parameters: Mapping[str, Any]) -> bool:
    """Whether a function's parameters (JSON schema) include one about dates or times, by its name, its
    description or its format."""
    for name, spec in (parameters.get("properties") or {}).items():
        spec = spec if isinstance(spec, Mapping) else {}
        if (_TIME_WORDS.intersection(_words(name) + _words(str(spec.get("description") or "")))
                or spec.get("format") in ("date", "date-time", "time")):
            return True
    return False


def gives_the_present(function: Mapping[str, Any]) -> bool:
    """Whether a function (OpenAI's ``function`` object) says it gives the present: by a word of its name, or by the
    first words of its description ("Current weather conditions", not "... to the current cart")."""
    opening = _words(str(function.get("description") or ""))[:2]
    return bool(_PRESENT_WORDS.intersection(_words(str(function.get("name") or "")) + opening))


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
    names a date none of them carries and their function, which gives the present, cannot take; None when the
    calls stand."""
    asked = next((i for i in range(len(conversation) - 1, -1, -1) if conversation[i].role == "user"), None)
    if not calls or asked is None or asked != len(conversation) - 1:
        return None  # a call after tool results serves a step of the work, not the request itself
    names = {call.name for call in calls}
    if len(names) != 1:
        return None  # calls to several functions: one of them may serve the dated part, another the rest
    name = next(iter(names))
    fn = next((t.get("function", t) for t in tools if t.get("function", t).get("name") == name), None)
    if fn is None or not gives_the_present(fn) or takes_a_date(fn.get("parameters") or {}):
        return None
    if any(_free_text(call.arguments) for call in calls):
        return None
    carried = " ".join(json.dumps(call.arguments, ensure_ascii=False) for call in calls)
    missing = [written for written, year in named_dates(conversation[asked].content or "") if year not in carried]
    if not missing:
        return None
    return f"Not calling {name}: the request is about {missing[0]}, and {name} takes no date (it gives the present)."
