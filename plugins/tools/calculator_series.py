"""Sums and products written with an ellipsis: "1 + 2 + 3 + ... + 250", "1 * 2 * ... * 7".

People and models write a long sum this way, and its meaning is not in doubt: the terms go on with the step the
written ones show (1 when only the first is written) until the last. Asked for the sum of 1 to 250, Qwen2.5-Coder-0.5B
sent exactly that to the calculator, got "only numbers are allowed, found Ellipsis", and answered with a guess. The
series is replaced by its value before the expression is parsed; where the series sits next to an operator that
binds tighter ("2 * 1 + 2 + ... + 9"), or its terms do not reach the last one in equal steps, the calculator says so
instead of guessing.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

MAX_PRODUCT_TERMS = 1000
MAX_PRODUCT_DIGITS = 4000  # the calculator's own result limit: the value must still print as a literal

_NUM = r"\d+(?:\.\d+)?"
_ELLIPSIS = r"(?:\.\.\.|…)"
_SERIES = {
    op: re.compile(rf"(?P<first>{_NUM})(?P<more>(?:\s*{re.escape(op)}\s*{_NUM})*)\s*{re.escape(op)}\s*{_ELLIPSIS}"
                   rf"\s*{re.escape(op)}\s*(?P<last>{_NUM})")
    for op in "+*"
}
# What may stand next to a series without changing its meaning once it is replaced by one number in parentheses.
_BEFORE = {"+": ("", "(", "+", ",", "["), "*": ("", "(", "+", "-", "*", ",", "[")}
_AFTER = {"+": ("", ")", "+", "-", ",", "]"), "*": ("", ")", "+", "-", "*", "/", ",", "]")}


class SeriesError(ValueError):
    """An ellipsis the calculator cannot read as a series; the message says why."""


def expand_series(text: str) -> str:
    """``text`` with each "a + b + ... + z" (or with *) replaced by its value; unchanged when there is no ellipsis."""
    if "..." not in text and "…" not in text:
        return text
    for op, pattern in _SERIES.items():
        text = pattern.sub(lambda m, op=op: _replace(m, op), text)
    if "..." in text or "…" in text:
        raise SeriesError("an ellipsis is only understood in a sum or product of numbers with the same operator on "
                          "both sides of it, e.g. '1 + 2 + ... + 100' or '1 * 2 * ... * 10'")
    return text


def _replace(m: re.Match[str], op: str) -> str:
    text, start = m.string, m.start()
    if start and (text[start - 1].isalnum() or text[start - 1] in "._"):
        return m[0]  # the tail of a longer number or name: left for the error below
    prev, nxt = text[:start].rstrip(), text[m.end():].lstrip()
    if prev.endswith("**") or nxt.startswith("**") or prev[-1:] not in _BEFORE[op] or nxt[:1] not in _AFTER[op]:
        raise SeriesError(f"'{m[0]}' stands next to an operator that binds differently from its {op}; put the "
                          "series in parentheses")
    return f"({_value(m[0], op, m['first'], m['more'], m['last'])})"


def _value(written: str, op: str, first: str, more: str, last: str) -> str:
    terms = [Fraction(first)] + [Fraction(t) for t in re.findall(_NUM, more)]
    final = Fraction(last)
    steps = {b - a for a, b in zip(terms, terms[1:])}
    if len(steps) > 1:
        raise SeriesError(f"the terms written before the ellipsis in '{written}' do not go up in equal steps")
    step = steps.pop() if steps else Fraction(1 if final >= terms[0] else -1)
    if step == 0:
        raise SeriesError(f"the terms of '{written}' do not change, so the series never reaches {last}")
    count = (final - terms[0]) / step + 1
    if count.denominator != 1 or count < len(terms):
        raise SeriesError(f"'{written}' does not reach {last} in steps of {_show(step)} from {first}")
    n = int(count)
    if op == "+":
        total = n * (terms[0] + final) / 2
    else:
        if n > MAX_PRODUCT_TERMS:
            raise SeriesError(f"'{written}' has {n} factors; the limit is {MAX_PRODUCT_TERMS}")
        biggest = max(abs(terms[0]), abs(final), 1)
        if n * math.log10(biggest) > MAX_PRODUCT_DIGITS:
            raise SeriesError(f"'{written}' would have more than {MAX_PRODUCT_DIGITS} digits")
        total = math.prod(terms[0] + i * step for i in range(n))
    return _show(total)


def _show(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"
