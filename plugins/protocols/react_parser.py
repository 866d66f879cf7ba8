"""Parse one ReAct step out of free model text.

Small models bend the format: wrong case, markdown bold, code fences, JSON
followed by chatter, a hallucinated second action. The parser accepts what is
unambiguous and turns everything else into a ``ParseError`` whose hint tells
the model exactly what to write instead. It never raises anything else.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hanlin.errors import ParseError

# Labels tolerate markdown emphasis ("**Action:**") and any case.
_LABEL = r"(?<![A-Za-z])[*_`]*{name}[*_`\s]*:[*_`]*"
_ACTION = re.compile(_LABEL.format(name=r"action(?!\s*input)"), re.IGNORECASE)
_INPUT = re.compile(_LABEL.format(name=r"action[ _]?input"), re.IGNORECASE)
_FINAL = re.compile(_LABEL.format(name=r"final[ _]?answer"), re.IGNORECASE)
_THOUGHT = re.compile(_LABEL.format(name=r"thought"), re.IGNORECASE)
_OBSERVATION = re.compile(r"\n\s*observation\s*:", re.IGNORECASE)

FORMAT_HINT = (
    "Reply in this format:\nThought: <your reasoning>\nAction: <tool name>\nAction Input: <JSON object>\n"
    "or, when you know the answer:\nThought: <your reasoning>\nFinal Answer: <the answer>"
)


@dataclass(slots=True)
class ReactStep:
    thought: str = ""
    action: str | None = None
    arguments: dict[str, Any] = field(default_factory=dict)
    final: str | None = None


def parse_react(text: str, tools: Mapping[str, Any] | None = None) -> ReactStep:
    """Parse ``text``; ``tools`` (name -> Tool) lets a bare Action Input fill a tool's single parameter."""
    if not isinstance(text, str):
        raise ParseError(f"expected model text, got {type(text).__name__}", hint=FORMAT_HINT)
    body = _strip_fences(text)
    cut = _OBSERVATION.search(body)
    if cut:  # the model wrote its own Observation: everything after it is invented
        body = body[: cut.start()]
    if not body.strip():
        raise ParseError("the model returned an empty reply", hint=FORMAT_HINT, text=text)
    action_m = _ACTION.search(body)
    final_m = _FINAL.search(body)
    thought = _thought(body, min(m.start() for m in (action_m, final_m) if m) if (action_m or final_m) else len(body))

    if final_m and (action_m is None or final_m.start() < action_m.start()):
        end = action_m.start() if action_m else len(body)  # an action after the answer is invented
        answer = body[final_m.end() : end].strip()
        if not answer:
            raise ParseError("'Final Answer:' is followed by nothing", hint="Write the answer after 'Final Answer:'.", text=text)
        return ReactStep(thought=thought, final=answer)
    if action_m is None:
        raise ParseError(
            "the reply has neither an 'Action:' nor a 'Final Answer:' line", hint=FORMAT_HINT, text=text
        )

    after_action = body[action_m.end() :]
    input_m = _INPUT.search(after_action)
    name_text = after_action[: input_m.start()] if input_m else after_action.split("\n", 1)[0]
    name = _clean_tool_name(name_text)
    if not name:
        raise ParseError("'Action:' is not followed by a tool name", hint=FORMAT_HINT, text=text)
    if input_m is None:
        raise ParseError(
            f"'Action: {name}' has no 'Action Input:' line",
            hint=f"After 'Action: {name}' write a line 'Action Input: ' followed by the arguments as a JSON object.",
            text=text,
        )
    raw_input = after_action[input_m.end() :]
    second = _ACTION.search(raw_input)
    if second:  # a second action was invented after the first: keep the first
        raw_input = raw_input[: second.start()]
    arguments = _parse_arguments(raw_input, name, tools, text)
    return ReactStep(thought=thought, action=name, arguments=arguments)


def _strip_fences(text: str) -> str:
    return re.sub(r"```[a-zA-Z]*\n?", "", text)


def _thought(body: str, end: int) -> str:
    head = body[:end]
    m = _THOUGHT.search(head)
    return (head[m.end() :] if m else head).strip()


def _clean_tool_name(text: str) -> str:
    name = text.strip().splitlines()[0].strip() if text.strip() else ""
    name = name.strip("*_`'\" []")
    name = re.sub(r"\(\s*\)$", "", name)  # "calculator()"
    return name.strip()


def _parse_arguments(raw: str, name: str, tools: Mapping[str, Any] | None, text: str) -> dict[str, Any]:
    stripped = raw.strip().strip("`").strip()
    start = stripped.find("{")
    if start == 0 or (start > 0 and not stripped[:start].strip()):
        try:
            value, _ = json.JSONDecoder().raw_decode(stripped[start:])
        except json.JSONDecodeError as exc:
            raise ParseError(
                f"Action Input for '{name}' is not valid JSON: {exc.msg} (at char {exc.pos})",
                hint=f"Action Input must be one JSON object, e.g. {_example(name, tools)}",
                text=text,
            ) from None
        if not isinstance(value, dict):  # raw_decode of "{...}" always yields a dict; kept for clarity
            raise ParseError("Action Input must be a JSON object", hint=FORMAT_HINT, text=text)
        return value
    if not stripped:
        raise ParseError(
            f"'Action Input:' for '{name}' is empty",
            hint=f"Write the arguments as a JSON object, e.g. {_example(name, tools)}",
            text=text,
        )
    # A bare value: accept it when the tool has exactly one required parameter.
    param = _single_parameter(name, tools)
    if param is not None:
        line = stripped.split("\n", 1)[0].strip().strip("'\"")
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            value = line
        return {param: value}
    raise ParseError(
        f"Action Input for '{name}' is not a JSON object: {stripped[:80]!r}",
        hint=f"Action Input must be one JSON object, e.g. {_example(name, tools)}",
        text=text,
    )


def _single_parameter(name: str, tools: Mapping[str, Any] | None) -> str | None:
    tool = (tools or {}).get(name)
    if tool is None:
        return None
    params = tool.parameters
    required = params.get("required", [])
    props = params.get("properties", {})
    if len(required) == 1 and len(props) == 1:
        return required[0]
    return None


def _example(name: str, tools: Mapping[str, Any] | None) -> str:
    tool = (tools or {}).get(name)
    if tool is None:
        return '{"argument": "value"}'
    props = tool.parameters.get("properties", {})
    sample = {k: ("..." if v.get("type") == "string" else 0) for k, v in props.items()}
    return json.dumps(sample)
