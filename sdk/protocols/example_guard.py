"""A final answer copied from the prompt's worked example is sent back, not taken.

A protocol's worked example (ReAct's two towns of 1200 and 800 people, 2000 together; the code protocol's 46 days)
shows the format once. Lost on its own question, Qwen2.5-Coder-0.5B answered with the example's numbers instead:
"2000" in 4 of 63 tooluse answers under ReAct (python-18 had 717897987691852588770249 from its cell and answered
2000), "1200" in 2 of 14 look-up-then-calculate answers under the tools protocol. An answer that is one of the
example's values, when nothing in this run (the question, a tool's result) produced it, cannot be this question's
answer; the model is told so and answers again. Told once: a question whose answer really is 2000,
worked out without a tool, is taken when the model gives it again.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from hanlin.messages import Message

_NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?(?![\w])")


def _numbers(text: str) -> list[float]:
    out = []
    for token in _NUMBER.findall(text):
        try:
            out.append(float(token.replace(",", "")))
        except ValueError:
            continue
    return out


def copied_example_answer(answer: str, example_answers: Iterable[str], messages: Iterable[Message]) -> str | None:
    """The example answer that ``answer`` repeats, or None. Numbers are compared as values ("2,000", "2000.0" and
    "2000 people" all repeat 2000); words as the whole answer, case ignored. Not a copy when the value came up in
    the run: in a user turn (the question) or a tool's result. Not a copy either once the model was told so (it
    gave the answer again)."""
    messages = list(messages)
    if any(m.role == "user" and HINT_END in m.content for m in messages):
        return None
    text = answer.strip().rstrip(".")
    numbers = _numbers(text)
    seen: str | None = None
    for example in example_answers:
        wanted = _numbers(example)
        if wanted and numbers == wanted or not wanted and text.lower() == example.strip().lower():
            if seen is None:
                seen = "\n".join(m.content for m in messages if m.role == "tool" or m.role == "user"
                                  and HINT_END not in m.content)  # the hint names the example's answer itself
            if wanted and not set(wanted) & set(_numbers(seen)) or not wanted and example.lower() not in seen.lower():
                return example
    return None


HINT_END = "not from this question, and nothing in this run gave it."


def just_sent_back(messages: list[Message]) -> bool:
    """The run's last turn tells the model its answer was the example's (the next step should fetch evidence)."""
    return bool(messages) and messages[-1].role == "user" and HINT_END in messages[-1].content


def example_answer_hint(example: str) -> str:
    return (f"{example} comes from the made-up example in the instructions, {HINT_END} Answer this question "
            "from its own results, or call a tool for what is missing.")
