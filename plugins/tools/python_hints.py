"""Hints appended to a Python error, for mistakes a model makes and cannot see on its own.

Asked to reverse 'evaluation' or count the s in 'mississippi', Qwen2.5-Coder-0.5B wrote ``evaluation[::-1]`` and
``mississippi.count('s')``: the word as a bare name. The NameError alone did not tell it why; it re-sent the same cell
until the run gave up (3 of 21 python tool-use items). The hint shows the cell's line with the name quoted, as
CPython's own "Did you mean" hints do for typos, so the fix is there to copy. It is worded as a condition: the name
may also be a variable that an earlier cell never defined.
"""

from __future__ import annotations

import builtins
import io
import keyword
import re
import tokenize

_UNDEFINED = re.compile(r"name '(?P<name>\w+)' is not defined")


def error_hint(error_name: str, error_value: str, code: str) -> str | None:
    """One line to add after the traceback, or None when there is nothing useful to say."""
    if error_name != "NameError":
        return None
    match = _UNDEFINED.search(error_value)
    if match is None:
        return None
    name = match["name"]
    if keyword.iskeyword(name) or hasattr(builtins, name) or name.startswith("_"):
        return None
    line = quoted_line(code, name)
    if line is None:
        return f"Hint: no variable is named {name}. If you meant the text {name!r}, put it in quotes: {name!r}"
    return f"Hint: no variable is named {name}. If you meant the text {name!r}, put it in quotes:\n{line}"


def quoted_line(code: str, name: str) -> str | None:
    """The first line of ``code`` that uses ``name`` as a bare name, with each such use quoted (None if the code does
    not tokenize or never uses it, e.g. it only appears inside a string)."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(code).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return None
    uses = [t for i, t in enumerate(tokens) if t.type == tokenize.NAME and t.string == name
            and not (i and tokens[i - 1].string == ".")]  # x.name is an attribute, not the undefined name
    if not uses:
        return None
    row = uses[0].start[0]
    source = code.splitlines()[row - 1]
    # Replace from the right so the earlier columns stay valid.
    for t in sorted((t for t in uses if t.start[0] == row), key=lambda t: t.start[1], reverse=True):
        source = source[: t.start[1]] + repr(name) + source[t.end[1]:]
    return source.strip()
