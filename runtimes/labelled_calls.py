"""Calls written with a label where the function's name belongs, read as calls to the one tool they fit.

Asked for what a few things are, a small model sometimes names each call after its subject rather than the
function: Qwen2.5-Coder-0.5B wrote ``[{"name": "ephemeral", "arguments": {"word": "ephemeral"}}, {"name":
"laconic", ...}]`` for two ``define_word`` calls, ``{"name": "vegetarian_chickpeas_spinach", "arguments":
{"ingredients": ["chickpeas", "spinach"], "diet": "vegetarian"}}`` for ``find_recipes``, and ``{"name": "2",
"arguments": {"number": 9996}}`` for ``prime_factors``. Such a name names no function; the runtimes leave a call to
a name nobody offered as text (that is how a reply to a request no tool fits stays an answer), so these were lost.

A name is a label, not a function the model wished for, when it has no letters at all or every word of it is a
word of the call's own argument values. ``sphere_volume`` with ``{"radius": 3}`` is a function nobody offered, and
stays text, as do ``rectangle_area`` and ``delete_calendar_event`` next to ``circle_area`` and
``create_calendar_event``. A labelled call is read as a call only when its arguments fit exactly one offered tool
(every argument one of its properties, every required one present, enums respected) and the conversation grounds
every required value (argument_grounding): ``{"recipe_name": "Sourdough Starter", "servings": 10}`` for a
sourdough recipe nobody wanted to scale stays text, since no one said 10.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from hanlin.messages import ToolCall
from hanlin.runtimes.argument_grounding import Evidence
from hanlin.runtimes.tool_calls import parse_tool_calls, tool_name

_NAME = re.compile(r'"name"\s*:\s*"((?:[^"\\]|\\.){1,80})"')
_WORD = re.compile(r"[^\W_]+")


def _words(text: str) -> set[str]:
    """Lower-case words, camelCase split: 'vegetarian_chickpeas_spinach' -> {vegetarian, chickpeas, spinach}."""
    return {w.lower() for w in _WORD.findall(re.sub(r"([a-z])([A-Z])", r"\1 \2", text))}


def _value_words(value: Any) -> set[str]:
    if isinstance(value, Mapping):
        return set().union(*(_value_words(v) for v in value.values())) if value else set()
    if isinstance(value, (list, tuple)):
        return set().union(*(_value_words(v) for v in value)) if value else set()
    return _words(str(value)) if not isinstance(value, bool) else set()


def is_label(name: str, arguments: Mapping[str, Any]) -> bool:
    """Whether ``name`` labels the call by its subject rather than naming a function (see the module's doc)."""
    if not name.strip():
        return False
    words = _words(name)
    return not any(c.isalpha() for c in name) or bool(words) and words <= _value_words(arguments)


def fits(arguments: Mapping[str, Any], parameters: Mapping[str, Any]) -> bool:
    """Whether ``arguments`` could be a call to a function with the JSON schema ``parameters``."""
    properties = parameters.get("properties") or {}
    if not arguments or not set(arguments) <= set(properties):
        return False
    if not set(parameters.get("required") or ()) <= set(arguments):
        return False
    return all(arguments[k] in spec["enum"] for k, spec in properties.items()
               if k in arguments and isinstance(spec, Mapping) and isinstance(spec.get("enum"), list))


def labelled_calls(text: str, tools: Sequence[Mapping[str, Any]], evidence: Evidence) -> tuple[str, list[ToolCall]]:
    """(``text`` without the labelled calls, the calls they make), or (``text``, []) unless every call in ``text``
    to a name nobody offered is a labelled call that fits one tool (a reply is read one way or the other whole)."""
    offered = {tool_name(t): (t.get("function", t).get("parameters") or {}) for t in tools}
    unknown = {m[1] for m in _NAME.finditer(text)} - set(offered)
    if not unknown:
        return text, []
    rest, written = parse_tool_calls(text, [{"name": n} for n in unknown])
    if not written:
        return text, []
    calls = []
    for call in written:
        fitting = [name for name, schema in offered.items() if fits(call.arguments, schema)]
        if not is_label(call.name, call.arguments) or len(fitting) != 1:
            return text, []
        required = offered[fitting[0]].get("required") or ()
        if not all(evidence.mentions(call.arguments[k]) for k in required):
            return text, []
        calls.append(call.model_copy(update={"name": fitting[0]}))
    return rest, calls
