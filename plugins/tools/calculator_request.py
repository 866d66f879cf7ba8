"""The calculator checks a call against the run's request (``hanlin.current_task()``).

A small model copies the request's arithmetic into its call and drops the part it did not follow. Asked for
"(1234 - 567) * 89", Qwen2.5-Coder-0.5B sent "1234 - 567 * 89", got -49229, sent it again and answered -49229; asked
for the greatest common divisor of 1071 and 462 it sent "1071 % 462" (one step of Euclid's algorithm) and answered
147; for the least common multiple of 12, 18 and 30 it sent "12 * 18 * 30". In each the request itself shows the call
to be the wrong one, and the model's next step only ever re-reads the result: so the calculator says so where it
answers. Outside an agent run there is no request and nothing here applies.

- Parentheses: when the request writes an expression with the same numbers and operators in the same order as the
  call but grouped differently, and the call's own grouping appears nowhere in the request, the result is the
  request's expression (the model answered 59363 from it). A request that writes both groupings ("compare
  (2 + 3) * 4 with 2 + 3 * 4") leaves either call alone.
- Functions no operator can write: a request that names a greatest common divisor or a least common multiple, and a
  call that does not use ``gcd``/``lcm``: when the call's numbers are the request's ("1071 % 462"), the result is the
  function of them (told to write ``gcd(a, b)``, the model sent "1071 % 462" five times more and answered 462: it
  does not write a call it was described, so the calculator reads the one it meant). A call over some of the
  request's numbers only ("12 * 18" for 12, 18 and 30) is not run, and the error names the function to write; a call
  with a number the request does not hold is a later step ("12 * 3" with the LCM of 4 and 6 in hand) and runs as
  written. Square roots, powers and factorials are left alone: ``1849 ** 0.5`` and ``7 * 6 * 5 * 4 * 3 * 2 * 1``
  are right answers written without the function.
- A sum or product over a range: a request for the sum (product) of the integers from a to b, and a call that adds
  (multiplies) only the two ends, "1 + 250" for "the sum of all the integers from 1 to 250" (the code and ReWOO
  protocols sent that and answered 251), is read as the whole range, "1 + 2 + ... + 250".
"""

from __future__ import annotations

import re
from collections.abc import Callable

# A stretch of the request that is arithmetic: starts with a digit or '(' and ends with a digit or ')'.
_ARITHMETIC = re.compile(r"[\d(][\d\s.+\-*/%^×÷()]*[\d)]")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_WHOLE_NUMBER = re.compile(r"(?<![\w.])\d+(?![\w.]*\d)")
_OPERATOR = re.compile(r"\d\s*[+\-*/%^×÷]\s*[\d(]|\)\s*[+\-*/%^×÷]")

# (function, what the request calls it, how the note names it)
_NAMED_FUNCTIONS = (
    ("gcd", re.compile(r"greatest common (?:divisor|factor)|highest common factor|\bgcd\b|\bhcf\b", re.I),
     "the greatest common divisor"),
    ("lcm", re.compile(r"(?:least|lowest) common multiple|\blcm\b", re.I), "the least common multiple"),
)


def missing_function(expression: str, request: str | None) -> str | None:
    """Why ``expression`` cannot answer ``request``: the request names gcd or lcm, the call uses neither, and the call's
    numbers are some of the request's but not all (all of them: ``read_with_request`` computes the function of them;
    one the request does not hold: a later step, computing with a result). Else None."""
    asked = _asked_function(expression, request)
    if asked is None or _function_call(expression, request or "", asked[0]) is not None:
        return None
    used = set(_NUMBER.findall(expression))
    if not used or not used <= set(_NUMBER.findall(request or "")):
        return None
    name, what = asked
    return (f"not run: the request asks for {what}, and {expression.strip()!r} does not compute it. "
            f"The calculator has {name}(a, b, ...): call it with the request's numbers in place of a, b.")


def read_with_request(expression: str, result: str, request: str | None, evaluate: Callable[[str], str]) -> str:
    """``result`` of ``expression``, or what the request asks of the call's numbers. The call's own value is left out:
    shown beside the request's ("..., which is 147"), the model answered with it, the last number it read."""
    meant = _request_reading(expression, request)
    if meant is None:
        return result
    other, why = meant
    try:
        value = evaluate(other)
    except Exception:  # the request's text is no expression the calculator reads: keep the call's result
        return result
    if value == result:
        return result
    return f"{value}: {other}, {why}; the call as sent, {expression.strip()!r}, is not what was asked."


def _request_reading(expression: str, request: str | None) -> tuple[str, str] | None:
    """(the expression the request means, why) where the call is a garbled copy of it, else None."""
    if (grouped := request_grouping(expression, request)) is not None:
        return grouped, "as the request writes it with its parentheses"
    if (series := range_ends(expression, request)) is not None:
        return series
    if (asked := _asked_function(expression, request)) is not None:
        name, what = asked
        if (call := _function_call(expression, request or "", name)) is not None:
            return call, f"{what} the request asks for"
    return None


def request_grouping(expression: str, request: str | None) -> str | None:
    """The request's expression when ``expression`` is that expression with its parentheses moved or dropped."""
    if not request or "(" not in request:
        return None
    written = [m.group().strip() for m in _ARITHMETIC.finditer(request)]
    written = [w for w in written if _OPERATOR.search(w)]
    call = _squeezed(expression)
    if any(_squeezed(w) == call for w in written):
        return None
    same = [w for w in written if "(" in w and _bare(w) == _bare(expression)]
    return same[0] if len(same) == 1 else None


# "the sum of all the integers from 1 to 250", "the product of the numbers from 1 to 12"
_RANGE = re.compile(r"\b(sum|product) of (?:all )?(?:the )?(?:(?:positive|natural|whole) )?(?:integers|numbers) "
                    r"from (\d+) (?:to|through) (\d+)\b", re.I)


def range_ends(expression: str, request: str | None) -> tuple[str, str] | None:
    """(the range written out, why) when the request asks for the sum or product of the integers from a to b and the
    call only adds or multiplies a and b."""
    match = _RANGE.search(request or "")
    if match is None:
        return None
    kind, low, high = match.group(1).lower(), int(match.group(2)), int(match.group(3))
    op = "+" if kind == "sum" else "*"
    if high - low < 2 or _squeezed(expression) not in (f"{low}{op}{high}", f"{high}{op}{low}"):
        return None
    return (f"{low} {op} {low + 1} {op} ... {op} {high}",
            f"the {kind} of the integers from {low} to {high} the request asks for")


def _asked_function(expression: str, request: str | None) -> tuple[str, str] | None:
    """(name, what) of a function the request names and the call does not use."""
    if not request:
        return None
    for name, asked, what in _NAMED_FUNCTIONS:
        if asked.search(request) and not re.search(rf"\b{name}\s*\(", expression, re.I):
            return name, what
    return None


def _function_call(expression: str, request: str, name: str) -> str | None:
    """``name(a, b, ...)`` over the request's whole numbers, in the request's order, when the call uses exactly them."""
    asked = list(dict.fromkeys(_WHOLE_NUMBER.findall(request)))
    used = set(_NUMBER.findall(expression))
    if len(asked) < 2 or used != set(asked):
        return None
    return f"{name}({', '.join(asked)})"


def _squeezed(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _bare(text: str) -> str:
    return re.sub(r"[\s()]+", "", text)
