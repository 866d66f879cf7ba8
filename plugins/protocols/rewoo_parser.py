"""Parse a ReWOO plan: ``Plan:`` lines, each followed by ``#En = tool[{json args}]``, or, for a tool that runs code,
``#En = python`` and a ```python block on the lines after it.

A step's arguments may mention earlier evidence (``#E1``) inside string
values; the worker substitutes it. The parser checks everything that can be
checked before running anything: ids unique, references only to earlier
steps, tools known, arguments a JSON object. Any other outcome is a
``ParseError`` with a hint for the re-plan.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hanlin.errors import ParseError
from hanlin.plugins.protocols.code_fence import is_code_tool

_STEP = re.compile(r"^\s*[*`]*#E(\d+)[*`]*\s*[:=]\s*([A-Za-z_][\w\-]*)\s*\[(.*)\]\s*[*`]*\s*$")
_CODE_STEP = re.compile(r"^\s*[*`]*#E(\d+)[*`]*\s*[:=]\s*([A-Za-z_][\w\-]*)\s*$")  # its code follows in a fence
_STEP_START = re.compile(r"^\s*[*`]*#E\d+", re.IGNORECASE)
_PLAN = re.compile(r"^\s*[*_]*plan[*_]*\s*(\d+)?\s*:[*_]*\s*(.*)$", re.IGNORECASE)
_REF = re.compile(r"#E(\d+)")
_FENCE = re.compile(r"^\s*```[\w+-]*\s*$")

PLAN_HINT = (
    "Write the plan as pairs of lines:\nPlan: <what this step does>\n#E1 = <tool>[<JSON object of arguments>]\n"
    "Later steps may use an earlier result by writing #E1 inside a string argument."
)


@dataclass(slots=True)
class PlanStep:
    id: int
    tool: str
    arguments: dict[str, Any]
    description: str = ""
    depends_on: set[int] = field(default_factory=set)

    @property
    def label(self) -> str:
        return f"#E{self.id}"


def parse_plan(text: str, tools: Mapping[str, Any] | None = None, *, max_steps: int = 20) -> list[PlanStep]:
    """The plan's steps in order; an empty list means the planner needs no tools."""
    if not isinstance(text, str):
        raise ParseError(f"expected plan text, got {type(text).__name__}", hint=PLAN_HINT)
    steps: list[PlanStep] = []
    seen: dict[str, int] = {}  # a call (tool and arguments) -> the step that first made it
    aliases: dict[int, int] = {}  # a dropped repeat's id -> that first step's id
    description = ""
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line, lineno = lines[index], index + 1
        index += 1
        if _FENCE.match(line):  # only a fence's own line is dropped: a JSON string argument may hold "```"
            continue
        plan_m = _PLAN.match(line)
        if plan_m:
            description = plan_m.group(2).strip()
            continue
        if not _STEP_START.match(line):
            continue
        code_m = _CODE_STEP.match(line)
        m = _STEP.match(line) or code_m
        if m is None:
            raise ParseError(f"line {lineno} is not a valid step: {line.strip()[:120]!r}", hint=PLAN_HINT, text=text)
        step_id, tool = int(m.group(1)), m.group(2)
        if tools is not None and tool not in tools:
            known = ", ".join(tools) or "(none)"
            raise ParseError(f"step #E{step_id} uses unknown tool '{tool}'", hint=f"Use only these tools: {known}.", text=text)
        if code_m is not None:
            code, index = _fenced_block(lines, index, step_id, tool, tools, text)
            arguments: dict[str, Any] = {"code": code}
        else:
            arguments = _parse_args(m.group(3), step_id, tool, tools, text)
        refs = {int(r) for r in _REF.findall(json.dumps(arguments))}
        if code_m is not None:  # in code "#E2 = 2**100" is a comment: only earlier steps' results are references
            refs = {r for r in refs if r in aliases or any(s.id == r for s in steps)}
        bad = sorted(r for r in refs if r not in {s.id for s in steps} and r not in aliases)
        if bad:
            raise ParseError(
                f"step #E{step_id} refers to {', '.join(f'#E{b}' for b in bad)} before it is defined",
                hint="A step may only use the results of steps written above it.",
                text=text,
            )
        arguments = _redirect(arguments, aliases)
        refs = {aliases.get(r, r) for r in refs}
        key = json.dumps([tool, arguments], sort_keys=True, default=str)
        if step_id in aliases or any(s.id == step_id for s in steps):
            if seen.get(key) == aliases.get(step_id, step_id):  # the same step written again, number and all
                description = ""
                continue
            raise ParseError(f"#E{step_id} is defined twice (line {lineno})", hint="Number the steps #E1, #E2, ... once each.", text=text)
        if key in seen:  # the same call again: small models loop on one step; keep the first, point references at it
            aliases[step_id] = seen[key]
        else:
            seen[key] = step_id
            steps.append(PlanStep(step_id, tool, arguments, description, refs))
        description = ""
    if len(steps) > max_steps:
        raise ParseError(f"the plan has {len(steps)} steps; at most {max_steps} are allowed", hint="Make a shorter plan.", text=text)
    if not steps and not text.strip():
        raise ParseError("the planner returned an empty reply", hint=PLAN_HINT, text=text)
    return steps


def _redirect(value: Any, aliases: dict[int, int]) -> Any:
    """``value`` with references to dropped repeated steps pointed at the step they repeated."""
    if not aliases:
        return value
    if isinstance(value, str):
        return _REF.sub(lambda m: f"#E{aliases.get(int(m.group(1)), int(m.group(1)))}", value)
    if isinstance(value, dict):
        return {k: _redirect(v, aliases) for k, v in value.items()}
    if isinstance(value, list):
        return [_redirect(v, aliases) for v in value]
    return value


def _fenced_block(lines: list[str], index: int, step_id: int, tool: str, tools: Mapping[str, Any] | None,
                  text: str) -> tuple[str, int]:
    """(the code, the index after its closing fence) of the ```python block that starts at ``lines[index]``, the
    input of a code tool's step (``#E1 = python`` and then the block, as the planner is asked for code). A block the
    token limit left open runs to the end of the plan."""
    tool_obj = (tools or {}).get(tool)
    if tool_obj is not None and not is_code_tool(tool_obj):
        raise ParseError(f"step #E{step_id} has no arguments", hint=f"Write them in brackets: #E{step_id} = {tool}[{{...}}].",
                         text=text)
    while index < len(lines) and not lines[index].strip():
        index += 1
    if index == len(lines) or not _FENCE.match(lines[index]):
        raise ParseError(f"step #E{step_id} has no code", hint=f"Write the code of #E{step_id} = {tool} in a "
                         "```python block on the lines after it.", text=text)
    start = index + 1
    end = next((i for i in range(start, len(lines)) if lines[i].strip() == "```"), len(lines))
    code = "\n".join(lines[start:end]).strip("\n")
    if not code.strip():
        raise ParseError(f"step #E{step_id} has an empty code block", hint="Write the code in the block.", text=text)
    return _result_line(code, tools), end + 1


_RESULT_LINE = re.compile(r"#E\d+\s*=\s*(?!=)(.+)")
_PLAN_CALL = re.compile(r"\s*[A-Za-z_][\w-]*\s*\[\s*\{")  # name[{...}]: a step written in the block


def _result_line(code: str, tools: Mapping[str, Any] | None) -> str:
    """``code`` with a last line in the plan's own notation, ``#E2 = count_vowels("encyclopaedia")``, read as what
    it says: the step's result is that expression, so it becomes the cell's last expression, whose value the cell
    returns. To Python the line is a comment: the function was defined, never called, and the step returned
    nothing (tooluse python-21; the solver then guessed 3 vowels). A line that is still plan notation, a step
    (``#E3 = sum_numbers[{"a": "#E2"}]``) or a tool's name (``#E2 = python``), or no Python expression at all,
    stays a comment."""
    lines = code.rstrip().splitlines()
    last = lines[-1] if lines else ""
    match = _RESULT_LINE.fullmatch(last)  # unindented only: inside a block it is no value of the cell
    if match is None or _REF.search(match.group(1)) or _PLAN_CALL.match(match.group(1)):
        return code
    if match.group(1).strip() in (tools or {}):
        return code
    try:
        compile(match.group(1), "<plan step>", "eval")
    except (SyntaxError, ValueError):
        return code
    return "\n".join([*lines[:-1], match.group(1).strip()])


def without_cut_line(text: str) -> str:
    """A plan cut off at the token limit, less its last line (the one being written when the cut came): the complete
    steps before it still make a plan. A 0.5B planner looping on one step used to lose the whole plan this way."""
    return text.rsplit("\n", 1)[0] if "\n" in text else ""


def _parse_args(raw: str, step_id: int, tool: str, tools: Mapping[str, Any] | None, text: str) -> dict[str, Any]:
    raw = raw.strip()
    if raw.startswith("{"):
        try:
            value, end = json.JSONDecoder().raw_decode(raw)
        except json.JSONDecodeError as exc:
            raise ParseError(
                f"arguments of #E{step_id} are not valid JSON: {exc.msg} (at char {exc.pos})",
                hint="Write the arguments as one JSON object inside the brackets, e.g. calculator[{\"expression\": \"2 + 2\"}].",
                text=text,
            ) from None
        if raw[end:].strip():
            raise ParseError(
                f"unexpected text after the JSON arguments of #E{step_id}: {raw[end:].strip()[:40]!r}",
                hint=PLAN_HINT,
                text=text,
            )
        return value
    tool_obj = (tools or {}).get(tool)
    if tool_obj is not None:
        props = tool_obj.parameters.get("properties", {})
        required = tool_obj.parameters.get("required", [])
        if len(props) == 1 and len(required) == 1:  # tool[2 + 2] for a one-argument tool
            return {required[0]: raw.strip("'\"")}
    raise ParseError(
        f"arguments of #E{step_id} must be a JSON object, got {raw[:60]!r}", hint=PLAN_HINT, text=text
    )


def substitute(value: Any, evidence: Mapping[int, str], schema: Mapping[str, Any] | None = None) -> Any:
    """Replace ``#En`` in string values with the evidence text of step n.

    A string that is exactly ``#En`` becomes the evidence parsed as JSON when it
    is a number or other JSON value, so a numeric argument gets a number, unless
    ``schema`` (the argument's JSON schema) wants a string: a calculator step
    ``{"expression": "#E1"}`` after a step that returned 4830 was refused as "Input
    should be a valid string" (tooluse calc-08).
    """
    schema = schema or {}
    if isinstance(value, str):
        whole = _REF.fullmatch(value.strip())
        if whole and int(whole.group(1)) in evidence:
            text = evidence[int(whole.group(1))]
            if schema.get("type") == "string":
                return text
            try:
                return json.loads(text)
            except (json.JSONDecodeError, ValueError):
                return text
        if _ARITHMETIC.fullmatch(_REF.sub("1", value)):  # "#E2 * 240": each reference stands for a number
            return _REF.sub(lambda m: _as_number(evidence[int(m.group(1))]) if int(m.group(1)) in evidence
                            else m.group(0), value)
        return _REF.sub(lambda m: evidence.get(int(m.group(1)), m.group(0)), value)
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        return {k: substitute(v, evidence, properties.get(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, evidence, schema.get("items") if isinstance(schema.get("items"), dict) else None)
                for v in value]
    return value


_ARITHMETIC = re.compile(r"[\d\s.+\-*/%^()]+")
_QUOTED = re.compile(r"'[^'\n]*'|\"[^\"\n]*\"")  # the query a tool echoes back, a name
_ASIDE = re.compile(r"\([^()\n]*\)")  # "(travel_policy.md › Limits)": a source, not a value
_STATED = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.]*\d)")


def _as_number(text: str) -> str:
    """A step's evidence as it goes into arithmetic: the one number the text states, else the text. A plan computes
    with a look-up's result, "#E2 * 240", but the look-up returns a sentence ("From the knowledge base for '240 km
    trip reimbursed' ...: - Private car: mileage is reimbursed at 0.30 euros per kilometre. (travel_policy.md ›
    Limits)"), and the calculator refused it whole (tooluse kb-08). Numbers in quotes (the query echoed back) and in
    parentheses (a source) are not stated values; a text that states several numbers is left whole, since which
    one the plan meant is a guess, and the tool then says what it could not read."""
    stripped = text.strip()
    if _STATED.fullmatch(stripped):
        return stripped
    stated = set(_STATED.findall(_ASIDE.sub(" ", _QUOTED.sub(" ", stripped))))
    return stated.pop() if len(stated) == 1 else text
