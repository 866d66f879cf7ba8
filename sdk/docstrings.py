"""Read a Google-style docstring into a summary and per-argument descriptions.

Tool specs are what a model sees of a tool, so the words a developer already
wrote in the docstring become the JSON Schema descriptions.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field

_SECTION = re.compile(r"^(Args|Arguments|Parameters|Returns|Return|Raises|Yields|Examples?|Notes?|Attributes):\s*$")
_ARG = re.compile(r"^(\*{0,2}\w+)\s*(?:\(([^)]*)\))?\s*:\s*(.*)$")


@dataclass(slots=True)
class Docstring:
    summary: str = ""
    description: str = ""
    args: dict[str, str] = field(default_factory=dict)


def parse_docstring(doc: str | None) -> Docstring:
    if not doc:
        return Docstring()
    lines = inspect.cleandoc(doc).splitlines()
    body: list[str] = []
    args: dict[str, str] = {}
    section: str | None = None
    current: str | None = None
    arg_indent: int | None = None
    for line in lines:
        stripped = line.strip()
        header = _SECTION.match(stripped)
        if header and not line.startswith((" ", "\t")):
            section, current, arg_indent = header.group(1), None, None
            continue
        if section is None:
            body.append(line)
            continue
        if section not in ("Args", "Arguments", "Parameters") or not stripped:
            continue
        indent = len(line) - len(line.lstrip())
        match = _ARG.match(stripped)
        if match and (arg_indent is None or indent <= arg_indent):
            arg_indent = indent
            current = match.group(1).lstrip("*")
            args[current] = match.group(3).strip()
        elif current is not None:  # continuation line of the current argument
            args[current] = (args[current] + " " + stripped).strip()
    text = "\n".join(body).strip()
    summary = text.split("\n\n", 1)[0].replace("\n", " ").strip()
    return Docstring(summary=summary, description=text, args=args)
