"""Tools: typed functions an agent can call.

``@tool`` reads a function's type hints and docstring into a pydantic
arguments model and a JSON Schema spec. ``Tool.invoke`` validates and coerces
arguments, runs the function under a timeout and turns every failure into an
error ``ToolResult``: a tool can never crash the agent loop, and the model
always learns what went wrong.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import inspect
import json
import re
import traceback
import types
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from hanlin.docstrings import parse_docstring
from hanlin.errors import ToolError, ToolInputError
from hanlin.sync_bridge import run_sync

DEFAULT_TIMEOUT_S = 30.0
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")

# One shared pool for sync tools: a timed-out call's thread cannot be killed, it
# is abandoned and finishes in the background. Tools that must stop for real
# (the Python kernel) implement their own interruption.
_pool = concurrent.futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="hanlin-tool")
# Which agent session a tool call belongs to. Toolkits with per-conversation state (a Python kernel) key it by this;
# tool calls copy the context into their worker thread, so the value follows the call.
_session: contextvars.ContextVar[str | None] = contextvars.ContextVar("hanlin_tool_session", default=None)


def current_session() -> str | None:
    """The agent session the running tool call belongs to (None outside an agent run)."""
    return _session.get()


def tool_session(session_id: str | None) -> contextlib.AbstractContextManager[None]:
    """Make tool calls inside the block belong to ``session_id`` (the Agent does this around each run)."""
    return _bound(_session, session_id)


# The request the running agent was given (the run's user message). A tool may read it to make sense of a terse
# argument: small models write look-up queries that drop what the user asked ("Lumen Harbor" for the minimum
# password length), and the knowledge base reads its query together with the request (see knowledge_base).
_task: contextvars.ContextVar[str | None] = contextvars.ContextVar("hanlin_tool_task", default=None)


def current_task() -> str | None:
    """The request of the agent run the running tool call belongs to (None outside an agent run)."""
    return _task.get()


def tool_task(task: str | None) -> contextlib.AbstractContextManager[None]:
    """Make tool calls inside the block belong to a run whose request is ``task`` (the Agent does this per run)."""
    return _bound(_task, task)


@contextlib.contextmanager
def _bound(var: contextvars.ContextVar[str | None], value: str | None) -> Iterator[None]:
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)


class ToolResult(BaseModel):
    """What a tool call returned, as text the model reads.

    ``artifacts`` lists files the tool produced (images, downloads); ``data`` keeps
    the raw return value for programmatic callers.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    content: str
    is_error: bool = False
    artifacts: list[str] = Field(default_factory=list)
    data: Any = Field(default=None, exclude=True)

    @classmethod
    def error(cls, message: str) -> ToolResult:
        return cls(content=message, is_error=True)


def _to_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(value)


def _format_validation_error(name: str, exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(arguments)"
        problems.append(f"{where}: {err['msg']}")
    return f"invalid arguments for tool '{name}': " + "; ".join(problems)


class Tool:
    """A callable the agent can use: name, description, an arguments model and a function."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        args_model: type[BaseModel] | None = None,
        timeout: float | None = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.fn = fn
        self.name = name or fn.__name__
        if not _NAME.match(self.name):
            raise ToolError(
                f"tool name {self.name!r} is not usable: use letters, digits, '_' or '-', starting with a letter"
            )
        doc = parse_docstring(inspect.getdoc(fn))
        self.description = description if description is not None else doc.description
        self.args_model = args_model or _args_model_from_signature(fn, self.name, doc.args)
        self.timeout = timeout
        self.is_async = inspect.iscoroutinefunction(fn)
        self.toolkit: Toolkit | None = None  # set when the tool is a method of a Toolkit (close() lives there)
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]

    # ---- specs ---------------------------------------------------------------------
    @property
    def parameters(self) -> dict[str, Any]:
        schema = self.args_model.model_json_schema()
        schema.pop("title", None)
        for prop in schema.get("properties", {}).values():
            prop.pop("title", None)
        schema.setdefault("properties", {})
        return schema

    @property
    def spec(self) -> dict[str, Any]:
        """The tool as a JSON-Schema function spec (name, description, parameters)."""
        return {"name": self.name, "description": self.description, "parameters": self.parameters}

    def to_openai(self) -> dict[str, Any]:
        return {"type": "function", "function": self.spec}

    # ---- calling -------------------------------------------------------------------
    def validate(self, arguments: dict[str, Any] | str | None) -> BaseModel:
        """Coerce raw arguments (a dict or a JSON string) into the arguments model, or raise ValidationError."""
        if arguments is None:
            arguments = {}
        if isinstance(arguments, str):
            arguments = json.loads(arguments) if arguments.strip() else {}
        return self.args_model.model_validate(arguments)

    def _prepare(self, arguments: dict[str, Any] | str | None) -> dict[str, Any] | ToolResult:
        try:
            model = self.validate(arguments)
        except json.JSONDecodeError as exc:
            return ToolResult.error(f"arguments for tool '{self.name}' are not valid JSON: {exc}")
        except ValidationError as exc:
            return ToolResult.error(_format_validation_error(self.name, exc))
        return {field: getattr(model, field) for field in type(model).model_fields}

    def _wrap(self, value: Any) -> ToolResult:
        if isinstance(value, ToolResult):
            return value
        return ToolResult(content=_to_text(value), data=value)

    def _failure(self, exc: BaseException) -> ToolResult:
        if isinstance(exc, ToolInputError):
            return ToolResult.error(f"{self.name}: {exc}")
        frames = traceback.extract_tb(exc.__traceback__)[-3:]
        where = "".join(traceback.format_list(frames)).rstrip()
        return ToolResult.error(
            f"tool '{self.name}' raised {type(exc).__name__}: {exc}" + (f"\n{where}" if where else "")
        )

    def _timeout_result(self) -> ToolResult:
        return ToolResult.error(
            f"tool '{self.name}' did not finish within {self.timeout:g} s and was abandoned; "
            "try simpler arguments or a smaller job"
        )

    def invoke(self, arguments: dict[str, Any] | str | None = None) -> ToolResult:
        """Validate, run and wrap. Never raises for a failure of the call itself."""
        kwargs = self._prepare(arguments)
        if isinstance(kwargs, ToolResult):
            return kwargs
        if self.is_async:
            return run_sync(self.ainvoke(arguments), thread_name="hanlin-tool-call")
        future = _pool.submit(contextvars.copy_context().run, functools.partial(self.fn, **kwargs))
        done, _ = concurrent.futures.wait([future], timeout=self.timeout)
        if not done:  # the tool's own TimeoutError (a socket timeout) is a failure of the tool, not ours
            future.cancel()
            return self._timeout_result()
        try:
            return self._wrap(future.result())
        except Exception as exc:
            return self._failure(exc)

    async def ainvoke(self, arguments: dict[str, Any] | str | None = None) -> ToolResult:
        kwargs = self._prepare(arguments)
        if isinstance(kwargs, ToolResult):
            return kwargs
        if self.is_async:
            call: Awaitable[Any] = self.fn(**kwargs)
        else:
            loop = asyncio.get_running_loop()
            context = contextvars.copy_context()
            call = loop.run_in_executor(_pool, functools.partial(context.run, functools.partial(self.fn, **kwargs)))
        task = asyncio.ensure_future(call)
        try:
            done, _ = await asyncio.wait([task], timeout=self.timeout)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if not done:  # as in invoke: only our deadline is a timeout; the tool's own TimeoutError is its failure
            task.cancel()
            return self._timeout_result()
        try:
            return self._wrap(task.result())
        except Exception as exc:
            return self._failure(exc)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the underlying function directly, as plain Python."""
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Tool {self.name}>"


def _parameter_hints(fn: Callable[..., Any], name: str) -> dict[str, Any]:
    """Resolve the parameters' type hints; the return annotation is irrelevant and may not resolve."""
    try:
        return get_type_hints(fn, include_extras=True)  # keep Annotated[..., Field(...)] constraints
    except Exception:
        pass
    raw = dict(getattr(fn, "__annotations__", {}))
    raw.pop("return", None)
    # get_type_hints reads __annotations__ and __globals__ from any object: give it the parameters only.
    shim = types.SimpleNamespace(__annotations__=raw, __globals__=getattr(fn, "__globals__", {}))
    try:
        return get_type_hints(shim, include_extras=True)
    except Exception as exc:
        raise ToolError(f"cannot read the type hints of tool '{name}': {exc}") from None


def _args_model_from_signature(fn: Callable[..., Any], name: str, arg_docs: dict[str, str]) -> type[BaseModel]:
    sig = inspect.signature(fn)
    hints = _parameter_hints(fn, name)
    fields: dict[str, Any] = {}
    for pname, param in sig.parameters.items():
        if pname in ("self", "cls"):
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ToolError(f"tool '{name}' takes *{pname}; tools need named, typed parameters")
        if pname not in hints:
            raise ToolError(
                f"parameter '{pname}' of tool '{name}' has no type hint; add one (e.g. '{pname}: str') "
                "so hanlin can build its JSON Schema"
            )
        default = ... if param.default is param.empty else param.default
        fields[pname] = (hints[pname], Field(default, description=arg_docs.get(pname) or None))
    model_name = "".join(part.capitalize() for part in re.split(r"[_\-]", name)) + "Args"
    return create_model(model_name, __config__=ConfigDict(extra="forbid"), **fields)


def tool(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = DEFAULT_TIMEOUT_S,
) -> Any:
    """Turn a typed function (sync or async) into a ``Tool``.

    Usable bare (``@tool``) or with options (``@tool(name="add", timeout=5)``).
    Inside a ``Toolkit`` class it marks a method; the toolkit binds it per instance.
    """

    def decorate(f: Callable[..., Any]) -> Any:
        params = list(inspect.signature(f).parameters)
        if params and params[0] == "self":
            f.__hanlin_tool__ = {"name": name, "description": description, "timeout": timeout}  # type: ignore[attr-defined]
            return f
        return Tool(f, name=name, description=description, timeout=timeout)

    return decorate(fn) if fn is not None else decorate


class Toolkit:
    """A class whose ``@tool`` methods become several tools sharing state (a session, a workspace)."""

    def tools(self) -> list[Tool]:
        found = []
        for attr in dir(type(self)):
            method = getattr(type(self), attr, None)
            options = getattr(method, "__hanlin_tool__", None)
            if options is None:
                continue
            bound = getattr(self, attr)
            made = Tool(bound, **options)
            made.toolkit = self
            found.append(made)
        return found

    def end_session(self, session_id: str | None) -> None:
        """Drop what one agent session holds (its kernel); ``None``: every session. Agents call this when a
        session is reset and when a run without a ``session_id`` ends."""

    def close(self) -> None:
        """Release everything the toolkit holds (processes, files). Called by ``Agent.close()``."""


def as_tools(items: Any) -> list[Tool]:
    """Flatten Tools, Toolkits, plain functions, registered tool names and lists of them into a list of Tools.

    A name ("calculator") is loaded through the plugin manager with its default configuration; an unknown name is a
    ConfigurationError that lists the known ones.
    """
    if items is None:
        return []
    if isinstance(items, (Tool, Toolkit, str)) or callable(items) and not isinstance(items, type):
        items = [items]
    out: list[Tool] = []
    for item in items:
        if isinstance(item, str):
            from hanlin.loading import load_tools  # lazy: loading imports this module

            out.extend(load_tools([item]))
        elif isinstance(item, Tool):
            out.append(item)
        elif isinstance(item, Toolkit):
            out.extend(item.tools())
        elif isinstance(item, (list, tuple)):
            out.extend(as_tools(item))
        elif callable(item):
            out.append(Tool(item))
        else:
            raise ToolError(
                f"expected a Tool, a Toolkit, a typed function or a tool name, got {type(item).__name__}: {item!r}"
            )
    names = [t.name for t in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ToolError(f"two tools share the name(s) {dupes}; give one of them another name with @tool(name=...)")
    return out
