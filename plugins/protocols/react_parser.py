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
from hanlin.plugins.protocols.code_fence import fenced_code, is_code_tool, unclosed_fenced_code

# A label counts only at the start of a line ("Thought: I need the final answer: soon" is a thought, not an
# answer), and tolerates indentation, markdown emphasis ("**Action:**") and any case.
_LABEL = r"^[ \t]*[*_`]*{name}[*_` \t]*:[*_`]*"
_FLAGS = re.IGNORECASE | re.MULTILINE
_ACTION = re.compile(_LABEL.format(name=r"action(?![ \t_]*input)"), _FLAGS)
_INPUT = re.compile(_LABEL.format(name=r"action[ _]?input"), _FLAGS)
_FINAL = re.compile(_LABEL.format(name=r"final[ _]?answer"), _FLAGS)
_THOUGHT = re.compile(_LABEL.format(name=r"thought"), _FLAGS)
# Code fences are not stripped from the reply: a JSON string may hold one (code for a Python tool). Labels are found
# at line starts whether or not a fence wraps the reply; a fence opening the arguments is skipped, the JSON decoder
# stops before a closing one, and a final answer loses only a fence left unclosed by a wrapped reply.
_LEADING_FENCE = re.compile(r"^```[\w+-]*[ \t]*\n?")
_TRAILING_FENCE = re.compile(r"\n?[ \t]*```[ \t]*$")
_OBSERVATION = re.compile(r"\n\s*observation\s*:", re.IGNORECASE)
# "Final Answer: 12" is never Python (two names in a row), so inside a code block it is the model answering.
_FINAL_IN_CODE = re.compile(r"^[ \t]*[*_`]*final answer[*_` \t]*:", _FLAGS)

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
    body = text
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
        if answer.count("```") % 2:  # the closing fence of a reply wrapped in one; a balanced code block stays
            answer = _TRAILING_FENCE.sub("", _LEADING_FENCE.sub("", answer)).strip()
        if not answer:
            raise ParseError("'Final Answer:' is followed by nothing", hint="Write the answer after 'Final Answer:'.", text=text)
        return ReactStep(thought=thought, final=answer)
    if action_m is None:
        raise ParseError(
            "the reply has neither an 'Action:' nor a 'Final Answer:' line", hint=FORMAT_HINT, text=text
        )

    # Searches run on the whole body from a position, so "start of a line" means a real line start.
    input_m = _INPUT.search(body, action_m.end())
    name_text = body[action_m.end() : input_m.start()] if input_m else body[action_m.end() :].split("\n", 1)[0]
    name = _clean_tool_name(name_text)
    if not name:
        raise ParseError("'Action:' is not followed by a tool name", hint=FORMAT_HINT, text=text)
    if input_m is None:
        raise ParseError(
            f"'Action: {name}' has no 'Action Input:' line",
            hint=f"After 'Action: {name}' write a line 'Action Input: ' followed by the arguments as a JSON object.",
            text=text,
        )
    second = _ACTION.search(body, input_m.end())
    # a second action was invented after the first: keep the first
    raw_input = body[input_m.end() : second.start() if second else len(body)]
    arguments = _parse_arguments(raw_input, name, tools, text)
    return ReactStep(thought=thought, action=name, arguments=arguments)


def without_stray_brace(value: Any) -> Any:
    """A string argument less a trailing '}' that closes nothing. Qwen2.5 writes ')}' as one token, so a call meant as
    {"code": "print(n)"} comes out as {"code": "print(n)}"} plus a second '}' after it: every such python step was a
    SyntaxError ("unmatched '}'"), re-sent unchanged until the run gave up (3 of 21 python tooluse items)."""
    if isinstance(value, str) and value.rstrip().endswith("}") and value.count("}") > value.count("{"):
        head = value.rstrip()
        return head[:-1] + value[len(head):]
    return value


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
    tool = (tools or {}).get(name)
    if tool is not None and is_code_tool(tool):
        code = fenced_code(raw)
        if code is None:
            code = unclosed_fenced_code(raw)
        if code is not None:  # a code tool's input as a ```python block (see code_fence)
            return {"code": _code_before_final_answer(code, text)}
    # A fence opening on the label's line ("Action Input: ```json"), or inline backticks around the arguments.
    stripped = _LEADING_FENCE.sub("", raw.strip()).strip().strip("`").strip()
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
        return {k: without_stray_brace(v) for k, v in value.items()}
    if not stripped:
        raise ParseError(
            f"'Action Input:' for '{name}' is empty",
            hint=f"Write the arguments as a JSON object, e.g. {_example(name, tools)}",
            text=text,
        )
    # A bare value: accept it when the tool has exactly one required parameter.
    param = _single_parameter(name, tools)
    if param is not None:
        line = stripped.split("\n", 1)[0].strip().strip("'\"`")
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


def _code_before_final_answer(code: str, text: str) -> str:
    """The code less a "Final Answer:" line and what follows it. Having run a cell, Qwen2.5-Coder-0.5B sent the same
    cell again with "Final Answer: 12" as its last line: a SyntaxError, re-sent until the run gave up (python-13). Cut
    there, an unchanged cell meets the repeat guard, which gives back the earlier result and asks for the answer; a
    new cell runs, so the answer comes from its output rather than from the model's guess."""
    match = _FINAL_IN_CODE.search(code)
    if match is None:
        return code
    head = code[: match.start()].rstrip()
    if not head.strip():
        raise ParseError(
            "the ```python block holds only a 'Final Answer:' line",
            hint="Write 'Final Answer: <the answer>' on its own line, outside any code block.",
            text=text,
        )
    return head


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
