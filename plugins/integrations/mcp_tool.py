"""One MCP tool as a hanlin Tool: the server's inputSchema kept verbatim as the tool's JSON schema, arguments
validated against it (jsonschema) before they cross the pipe, and MCP call results turned into ToolResults."""

from __future__ import annotations

import copy
import json
import logging
import re
from typing import TYPE_CHECKING, Any

from pydantic import RootModel, model_validator
from pydantic_core import PydanticCustomError

from hanlin.tools import Tool, ToolResult

if TYPE_CHECKING:
    from hanlin.plugins.integrations.mcp_client import McpToolkit

logger = logging.getLogger(__name__)
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]")


# ---- one MCP tool as a hanlin Tool ------------------------------------------------------------------
def _schema_validator(name: str, schema: dict[str, Any]) -> Any:
    """A jsonschema validator for the tool's inputSchema, or None if the server sent a schema that is itself
    invalid (then the server, which wrote it, is left to judge the arguments)."""
    from jsonschema import Draft202012Validator, validators
    from jsonschema.exceptions import SchemaError

    cls = validators.validator_for(schema, default=Draft202012Validator)  # MCP's default dialect is 2020-12
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        logger.warning("MCP tool %r has an invalid inputSchema (%s); the server will check its arguments", name, exc.message)
        return None
    return cls(schema)


def _arguments_model(name: str, schema: dict[str, Any]) -> type[RootModel[dict[str, Any]]]:
    """A pydantic model that accepts exactly the objects the JSON schema accepts, so hanlin's own checks
    (``Tool.validate``, the agent's pre-call check) report schema violations as ValidationErrors."""
    from jsonschema.exceptions import best_match

    validator = _schema_validator(name, schema)

    class McpArguments(RootModel[dict[str, Any]]):
        @model_validator(mode="after")
        def _matches_schema(self) -> McpArguments:
            if validator is None:
                return self
            # best_match looks inside anyOf/oneOf for the branch that nearly matched ("tags.1: 5 is not of
            # type 'string'" rather than "tags: [...] is not valid under any of the given schemas")
            errors = sorted((best_match([e]) for e in validator.iter_errors(self.root)),
                            key=lambda e: [str(p) for p in e.absolute_path])
            if errors:
                problems = [
                    (f"{'.'.join(str(p) for p in e.absolute_path)}: " if e.absolute_path else "") + e.message
                    for e in errors[:5]
                ]
                raise PydanticCustomError("json_schema", "{problems}", {"problems": "; ".join(problems)})
            return self

        @classmethod
        def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
            return copy.deepcopy(schema)

    return McpArguments


class McpTool(Tool):
    """A tool of an MCP server: its name (made hanlin-safe), description and inputSchema as the server sent them."""

    def __init__(self, toolkit: McpToolkit, remote_name: str, name: str, description: str,
                 schema: dict[str, Any], timeout: float | None) -> None:
        self.remote_name = remote_name
        self.input_schema = schema

        async def call(root: dict[str, Any]) -> ToolResult:  # `root`: the field of the RootModel above
            return await toolkit.acall(self, root)

        super().__init__(call, name=name, description=description, args_model=_arguments_model(name, schema),
                         timeout=timeout)
        self.toolkit = toolkit

    @property
    def parameters(self) -> dict[str, Any]:
        return copy.deepcopy(self.input_schema)


def _hanlin_name(name: str) -> str:
    """MCP allows dots and 128 characters; hanlin names are letters, digits, '_' and '-', at most 64."""
    safe = _UNSAFE.sub("_", name)
    if not safe or not (safe[0].isalpha() or safe[0] == "_"):
        safe = "t_" + safe
    return safe[:64]


def _b64_size(data: str) -> int:
    return len(data) * 3 // 4 - data[-2:].count("=") if data else 0


def _describe(block: Any) -> str:
    """One content block as text the model can read: text as is, everything else described."""
    kind = getattr(block, "type", "?")
    if kind == "text":
        return block.text
    if kind in ("image", "audio"):
        return f"[{kind}: {block.mime_type}, {_b64_size(block.data)} bytes]"
    if kind == "resource":
        res = block.resource
        mime = f" ({res.mime_type})" if getattr(res, "mime_type", None) else ""
        text = getattr(res, "text", None)
        if text is not None:
            return f"[resource {res.uri}{mime}]\n{text}"
        return f"[resource {res.uri}{mime}: {_b64_size(getattr(res, 'blob', ''))} bytes of binary data]"
    if kind == "resource_link":
        about = f" {block.name}" + (f": {block.description}" if getattr(block, "description", None) else "")
        return f"[resource link {block.uri}{about}]"
    return f"[{kind} content]"


def to_tool_result(name: str, result: Any) -> ToolResult:
    """An MCP ``CallToolResult`` as a ToolResult: text joined, other content described, isError kept."""
    text = "\n".join(_describe(block) for block in result.content)
    structured = getattr(result, "structured_content", None)
    if not text and structured is not None:
        text = json.dumps(structured, ensure_ascii=False, default=str)
    if result.is_error:
        return ToolResult(content=f"tool '{name}' failed on the MCP server: {text or '(no message)'}", is_error=True,
                          data=result)
    return ToolResult(content=text, data=structured if structured is not None else result)
