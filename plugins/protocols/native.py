"""Native tool calling: the runtime returns structured tool calls (OpenAI style).

The transcript is sent as it is, tools go in the request's ``tools`` field, and
the runtime's own chat template and parser do the formatting. Only models whose
runtime declares ``native_tools`` can use it.
"""

from __future__ import annotations

import json
from typing import Any

from hanlin import ChatModel, Completion, Message, ParseError, ProtocolError, StepProtocol, hookimpl
from hanlin.protocols import Action, Final, ParsedStep, RunContext


class NativeTools(StepProtocol):
    name = "tools"

    def check_model(self, model: ChatModel) -> None:
        if not model.capabilities.native_tools:
            raise ProtocolError(
                f"model '{model.name}' does not produce native tool calls; use protocol='react' "
                "(works with any model) or a runtime/model with a tool-calling chat template"
            )

    def render(self, ctx: RunContext) -> list[Message]:
        system = ctx.options.instructions or "You are a helpful assistant. Use the tools when they help."
        if ctx.options.output_type is not None:
            system += "\nGive your final answer as a JSON object matching this schema: " + json.dumps(ctx.output_schema())
        return [Message.system(system), *(m for m in ctx.messages if m.role != "system")]

    def native_tools(self, ctx: RunContext) -> list[dict[str, Any]] | None:
        if ctx.repeated:  # stuck re-issuing the previous step's call: no tools offered, so the model answers
            return None
        return [t.to_openai() for t in ctx.tools.values()] or None

    def parse(self, completion: Completion, ctx: RunContext) -> ParsedStep:
        if completion.tool_calls:
            return Action(list(completion.tool_calls), thought=completion.text.strip())
        if not completion.text.strip():
            raise ParseError(
                "the model returned neither text nor tool calls",
                hint="Either call one of the tools or write your final answer.",
            )
        return Final(completion.text.strip())

    def assistant_message(self, completion: Completion, parsed: ParsedStep | None) -> Message:
        return Message.assistant(completion.text, completion.tool_calls)


@hookimpl
def register_protocols(register: Any) -> None:
    register(NativeTools)
