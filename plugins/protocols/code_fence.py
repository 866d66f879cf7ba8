"""Code written as a fenced Python block, for protocols whose model would otherwise put it in a JSON string.

Small models write code well in a ```python fence and badly inside JSON: asked for the Python tool's arguments,
Qwen2.5-Coder-0.5B crammed loops onto one line ("for i in range(1, 501): if i % 3 == 0: ...", a SyntaxError it then
re-sent until the run gave up). The code protocol always asks for a fence; ReAct asks for one for a tool that runs
code; native calling runs the fenced block a reply showed instead of calling the tool. One place says what a code
tool is, how a fence is read, and how a grammar writes one.
"""

from __future__ import annotations

import re
from typing import Any

MAX_CODE_LINES = 60  # the grammar's bounds: a runaway cell still ends as a well-formed block
MAX_LINE_CHARS = 200
PYTHON_FENCE = re.compile(r"```(?:python|py)[ \t]*\n(.*?)```", re.DOTALL)
PYTHON_OPENING = re.compile(r"```(?:python|py)[ \t]*\n(.*)", re.DOTALL)


def is_code_tool(tool: Any) -> bool:
    """A tool whose only argument is a required string named ``code`` (hanlin's python tool, or one like it)."""
    schema = tool.parameters
    props = schema.get("properties", {})
    return schema.get("required") == ["code"] and list(props) == ["code"] and props["code"].get("type") == "string"


def fenced_code(text: str) -> str | None:
    """The code of the only ```python block in ``text`` (None for none, several or an empty one)."""
    blocks = PYTHON_FENCE.findall(text)
    if len(blocks) != 1 or not blocks[0].strip():
        return None
    return blocks[0].strip("\n")


def through_fenced_code(text: str) -> str:
    """``text`` up to the end of its only ```python block (all of it for none or several). What a reply says after
    code it did not run is a guess at the output: Qwen2.5-Coder-0.5B wrote "When you run this code, it will output:
    evaluation", was shown the real result (noitaulave), and answered with its guess."""
    matches = list(PYTHON_FENCE.finditer(text))
    return text[: matches[0].end()] if len(matches) == 1 else text


def unclosed_fenced_code(text: str) -> str | None:
    """The code after a ```python fence that nothing closes (None if ``text`` has any other backtick fence).

    A ReAct step is cut at its stop sequence: Qwen2.5-Coder-0.5B wrote a whole program and then "Observation:" where
    the closing fence belonged, so the step ended inside the block. Read as a bare value, only the block's first line
    ("def is_prime(n):") reached the kernel: a SyntaxError, then a guessed answer (python-01, 400 for 168)."""
    if text.count("```") != 1 or (match := PYTHON_OPENING.search(text)) is None or not match[1].strip():
        return None
    return match[1].strip("\n")


def add_code_block(g: Any, max_line_chars: int = MAX_LINE_CHARS) -> str:
    """Rules for the lines of a fenced block (no line holds three backticks) in GrammarBuilder ``g``; returns the
    rule for one line. A character that cannot start a run of three backticks: one or two backticks are followed by
    something else; a line may end with one or two."""
    g.add("cchar", '[^`\\n] | "`" [^`\\n] | "``" [^`\\n]')
    return g.add("cline", f'cchar{{0,{max_line_chars}}} ("`" | "``")? "\\n"')
