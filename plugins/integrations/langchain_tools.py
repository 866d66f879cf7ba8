"""hanlin tools and LangChain tools, each usable as the other.

``to_langchain_tool`` wraps a hanlin ``Tool`` as a LangChain ``BaseTool``: the tool's pydantic arguments model
becomes its ``args_schema`` (so LangChain sees exactly the schema hanlin's own agents see), and runs go through
``Tool.invoke`` / ``Tool.ainvoke`` so hanlin's validation, timeout and error handling still apply.

``from_langchain_tool`` wraps any LangChain ``BaseTool`` (``@tool`` functions, ``StructuredTool``, subclasses)
as a hanlin ``Tool`` with the same name, description and argument schema, sync and async.

Error semantics, hanlin -> LangChain: a hanlin call that fails comes back as an error ``ToolResult``; the
wrapper raises it as a ``ToolException``, and LangChain's ``handle_tool_error`` decides what the caller gets.
The wrapper sets ``handle_tool_error=True`` by default, so the error text becomes the tool's output (a
``ToolMessage`` with ``status="error"`` when invoked with a tool call): that keeps hanlin's rule that a tool
failure is an observation for the model, not a crash. Pass ``handle_tool_error=False`` to get the exception.

This module imports langchain_core at the top: it is not a built-in plugin, users import it on purpose
(through ``hanlin.plugins.integrations.langchain``), and a missing langchain-core gives an error naming the extra.
"""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field, RootModel, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from hanlin.errors import ConfigurationError, PluginError, ToolError, ToolInputError
from hanlin.forced_calls import call_schema, parse_forced_call  # noqa: F401  (HanlinChatModel imports them from here)
from hanlin.tools import DEFAULT_TIMEOUT_S, Tool, Toolkit, ToolResult

INSTALL_HINT = "pip install 'hanlin[langchain]'"


class LangChainNotInstalledError(PluginError, ImportError):
    """langchain-core is missing; the message names the extra that provides it."""


try:
    from langchain_core.messages import ToolMessage
    from langchain_core.tools import BaseTool, StructuredTool, ToolException
    from langchain_core.tools import Tool as SimpleLangChainTool
    from langchain_core.utils.function_calling import convert_to_openai_function, convert_to_openai_tool
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise LangChainNotInstalledError(
        f"hanlin's LangChain integration needs langchain-core ({exc}): {INSTALL_HINT}"
    ) from None


# ---- hanlin -> LangChain ---------------------------------------------------------------------------
def validation_explainer(name: str) -> Callable[[Any], str]:
    """A ``handle_validation_error`` hook for tool ``name``: say which argument was wrong and how, in the words
    hanlin's own agents use, so the model can correct its call."""

    def explain(exc: Any) -> str:
        if isinstance(exc, ValidationError):
            problems = [f"{'.'.join(str(p) for p in e['loc']) or '(arguments)'}: {e['msg']}" for e in exc.errors()]
            return f"invalid arguments for tool '{name}': " + "; ".join(problems)
        return f"invalid arguments for tool '{name}': {exc}"

    return explain


class HanlinLangChainTool(BaseTool):
    """A hanlin ``Tool`` seen by LangChain.

    ``response_format`` is ``content_and_artifact``: invoked with a tool call, LangChain returns a
    ``ToolMessage`` whose ``content`` is the text the model reads and whose ``artifact`` is the hanlin
    ``ToolResult`` (raw return value in ``.data``, produced files in ``.artifacts``).
    """

    hanlin_tool: Any = Field(default=None, exclude=True, repr=False)
    response_format: Literal["content", "content_and_artifact"] = "content_and_artifact"
    handle_tool_error: bool | str | Callable[[ToolException], Any] | None = True
    handle_validation_error: bool | str | Callable[[Any], str] | None = True

    def _run(self, run_manager: Any = None, **kwargs: Any) -> tuple[str, ToolResult]:
        return _unpack(self.hanlin_tool.invoke(kwargs))

    async def _arun(self, run_manager: Any = None, **kwargs: Any) -> tuple[str, ToolResult]:
        return _unpack(await self.hanlin_tool.ainvoke(kwargs))


def _unpack(result: ToolResult) -> tuple[str, ToolResult]:
    if result.is_error:
        raise ToolException(result.content)
    return result.content, result


def _has_plain_args_model(tool: Tool) -> bool:
    """True when ``tool.parameters`` is just the arguments model's schema (not an override, as MCP tools have)."""
    return type(tool).parameters is Tool.parameters and not issubclass(tool.args_model, RootModel)


def to_langchain_tool(tool: Tool, **options: Any) -> HanlinLangChainTool:
    """A hanlin ``Tool`` as a LangChain ``BaseTool``.

    The pydantic arguments model is the ``args_schema`` when the tool has one of its own (every ``@tool``
    function); tools that publish a JSON schema instead (MCP tools, converted LangChain tools) pass that
    schema as a dict. ``options`` are ``BaseTool`` fields (``handle_tool_error``, ``return_direct``, ``tags``...).
    """
    if not isinstance(tool, Tool):
        raise ToolError(
            f"to_langchain_tool takes a hanlin Tool, got {type(tool).__name__}: {tool!r}; "
            "make one with @hanlin.tool, or use hanlin.tools.as_tools for toolkits and functions"
        )
    schema: Any = tool.args_model if _has_plain_args_model(tool) else tool.parameters
    options.setdefault("handle_validation_error", validation_explainer(tool.name))
    return HanlinLangChainTool(name=tool.name, description=tool.description, args_schema=schema,
                               hanlin_tool=tool, **options)


# ---- LangChain -> hanlin ---------------------------------------------------------------------------
class _Arguments(RootModel[dict[str, Any]]):
    """Any JSON object: the real checks happen in ``LangChainTool.validate`` against the LangChain schema."""


def _normalized(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema as hanlin's own tools publish it: no titles at the top or on properties, and no top-level
    description (LangChain copies the tool's description or docstring there; it belongs to the tool)."""
    out = copy.deepcopy(schema)
    out.pop("title", None)
    out.pop("description", None)
    for prop in out.get("properties", {}).values():
        if isinstance(prop, dict):
            prop.pop("title", None)
    out.setdefault("type", "object")
    out.setdefault("properties", {})
    return out


def _pydantic_fields(model: Any) -> set[str] | None:
    fields = getattr(model, "model_fields", None)  # pydantic v2
    if fields is None:
        fields = getattr(model, "__fields__", None)  # pydantic.v1 models
    return set(fields) if fields is not None else None


def _schema_source(lc_tool: BaseTool) -> tuple[dict[str, Any], type[BaseModel] | None]:
    """The JSON schema of the arguments a model must produce, and the pydantic model to check them with.

    ``args_schema`` is preferred: LangChain's ``tool_call_schema`` is a rebuilt subset model that drops
    settings such as ``extra="forbid"``; it is used only when it differs (injected arguments left out).
    """
    if isinstance(lc_tool, SimpleLangChainTool) and not lc_tool.args_schema:  # a legacy single-string tool
        return _normalized(convert_to_openai_function(lc_tool)["parameters"]), None
    call_schema = lc_tool.tool_call_schema
    if isinstance(call_schema, dict):
        return _normalized(call_schema), None
    args = lc_tool.args_schema
    source = args if isinstance(args, type) and _pydantic_fields(args) == _pydantic_fields(call_schema) else call_schema
    if hasattr(source, "model_json_schema"):
        return _normalized(source.model_json_schema()), source
    return _normalized(source.schema()), None  # a pydantic.v1 model: LangChain itself validates the call


def _json_schema_errors(name: str, schema: dict[str, Any], arguments: dict[str, Any]) -> ValidationError | None:
    """Check arguments against a plain JSON schema with jsonschema when it is installed (else LangChain's tool
    judges them itself); return the problems as a pydantic ValidationError, the type hanlin's agent expects."""
    try:
        from jsonschema import validators
        from jsonschema.exceptions import SchemaError
    except ImportError:
        return None
    cls = validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except SchemaError:
        return None
    errors = sorted(cls(schema).iter_errors(arguments), key=lambda e: [str(p) for p in e.absolute_path])
    if not errors:
        return None
    details = [
        InitErrorDetails(type=PydanticCustomError("json_schema", e.message), loc=tuple(e.absolute_path), input=e.instance)
        for e in errors[:5]
    ]
    return ValidationError.from_exception_data(name, details)


def _tool_call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_call", "name": name, "args": dict(arguments), "id": "call_" + uuid.uuid4().hex[:12]}


def content_text(content: Any) -> str:
    """A ToolMessage's content as text: strings as they are, text blocks joined, other blocks described."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict) and block.get("type") == "text":
                parts.append(str(block.get("text", "")))
            elif isinstance(block, dict):
                parts.append(f"[{block.get('type', 'unknown')} content]")
        return "\n".join(parts)
    return str(content)


def _to_result(output: Any) -> ToolResult:
    if isinstance(output, ToolMessage):
        text = content_text(output.content)
        artifact = output.artifact
        if isinstance(artifact, ToolResult):  # a hanlin tool behind LangChain: keep its files and raw value
            return ToolResult(content=text, is_error=output.status == "error", artifacts=artifact.artifacts,
                              data=artifact.data)
        data = artifact if artifact is not None else output.content
        return ToolResult(content=text, is_error=output.status == "error", data=data)
    if isinstance(output, ToolResult):
        return output
    text = output if isinstance(output, str) else json.dumps(output, ensure_ascii=False, default=str)
    return ToolResult(content=text, data=output)


class LangChainTool(Tool):
    """A LangChain tool seen by hanlin: same name, description and argument schema; ``invoke`` runs the
    LangChain tool's sync path and ``ainvoke`` its async path, each under hanlin's timeout.

    A ``ToolException`` from the tool (one its ``handle_tool_error`` does not turn into output) becomes an
    error observation with the exception's message; an error ``ToolMessage`` keeps its text and is marked
    ``is_error``. Arguments LangChain injects at run time (``InjectedToolArg``) are not in the schema; the
    call id is filled in, others (LangGraph state) are not available outside LangGraph.
    """

    def __init__(self, lc_tool: BaseTool, *, name: str | None = None, timeout: float | None = DEFAULT_TIMEOUT_S) -> None:
        self.lc_tool = lc_tool
        self.input_schema, self._checker = _schema_source(lc_tool)
        tool_name = name or lc_tool.name

        def call(root: dict[str, Any]) -> ToolResult:
            try:
                return _to_result(lc_tool.invoke(_tool_call(lc_tool.name, root)))
            except ToolException as exc:
                raise ToolInputError(str(exc) or type(exc).__name__) from None

        call.__doc__ = None  # the description comes from the LangChain tool, not from this closure
        try:
            super().__init__(call, name=tool_name, description=lc_tool.description or "", args_model=_Arguments,
                             timeout=timeout)
        except ToolError as exc:
            raise ToolError(f"{exc} (LangChain tool {lc_tool.name!r}: pass name=... to from_langchain_tool)") from None
        # A tool with only a coroutine (``@tool async def``) has no sync path in LangChain: hanlin's sync
        # ``invoke`` then drives ``ainvoke`` on an event loop of its own.
        self.is_async = _async_only(lc_tool)

    @property
    def parameters(self) -> dict[str, Any]:
        return copy.deepcopy(self.input_schema)

    def validate(self, arguments: dict[str, Any] | str | None) -> BaseModel:
        """Check arguments against the LangChain tool's schema (its pydantic model, or the JSON schema)."""
        if arguments is None:
            arguments = {}
        if isinstance(arguments, str):
            arguments = json.loads(arguments) if arguments.strip() else {}
        if self._checker is not None:
            self._checker.model_validate(arguments)  # raises ValidationError naming the bad fields
        elif isinstance(arguments, dict) and (problem := _json_schema_errors(self.name, self.input_schema, arguments)):
            raise problem
        return _Arguments.model_validate(arguments)

    async def ainvoke(self, arguments: dict[str, Any] | str | None = None) -> ToolResult:
        kwargs = self._prepare(arguments)
        if isinstance(kwargs, ToolResult):
            return kwargs
        try:
            output = await asyncio.wait_for(self.lc_tool.ainvoke(_tool_call(self.lc_tool.name, kwargs["root"])),
                                            timeout=self.timeout)
            return _to_result(output)
        except TimeoutError:
            return self._timeout_result()
        except ToolException as exc:
            return ToolResult.error(f"{self.name}: {exc}")
        except Exception as exc:
            return self._failure(exc)


def _async_only(lc_tool: BaseTool) -> bool:
    return isinstance(lc_tool, StructuredTool) and lc_tool.func is None and lc_tool.coroutine is not None


def from_langchain_tool(lc_tool: BaseTool, *, name: str | None = None,
                        timeout: float | None = DEFAULT_TIMEOUT_S) -> LangChainTool:
    """A LangChain ``BaseTool`` (``@tool`` function, ``StructuredTool``, subclass) as a hanlin ``Tool``."""
    if not isinstance(lc_tool, BaseTool):
        hint = " (for a plain function use @hanlin.tool)" if callable(lc_tool) else ""
        raise ToolError(
            f"from_langchain_tool takes a LangChain BaseTool, e.g. a function decorated with "
            f"langchain_core.tools.tool; got {type(lc_tool).__name__}: {lc_tool!r}{hint}"
        )
    return LangChainTool(lc_tool, name=name, timeout=timeout)


# ---- tool specs for chat models (HanlinChatModel.bind_tools) ---------------------------------------
def to_tool_spec(item: Any) -> dict[str, Any]:
    """One tool as the OpenAI-style function spec hanlin runtimes take (``GenerationParams.tools``).

    hanlin Tools keep their own schema; LangChain tools are read the way ``from_langchain_tool`` reads them;
    pydantic classes, TypedDicts, functions and dicts go through LangChain's ``convert_to_openai_tool``.
    """
    if isinstance(item, Tool):
        return item.to_openai()
    if isinstance(item, HanlinLangChainTool):
        return item.hanlin_tool.to_openai()
    if isinstance(item, BaseTool):
        return from_langchain_tool(item).to_openai()
    spec = convert_to_openai_tool(item)
    if spec.get("type") != "function":
        raise ConfigurationError(
            f"hanlin models call functions only; {spec.get('type')!r} tools (provider built-ins) are not supported: {item!r}"
        )
    function = dict(spec["function"])
    function.setdefault("description", "")
    function.setdefault("parameters", {"type": "object", "properties": {}})
    return {"type": "function", "function": function}


def to_tool_specs(tools: Sequence[Any]) -> list[dict[str, Any]]:
    items: list[Any] = []
    for item in tools:
        items.extend(item.tools() if isinstance(item, Toolkit) else [item])
    specs: dict[str, dict[str, Any]] = {}
    for spec in map(to_tool_spec, items):
        name = spec["function"]["name"]
        if name in specs and _untitled(specs[name]) != _untitled(spec):
            raise ConfigurationError(f"two different bound tools are both named '{name}'; rename one of them")
        specs.setdefault(name, spec)  # the same tool given twice (a pydantic class and its JSON schema) is one tool
    return list(specs.values())


def _untitled(value: Any, parent: str = "") -> Any:
    """A schema without its ``title`` keywords (decoration only), for comparing two specs of one tool."""
    if isinstance(value, dict):
        return {k: _untitled(v, k) for k, v in value.items() if not (k == "title" and parent != "properties")}
    if isinstance(value, list):
        return [_untitled(v) for v in value]
    return value


def normalize_tool_choice(choice: Any, names: Sequence[str]) -> str | dict[str, Any]:
    """LangChain's spellings of tool_choice in OpenAI form: "auto", "none", "required" or a named function."""
    if choice is None or choice == "auto":
        return "auto"
    if choice == "none":
        return "none"
    if choice in ("any", "required") or choice is True:
        return "required"
    if isinstance(choice, str):
        name = choice
    elif isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") or choice.get("name")
    else:
        name = None
    if not name:
        raise ConfigurationError(
            f"tool_choice must be 'auto', 'none', 'any'/'required', a tool name or {{'type': 'function', "
            f"'function': {{'name': ...}}}}, got {choice!r}"
        )
    if name not in names:
        raise ConfigurationError(f"tool_choice names '{name}', which is not among the bound tools {list(names)}")
    return {"type": "function", "function": {"name": name}}
