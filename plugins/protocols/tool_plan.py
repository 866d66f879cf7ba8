"""The tools a question names, and the order it names them in.

Users of small models spell the plan out ("find the rate in the knowledge base, then use the calculator"), and
Qwen2.5-Coder-0.5B still skipped a named tool, or called the calculator first with numbers it made up. The step
protocols (react, tools) read the plan from the question: which named tools are still unused (for the nudge after
a result) and which may be called now (a tool named after "then" waits for the ones before it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from hanlin.messages import Message
from hanlin.protocols import RunContext
from hanlin.protocols.base import CORRECTION_PREFIX

# User turns that answer a step rather than ask: ReAct's and the code protocol's "Observation: Error: ...", and
# StepProtocol.correction's.
CORRECTIONS = ("Observation: Error: ", CORRECTION_PREFIX)


def _words(text: str) -> str:
    return " " + " ".join(re.findall(r"[a-z0-9]+", text.lower())) + " "


def requested_tools(question: str, tools: Iterable[str]) -> list[str]:
    """The offered tools a question names ("use the calculator", "in the knowledge base" for knowledge_base), in
    the order offered; case and underscores are ignored, whole words only."""
    text = _words(question)
    return [t for t in tools if _words(t) in text]


def planned_order(question: str, tools: Iterable[str]) -> list[str]:
    """The tools a question names in a sequence ("find the rate in the knowledge base, then use the calculator"),
    in the order it names them; empty unless it names two or more and says "then" after the first."""
    text = _words(question)
    named = sorted((i, t) for t in tools if (i := text.find(_words(t))) >= 0)
    if len(named) < 2 or " then " not in text[named[0][0]:]:
        return []
    return [t for _, t in named]


def by_question(messages: Iterable[Message]) -> Iterator[tuple[Message, str, frozenset[str]]]:
    """Each message with the question it serves (the last user turn before it that is not a correction) and the
    tools called since that question, this message's calls included: what a protocol's render needs to say which
    named tools are still unused."""
    question, used = "", frozenset[str]()
    for m in messages:
        if m.role == "user" and not m.content.startswith(CORRECTIONS):
            question, used = m.content, frozenset()
        elif m.role == "assistant":
            used |= {c.name for c in m.tool_calls}
        yield m, question, used


def current_question(ctx: RunContext) -> tuple[str, frozenset[str]]:
    """The run's current question and the tools called since it was asked."""
    question, used = "", frozenset[str]()
    for _, question, used in by_question(ctx.messages):
        pass
    return question, used


def pending_tools(ctx: RunContext) -> list[str]:
    """The tools the run's current question names that no step since it has called."""
    question, used = current_question(ctx)
    return [t for t in requested_tools(question, ctx.tools) if t not in used]


def in_plan_order(ctx: RunContext) -> list[str]:
    """The tools a step may call. While a question's sequence ("find X in the knowledge base, then use the
    calculator") has a tool not used yet: the tools it names up to that one. Qwen2.5-Coder-0.5B called the calculator
    first on 3 of 14 look-up-then-calculate tooluse items (react), with numbers it made up, and answered with them;
    kept from the calculator alone, it called python instead."""
    question, used = current_question(ctx)
    order = planned_order(question, ctx.tools)
    waiting = next((i for i, t in enumerate(order) if t not in used), None)
    if waiting is None:
        return list(ctx.tools)
    return [t for t in ctx.tools if t in order[: waiting + 1]]
