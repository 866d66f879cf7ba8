"""A forced tool call as one constrained JSON object: the schema that forces it and the reader that gets it back.

When a caller says "you must call a tool" (OpenAI's ``tool_choice`` ``"required"`` or a named function) and the
model cannot be made to call natively, hanlin constrains its whole reply to ``{"name": ..., "arguments": {...}}``
over the allowed tools and turns that JSON back into a ``ToolCall``. The server and the LangChain chat model both do
this, so it lives here, in the sdk, where both may import it (the sdk never imports plugins or runtimes).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from hanlin.messages import ToolCall


def _function(spec: dict[str, Any]) -> dict[str, Any]:
    """The function part of an OpenAI tool spec (``{"type": "function", "function": {...}}``)."""
    return spec["function"]


def call_schema(specs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """JSON schema of ``{"name": ..., "arguments": {...}}`` over the given tools (OpenAI function specs)."""
    options = [{
        "type": "object",
        "properties": {"name": {"const": _function(s)["name"]},
                       "arguments": _function(s).get("parameters") or {"type": "object"}},
        "required": ["name", "arguments"],
    } for s in specs]
    return options[0] if len(options) == 1 else {"anyOf": options}


def parse_forced_call(text: str, specs: Sequence[dict[str, Any]] = ()) -> ToolCall | None:
    """The call a forced, constrained answer encodes, or None when the text is not one.

    None covers a call cut short by max_tokens (not valid JSON) and a model that did not honour the constraint
    (a remote endpoint may ignore it): JSON of another shape, or naming a tool outside ``specs`` when they are
    given. The caller then shows the text as it is rather than inventing a call.
    """
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None
    if not (isinstance(data, dict) and isinstance(data.get("name"), str) and isinstance(data.get("arguments"), dict)):
        return None
    if specs and data["name"] not in {_function(s)["name"] for s in specs}:
        return None
    return ToolCall(name=data["name"], arguments=data["arguments"])
