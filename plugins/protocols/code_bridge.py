"""The bridge between the `code` protocol's Python cells and hanlin's tools.

The cell runs in the python tool's Jupyter kernel, another process. Before each
cell a setup snippet defines, in the kernel, one plain function per offered
tool plus ``final_answer``. Calling one sends a request through Jupyter's stdin
channel (an ``input_request`` whose prompt is a marker plus JSON); the host
answers it here by running the hanlin Tool (validated arguments, its own
timeout, tool-call events) and replying with JSON: the tool's value, which the
stub returns, or its error, which the stub raises as ``ToolCallError``.
``final_answer(value)`` records the value on the host and ends the cell.
"""

from __future__ import annotations

import asyncio
import json
import keyword
import math
import re
import time
from typing import Any

from pydantic import BaseModel

from hanlin import Tool, ToolCall, ToolResult, current_task, tool_task
from hanlin.events import ToolCallEvent, ToolResultEvent
from hanlin.protocols import RunContext

MARK = "\x00hanlin-bridge\x00"  # the prompt of a bridge request; a prompt without it is not ours

# Runs in the kernel before each cell. `_hanlin_install` is removed again, so the user namespace gains only the tool
# functions, final_answer and ToolCallError. builtins.input is made to fail at once in the model's code (the kernel
# allows stdin for the bridge's sake, and nobody is there to type); the bridge itself uses kernel.raw_input.
# A cell that defines its own final_answer does not replace the one that ends the run: Qwen2.5-Coder-0.5B wrote
# `def final_answer(n): return fibonacci(n)` and called `final_answer(25)`, which shadowed the bridge's function, so
# the cell only showed 75025 and the run went on; its next cell, `final_answer(25)`, then answered 25 (tooluse
# python-04, -20). The model's function is kept under another name, and final_answer(x) answers with what it returns
# (or with x, where it returns None: it printed the answer), in that cell and the ones after it.
KERNEL_SETUP = r'''
def _hanlin_install(specs, mark, run):
    import ast, builtins, inspect, json, types
    from IPython.core.error import StdinNotImplementedError
    ip = get_ipython()
    ns = ip.user_ns

    def render(exc):
        # The traceback without the bridge's own frames, so it ends at the model's line that called the tool.
        tb, kept = exc.__traceback__, []
        while tb is not None:
            if tb.tb_frame.f_locals.get("__tracebackhide__") is not True:
                kept.append(tb)
            tb = tb.tb_next
        trimmed = None
        for entry in reversed(kept):
            trimmed = types.TracebackType(trimmed, entry.tb_frame, entry.tb_lasti, entry.tb_lineno)
        return ip.InteractiveTB.structured_traceback(type(exc), exc, trimmed)

    class ToolCallError(Exception):
        """A tool called from this code failed; the message says why."""

        def _render_traceback_(self):  # IPython shows this instead of its own traceback
            return render(self)

    class ToolArgumentError(ToolCallError, TypeError):
        """A tool function was called with arguments it cannot take."""

    class _HanlinFinalAnswer(BaseException):
        """Raised by final_answer() to end the cell (a BaseException, so `except Exception` does not catch it)."""

    def _no_input(prompt=""):
        raise StdinNotImplementedError("input() is not available: nobody can type here; put the values in the code")

    def _pre_run(*_):
        builtins.input = _no_input

    class _OwnFinalAnswer(ast.NodeTransformer):
        """A cell's own top-level `def final_answer` is kept under another name, which final_answer calls."""

        def visit_Module(self, node):
            for stmt in node.body:
                if isinstance(stmt, ast.FunctionDef) and stmt.name == "final_answer":
                    stmt.name = "_hanlin_own_final_answer"
            return node

    if not getattr(ip, "_hanlin_bridge", False):
        ip.events.register("pre_run_cell", _pre_run)
        ip.ast_transformers.append(_OwnFinalAnswer())
        ip._hanlin_bridge = True
    if getattr(ip, "_hanlin_run", None) != run:  # a later run in the session starts without the last one's
        ns.pop("_hanlin_own_final_answer", None)
        ip._hanlin_run = run

    class _Unset:
        def __repr__(self):
            return "<tool default>"

    unset = _Unset()

    def request(payload):
        __tracebackhide__ = True
        try:
            text = json.dumps(payload)
        except (TypeError, ValueError) as exc:
            raise ToolArgumentError(f"tool arguments must be JSON values (str, int, float, bool, None, list, dict): {exc}") from None
        reply = json.loads(ip.kernel.raw_input(mark + text))
        if "error" in reply:
            raise ToolCallError(reply["error"])
        return reply.get("value")

    def make(spec):
        name, pyname, params = spec["name"], spec["pyname"], spec["params"]

        def stub(*args, **kwargs):
            __tracebackhide__ = True
            if len(args) > len(params):
                raise ToolArgumentError(f"{pyname}() takes {len(params)} positional arguments but {len(args)} were given")
            for param, value in zip(params, args):
                if param in kwargs:
                    raise ToolArgumentError(f"{pyname}() got multiple values for argument '{param}'")
                kwargs[param] = value
            kwargs = {k: v for k, v in kwargs.items() if v is not unset}
            return request({"tool": name, "arguments": kwargs})

        stub.__name__ = stub.__qualname__ = pyname
        stub.__doc__ = spec["doc"]
        try:
            stub.__signature__ = inspect.Signature([
                inspect.Parameter(p, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                  default=inspect.Parameter.empty if p in spec["required"] else spec["defaults"].get(p, unset))
                for p in params
            ])
        except ValueError:  # parameters out of order for a Python signature: help() shows (*args, **kwargs)
            pass
        return stub

    def given(args, kwargs):
        if len(args) + len(kwargs) != 1:
            raise ToolArgumentError("final_answer() takes one argument, the answer: final_answer(answer)")
        return args[0] if args else next(iter(kwargs.values()))

    busy = []

    def final_answer(*args, **kwargs):
        """End the task with `answer` as the final answer."""
        __tracebackhide__ = True
        own = ns.get("_hanlin_own_final_answer")
        if callable(own) and not busy:  # the model's own final_answer computes the answer (see KERNEL_SETUP's note)
            busy.append(own)
            try:
                answer = own(*args, **kwargs)
            finally:
                busy.clear()
            if answer is None:  # it printed the answer, or did nothing: the answer is what it was given
                answer = given(args, kwargs)
        else:
            answer = given(args, kwargs)
        if isinstance(answer, str):
            text = answer
        else:
            try:
                text = json.dumps(answer)
            except (TypeError, ValueError):
                text = str(answer)
        request({"final": text})
        raise _HanlinFinalAnswer()

    ip.set_custom_exc((_HanlinFinalAnswer,), lambda *args, **kwargs: None)  # ends the cell without a traceback
    ns["ToolCallError"] = ToolCallError
    ns["final_answer"] = final_answer
    import sys
    for spec in specs:
        ns[spec["pyname"]] = stub = make(spec)
        # Small models write `from calculator import calculator`: the tool is importable under its own name too.
        if spec["pyname"] not in sys.modules or getattr(sys.modules[spec["pyname"]], "_hanlin_tool", False):
            module = types.ModuleType(spec["pyname"], spec["doc"])
            setattr(module, spec["pyname"], stub)
            module._hanlin_tool = True
            sys.modules[spec["pyname"]] = module
'''


def python_name(name: str) -> str:
    """A tool name as a Python identifier (``web-search`` -> ``web_search``)."""
    cleaned = re.sub(r"\W", "_", name)
    if cleaned[:1].isdigit():
        cleaned = "_" + cleaned
    return cleaned + "_" if keyword.iskeyword(cleaned) or cleaned in ("final_answer", "ToolCallError") else cleaned


def _params(tool: Tool) -> tuple[list[str], list[str], dict[str, Any]]:
    schema = tool.parameters
    props = schema.get("properties", {})
    required = [p for p in schema.get("required", []) if p in props]
    params = [p for p in props if p.isidentifier() and not keyword.iskeyword(p)]
    # A Python signature needs the parameters without defaults first.
    params.sort(key=lambda p: p not in required)
    defaults = {p: props[p]["default"] for p in params if "default" in props[p]}
    return params, required, defaults


def _annotation(schema: dict[str, Any]) -> str:
    if "anyOf" in schema:
        return " | ".join(dict.fromkeys(_annotation(s) for s in schema["anyOf"]))
    if "enum" in schema:
        return "str" if all(isinstance(v, str) for v in schema["enum"]) else "Any"
    kind = schema.get("type")
    if kind == "array":
        items = schema.get("items")
        return f"list[{_annotation(items)}]" if isinstance(items, dict) and items else "list"
    return {"string": "str", "integer": "int", "number": "float", "boolean": "bool", "object": "dict",
            "null": "None"}.get(kind, "Any")


def _returns(tool: Tool) -> str:
    hint = getattr(tool.fn, "__annotations__", {}).get("return")
    if hint is None or hint in ("ToolResult", ToolResult):
        return "str"
    text = hint if isinstance(hint, str) else getattr(hint, "__name__", str(hint))
    return text.replace("typing.", "")


def signature(tool: Tool) -> str:
    """The tool as a Python function stub with its docstring, for the prompt."""
    params, required, defaults = _params(tool)
    props = tool.parameters.get("properties", {})
    parts = []
    for p in params:
        part = f"{p}: {_annotation(props[p])}"
        if p not in required:
            part += f" = {defaults[p]!r}" if p in defaults else " = ..."
        parts.append(part)
    summary = tool.description.split("\n\n", 1)[0].replace("\n", " ").strip() or f"The {tool.name} tool."
    doc = [summary]
    described = [(p, props[p].get("description")) for p in params if props[p].get("description")]
    if described:
        doc += ["", "Args:", *(f"    {p}: {d}" for p, d in described)]
    body = "\n".join(f"    {line}" if line else "" for line in doc).lstrip()
    return f'def {python_name(tool.name)}({", ".join(parts)}) -> {_returns(tool)}:\n    """{body}\n    """'


def _value(result: ToolResult, tool: Tool | None = None) -> Any:
    """What a Python caller gets back: the tool's own return value when it travels as JSON, else its text. A tool
    whose stub promises ``-> str`` (it returns a ToolResult, or declares str) gives its text, whatever data it
    carries: the knowledge base handed back its hits as a dict, and Qwen2.5-Coder-0.5B, told it had a str, called
    .split() and .find() on it, failed, and repeated the cell until the run gave up."""
    data = result.data
    if isinstance(data, str):
        return _number_or_text(data)
    if data is None or (tool is not None and _returns(tool) == "str"):
        return _number_or_text(result.content)
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    try:
        json.dumps(data)
    except (TypeError, ValueError):
        return result.content
    return data


# A number as a tool writes one: no sign but a minus, no leading zero (an id such as "007" stays text), no grouping.
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][-+]?\d+)?")


def _number_or_text(text: str) -> Any:
    """A text result that is one number comes back as that number (int, or float where it has a point or an
    exponent), anything else as the text. A function called from Python that computes a number is used as one:
    Qwen2.5-Coder-0.5B wrote ``calculator("1234 - 567") * 89`` for "(1234 - 567) * 89", and with the text "667"
    back Python repeated the string 89 times; the model answered with the 267 digits (tooluse calc-06)."""
    stripped = text.strip()
    if not _NUMBER.fullmatch(stripped):
        return text
    if any(c in stripped for c in ".eE"):
        value = float(stripped)
        return value if math.isfinite(value) else text
    return int(stripped)


class Bridge:
    """One cell's host side: answers its tool calls and catches its final answer.

    ``handle`` runs on the kernel-driving worker thread; events go to the run's loop thread-safely.
    """

    def __init__(self, ctx: RunContext, tools: dict[str, Tool], loop: asyncio.AbstractEventLoop, run: str = "") -> None:
        """``run`` names the agent run: a final_answer the model defined in one run's cell is not the next run's."""
        self.ctx, self.tools, self.loop, self.run = ctx, tools, loop, run
        self.task = current_task()  # made inside the run; the cell's calls come in on the kernel's reader thread
        self.final: str | None = None
        self.calls: list[ToolCall] = []
        self.returned: list[tuple[ToolCall, ToolResult]] = []  # the calls that succeeded, with what they gave back

    def setup_code(self) -> str:
        specs = []
        for tool in self.tools.values():
            params, required, defaults = _params(tool)
            specs.append({"name": tool.name, "pyname": python_name(tool.name), "params": params, "required": required,
                          "defaults": defaults, "doc": tool.description})
        return (f"{KERNEL_SETUP}\n_hanlin_install(__import__('json').loads({json.dumps(specs)!r}), {MARK!r}, "
                f"{self.run!r})\n"
                "del _hanlin_install\n")

    def _emit(self, event: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.ctx.emit, event)
        except RuntimeError:  # the run was cancelled and its loop closed while the cell still ran
            pass

    def handle(self, prompt: str) -> str:
        if not prompt.startswith(MARK):
            return ""  # not a bridge request (input() itself is disabled in the cell)
        try:
            request = json.loads(prompt[len(MARK):])
        except json.JSONDecodeError as exc:
            return json.dumps({"error": f"malformed bridge request: {exc}"})
        if "final" in request:
            if self.final is None:
                self.final = str(request["final"])
            return json.dumps({"value": None})
        try:
            call = ToolCall(name=str(request.get("tool")), arguments=request.get("arguments") or {})
            return json.dumps(self._call(call))
        except Exception as exc:  # the cell must get a reply whatever happens here
            return json.dumps({"error": f"the tool call could not be made: {type(exc).__name__}: {exc}"})

    def _call(self, call: ToolCall) -> dict[str, Any]:
        self.calls.append(call)
        self._emit(ToolCallEvent(step=self.ctx.step, call=call))
        started = time.perf_counter()
        outcome = self.ctx.check_call(call) if call.name in self.tools else None
        if call.name not in self.tools:
            result = ToolResult.error(f"there is no tool named '{call.name}' available to this code")
        elif outcome is not None:
            result = outcome.result
        else:
            with tool_task(self.task):
                result = self.tools[call.name].invoke(call.arguments)
        self._emit(ToolResultEvent(step=self.ctx.step, call_id=call.id, name=call.name, content=result.content,
                                   is_error=result.is_error, duration_s=time.perf_counter() - started))
        if result.is_error:
            return {"error": result.content}
        self.returned.append((call, result))
        return {"value": _value(result, self.tools[call.name])}

    def unseen_returns(self, output: str, limit: int) -> str:
        """What the cell's successful calls returned that its output does not already show, as text for the model.

        Shown when a cell failed or printed nothing: Qwen2.5-Coder-0.5B called ``knowledge_base(...).get(...)`` on
        the text the knowledge base returned, got an AttributeError, and re-sent the cell until the run gave up
        (0 of 7 look-up items), never having seen the passages that held the answer."""
        from hanlin.plugins.tools.python_kernel import cut

        parts: dict[str, None] = {}  # a call made in a loop is shown once; all of them together fit in `limit`
        lines = {line.strip() for line in output.splitlines()}
        for call, result in self.returned:
            text = result.content.strip()  # a one-line value is shown only as a line of its own: "2" is in any traceback
            if text and (text not in lines if "\n" not in text else text not in output):
                args = ", ".join(f"{k}={v!r}" for k, v in call.arguments.items())
                parts[f"{python_name(call.name)}({args}) returned:\n{result.content}"] = None
        return cut("\n\n".join(parts), limit) if parts else ""
