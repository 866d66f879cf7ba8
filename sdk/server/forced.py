"""How a chat request's tools, tool_choice and response_format are served by a given model.

Three ways, chosen per request: the runtime calls tools natively (it reads its model's call formats and, where it
can, forces a call with its own grammar); or a forced call (``required`` or a named function) is served as one
JSON object under constrained decoding (``hanlin.forced_calls``) and read back as the call; or the request asks for
something the model cannot do, which is a 400 that says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hanlin.chat_model import ChatModel, Constraint, Completion
from hanlin.forced_calls import call_schema, parse_forced_call
from hanlin.messages import ToolCall
from hanlin.server.errors import APIError
from hanlin.server.schema import ChatRequest


def response_constraint(req: ChatRequest, model: ChatModel) -> Constraint | None:
    """The constraint ``response_format`` asks for, refused (400) when the model cannot decode under it."""
    fmt = req.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        constraint = Constraint(json_schema={"type": "object"})
    else:
        schema = (fmt.json_schema or {}).get("schema")
        if not isinstance(schema, dict):
            raise APIError(400, "response_format json_schema needs json_schema.schema (an object)", param="response_format")
        constraint = Constraint(json_schema=schema)
    if not model.supports(constraint):
        raise APIError(400, f"model '{model.name}' cannot constrain its output, so response_format is unsupported",
                       param="response_format", code="unsupported_parameter")
    return constraint


def forced_tools(specs: list[dict[str, Any]] | None, choice: str | dict[str, Any] | None) -> list[dict[str, Any]] | None:
    """The tools ``tool_choice`` forces a call to (None when the model may answer in text). The request schema has
    already checked both shapes; what is left is a named function that is not among the tools."""
    if not specs or choice in (None, "auto", "none"):
        return None
    if choice == "required":
        return specs
    name = choice["function"]["name"] if isinstance(choice, dict) else None
    chosen = [t for t in specs if t["function"]["name"] == name]
    if not chosen:
        offered = [t["function"]["name"] for t in specs]
        raise APIError(400, f"tool_choice names {name!r}, which is not in tools {offered}; name one of them",
                       param="tool_choice")
    return chosen


@dataclass(frozen=True, slots=True)
class ToolPlan:
    """What goes to the runtime (constraint, native tools and choice), and the tools of a forced JSON call, if any."""

    constraint: Constraint | None
    tools: list[dict[str, Any]] | None
    tool_choice: str | dict[str, Any] | None
    forced_json: list[dict[str, Any]] | None  # set when the reply is a forced call's JSON, to be read back

    def calls(self, completion: Completion) -> tuple[str, list[ToolCall]]:
        """The reply's text and calls. A forced call's JSON becomes its call; JSON that is not one (cut short by
        max_tokens, or a remote model that ignored the constraint) stays visible as text."""
        if self.forced_json is None:
            return completion.text, completion.tool_calls
        call = parse_forced_call(completion.text, self.forced_json)
        return ("", [call]) if call is not None else (completion.text, [])


def plan_tools(req: ChatRequest, model: ChatModel) -> ToolPlan:
    """Choose how this request's tools are served by ``model``, or refuse with a 400 that says why."""
    specs, choice = req.tool_specs(), req.tool_choice_value()
    offered = bool(specs) and choice != "none"
    forced = forced_tools(specs, choice) if offered else None
    constraint = response_constraint(req, model)
    if offered and model.capabilities.native_tools and constraint is None:
        # The runtime reads every call format its model writes; where it can constrain decoding, tool_choice
        # required/named is forced by its call grammar and auto is constrained from the first sign of a call.
        return ToolPlan(constraint, specs, choice, None)
    if forced is not None:
        if not model.supports(Constraint(json_schema={})):
            raise APIError(400, f"model '{model.name}' can neither call tools natively nor constrain its output",
                           param="tool_choice", code="unsupported_parameter")
        if constraint is not None:
            raise APIError(400, "response_format and a forced tool_choice cannot be combined: the reply is either a "
                           "tool call or the formatted answer", param="response_format")
        return ToolPlan(Constraint(json_schema=call_schema(forced)), None, None, forced)  # the call as one JSON object
    if offered:
        if not model.capabilities.native_tools:
            raise APIError(400, f"model '{model.name}' has no native tool calling; use tool_choice 'required' or a "
                           "named function (served with constrained decoding)", param="tools", code="unsupported_parameter")
        return ToolPlan(constraint, specs, None, None)  # with response_format: the answer, or a call anyway
    return ToolPlan(constraint, None, None, None)
