"""Hints, with their fixes, for SyntaxErrors a small model makes and then re-sends unchanged.

- Compound statements on one line: ``for i in range(1, 501): if i % 3 == 0: print(i)``. Python allows a simple
  statement after a header's ':' but not another ``if``/``for``; code written inside a JSON string is where a model
  puts everything on one line (Qwen2.5-Coder-0.5B sent that cell six times, python-08, tools protocol).
- A percentage written as in prose: ``final_answer(17% * 2350)`` (calc-05, code protocol, five times; see
  percentages).
- A number written as in a date: ``datetime(2024, 11, 03)``. Python's own message suggests an ``0o`` prefix for
  octal, which the model took as the fix it was not (python-05 and python-14, tools protocol, each re-sent to the
  end of the run).

Each fix is the smallest change that makes the cell compile, and only offered when it does (see python_hints.Hint:
the kernel session runs it if the same cell comes straight back).
"""

from __future__ import annotations

import io
import tokenize

from hanlin.plugins.tools.percentages import as_fractions, first_percentage
from hanlin.plugins.tools.python_hints import Hint, compiles

_COMPOUND = {"for", "while", "if", "elif", "else", "with", "try", "except", "finally", "def", "class", "async"}
_NESTED = {"for", "while", "if", "with", "try", "def", "class", "async"}  # what may not follow a header's ':'


def syntax_hint(code: str) -> Hint | None:
    """A hint for a cell that does not compile, when one of the fixes above makes it compile."""
    if compiles(code):
        return None
    return _compound_hint(code) or _percent_hint(code) or _leading_zero_hint(code)


def _compound_hint(code: str) -> Hint | None:
    lines = code.split("\n")
    fixed: list[str] = []
    first_split: list[str] | None = None
    for line in lines:
        split = _split_header(line)
        first_split = first_split or split
        fixed.extend(split or [line])
    if first_split is None:
        return None
    fixed_code = "\n".join(fixed)
    if not compiles(fixed_code):
        return None
    text = ("Hint: after a ':' Python allows a simple statement on the same line, not another if, for or while; "
            "give each its own line, indented:\n" + "\n".join(first_split))
    return Hint(text, "each statement after a ':' on its own line", fixed_code)


def _split_header(line: str) -> list[str] | None:
    """``line`` as nested lines when a compound header is followed on the same line by another compound statement
    (None when it is not)."""
    indent = line[: len(line) - len(line.lstrip())]
    body = line.strip()
    if body.split(" ", 1)[0].rstrip(":") not in _COMPOUND:
        return None
    colon = _header_colon(body)
    if colon is None:
        return None
    rest = body[colon + 1:].strip()
    if not rest or rest.split(" ", 1)[0].rstrip(":") not in _NESTED:
        return None
    inner = indent + "    " + rest
    return [indent + body[: colon + 1], *(_split_header(inner) or [inner])]


def _header_colon(body: str) -> int | None:
    """The column of the ':' that ends the header (not one inside brackets, a string, a slice or a lambda)."""
    depth, lambdas = 0, 0
    try:
        for tok in tokenize.generate_tokens(io.StringIO(body).readline):
            if tok.type == tokenize.NAME and tok.string == "lambda":
                lambdas += 1
            elif tok.type == tokenize.OP:
                if tok.string in "([{":
                    depth += 1
                elif tok.string in ")]}":
                    depth -= 1
                elif tok.string == ":" and depth == 0:
                    if lambdas:
                        lambdas -= 1
                    else:
                        return tok.start[1]
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return None
    return None


def _percent_hint(code: str) -> Hint | None:
    fixed_code = as_fractions(code)
    if fixed_code == code or not compiles(fixed_code):
        return None
    number = first_percentage(code)
    text = (f"Hint: {number}% is not Python ('%' is the remainder operator); a percentage is a fraction: "
            f"{number} / 100")
    return Hint(text, "each percentage written as a fraction", fixed_code)


def _leading_zero_hint(code: str) -> Hint | None:
    """``03`` read as the number 3: Python tokenizes it as ``0`` then ``3``, which is how the literal is found (a
    string or comment holding "03" is a single token and is left alone)."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(code).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return None
    lines = code.split("\n")
    spans = []  # (row, start column, end column) of the zeros to drop, the number as written, the number
    for zeros, digits in zip(tokens, tokens[1:]):
        if (zeros.type == digits.type == tokenize.NUMBER and zeros.end == digits.start and set(zeros.string) == {"0"}
                and digits.string[:1] in "123456789"):
            spans.append((zeros.start[0], zeros.start[1], zeros.end[1], zeros.string + digits.string, digits.string))
    if not spans:
        return None
    for row, start, end, _, _ in reversed(spans):  # right to left: earlier columns on a row stay valid
        line = lines[row - 1]
        lines[row - 1] = line[:start] + line[end:]
    fixed_code = "\n".join(lines)
    if not compiles(fixed_code):
        return None
    _, _, _, written, number = spans[0]
    text = (f"Hint: in Python a whole number cannot start with 0: write {number}, not {written} (an 0o prefix would "
            "make it octal, which a date or a count is not)")
    return Hint(text, "the leading zeros of each number dropped", fixed_code)
