"""Percentages written as in prose ("17% of 2350", "12.5%"), as the fractions they mean.

Qwen2.5-Coder-0.5B asked "what is 17% of 2350" wrote ``calculator("17% of 2350")`` and, in the code protocol,
``final_answer(17% * 2350)`` and ``final_answer(17% of 2350)``, each re-sent unchanged until the run gave up. A '%'
followed by "of", '*', '/', a closing bracket, a comma or the end cannot be the remainder operator (that needs a
right operand; '+' and '-' could begin one, ``10 % -3``), so reading it as a percentage changes no expression that
was valid before: ``10 % 3`` is left alone.
Used by the calculator (which reads them) and the python tool (which hints at them and fixes them on resend).
"""

from __future__ import annotations

import re

PERCENT = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)\s*%(?:\s*of\b\s*|(?=\s*(?:[*/),\]]|$)))", re.MULTILINE)


def as_fractions(text: str) -> str:
    """``text`` with each percentage as ``(N / 100)``, multiplied by what follows "of"."""
    return PERCENT.sub(lambda m: f"({m[1]} / 100)" + (" * " if m[0].rstrip().endswith("of") else ""), text)


def first_percentage(text: str) -> str | None:
    """The first percentage's number ("17" for "17% of 2350"), or None."""
    match = PERCENT.search(text)
    return match[1] if match else None
