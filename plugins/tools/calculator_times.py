"""Clock times in a calculator expression: "19:00 - 07:30" is the time between them.

Asked how many minutes an office open "from 07:30 to 19:00" is open, Qwen2.5-Coder-0.5B sent the calculator
"19:00 - 07:30", was told Python's "leading zeros in decimal integer literals are not permitted; use an 0o prefix for
octal integers", and answered with the expression. What it meant is not in doubt, so one clock time minus another
is answered as the span between them, in minutes and as hours:minutes (a later time minus an earlier one; an end
before the start crosses midnight). Minutes first: shown "11:30 (690 minutes)", the model answered "11:30" to a
question that asked for minutes. Clock times anywhere else in an expression are refused with a way to write
them: whether "07:30 * 2" means hours or minutes is a guess the calculator does not make.
"""

from __future__ import annotations

import re

_CLOCK = r"(\d{1,2}):([0-5]\d)(?::([0-5]\d))?"
_SPAN = re.compile(rf"\s*\(?\s*{_CLOCK}\s*\)?\s*-\s*\(?\s*{_CLOCK}\s*\)?\s*")
_ANY_CLOCK = re.compile(rf"(?<![\w.:]){_CLOCK}(?![\w.:])")
DAY = 24 * 3600


class ClockTimeError(ValueError):
    """A clock time used other than as one time minus another."""


def _seconds(hours: str, minutes: str, seconds: str | None) -> int:
    if int(hours) > 24 or (int(hours) == 24 and (int(minutes) or int(seconds or 0))):
        raise ClockTimeError(f"{hours}:{minutes} is no time of day (hours go up to 24:00)")
    return int(hours) * 3600 + int(minutes) * 60 + int(seconds or 0)


def time_between(expression: str) -> str | None:
    """The answer to ``expression`` when it is one clock time minus another, None when it holds no clock time;
    raises ClockTimeError for a clock time used any other way."""
    written, _, claimed = expression.partition("=")  # "19:00 - 07:30 = 690": the claim is checked below
    match = _SPAN.fullmatch(written)
    if match is None:
        found = _ANY_CLOCK.search(expression)
        if found is None:
            return None
        hours, minutes = int(found.group(1)), int(found.group(2))
        raise ClockTimeError(
            f"{found.group(0)} is a clock time; the calculator only subtracts one from another ('19:00 - 07:30' "
            f"gives the time between them). Otherwise write it in minutes ({hours} * 60 + {minutes}) or hours "
            f"({hours + minutes / 60:g})")
    end, start = _seconds(*match.groups()[:3]), _seconds(*match.groups()[3:])
    span = end - start
    note = ""
    if span < 0:
        span += DAY
        note = f"; {match.group(1)}:{match.group(2)} is taken as the next day"
    hours, rest = divmod(span, 3600)
    minutes, seconds = divmod(rest, 60)
    shown = f"{hours}:{minutes:02d}" + (f":{seconds:02d}" if seconds else "")
    in_minutes = f"{span // 60}" if not seconds else f"{span / 60:g}"
    claimed = claimed.strip()
    if claimed and claimed not in (shown, in_minutes):
        note += f"; not {claimed}: the result written after '=' was wrong and is ignored"
    return f"{in_minutes} minutes ({shown}{note})"
