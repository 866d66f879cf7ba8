"""Render messages into a model's prompt text, and read tool calls back out of its output.

The runtimes that own their tokenisation (llama.cpp, transformers, gpu)
render the chat template themselves so the prompt tokens, and so prefix
reuse, are under their control. Base models without a template get a plain
completion layout.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from hanlin import Message, ModelError, ToolCall


def template_messages(messages: Sequence[Message], *, tool_roles: bool = True) -> list[dict[str, Any]]:
    """Messages as the dicts HF/GGUF chat templates expect (tool call arguments as objects).

    ``tool_roles=False`` is for templates that know nothing of tools (SmolLM2's): they would print a
    call as an empty assistant turn and a result under a 'tool' role the model never saw in training,
    so calls are written into the assistant text and results become user turns instead.
    """
    out = []
    for m in messages:
        if not tool_roles and m.role == "tool":
            label = "Tool error" if m.is_error else "Tool result"
            out.append({"role": "user", "content": f"{label} ({m.name or 'tool'}): {m.content}"})
            continue
        item: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.tool_calls and not tool_roles:
            written = "\n".join(f"Tool call: {c.name}({json.dumps(c.arguments, ensure_ascii=False)})" for c in m.tool_calls)
            item["content"] = f"{m.content}\n{written}" if m.content.strip() else written
        elif m.tool_calls:
            item["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in m.tool_calls
            ]
        if m.role == "tool":
            item["tool_call_id"] = m.tool_call_id
            item["name"] = m.name
        out.append(item)
    return out


def template_knows_tools(template: str) -> bool:
    """Whether a chat template renders tool calls and tool results itself (Qwen's does, SmolLM2's does not)."""
    return "tool" in template


@lru_cache(maxsize=8)
def _compile(template: str) -> Any:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ModelError(f"the model's chat template refused the conversation: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda value, indent=None, **_: json.dumps(value, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template)


def render_chat(
    template: str,
    messages: Sequence[Message],
    *,
    bos_token: str = "",
    eos_token: str = "",
    tools: list[dict[str, Any]] | None = None,
) -> str:
    """Apply a Jinja chat template, ending with the assistant's generation prompt."""
    try:
        return _compile(template).render(
            messages=template_messages(messages, tool_roles=template_knows_tools(template)),
            tools=tools,
            add_generation_prompt=True,
            bos_token=bos_token,
            eos_token=eos_token,
        )
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"the model's chat template failed to render: {type(exc).__name__}: {exc}") from None


def render_plain(messages: Sequence[Message]) -> str:
    """A completion layout for base models: the system text, then 'User:'/'Assistant:' turns."""
    parts = []
    for m in messages:
        if m.role == "system":
            parts.append(m.content.strip() + "\n")
        elif m.role == "assistant":
            parts.append(f"Assistant: {m.content.strip()}")
        elif m.role == "tool":
            parts.append(f"Tool result ({m.name}): {m.content.strip()}")
        else:
            parts.append(f"User: {m.content.strip()}")
    parts.append("Assistant:")
    return "\n".join(parts)


_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def parse_hermes_tool_calls(text: str, tools: Sequence[dict[str, Any]] = ()) -> tuple[str, list[ToolCall]]:
    """Split Qwen/Hermes-style output into (text before the calls, calls).

    ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks; a block
    that is not valid JSON is left in the text so nothing the model wrote is lost.
    Small models sometimes drop the tags: a reply that is nothing but such an
    object, naming one of ``tools`` (OpenAI-style specs), counts as a call too.
    """
    tool_names = [t.get("function", t).get("name") for t in tools]
    bare = text.strip()
    if bare.startswith("{") and "<tool_call>" not in bare:
        try:
            data = json.loads(bare)
        except ValueError:
            data = None
        if isinstance(data, dict) and data.get("name") in tool_names and isinstance(data.get("arguments"), dict):
            return "", [ToolCall(name=data["name"], arguments=data["arguments"])]
    calls: list[ToolCall] = []
    kept: list[str] = []
    last = 0
    for match in _HERMES.finditer(text):
        try:
            data = json.loads(match.group(1))
            name = data["name"]
            arguments = data.get("arguments", data.get("parameters", {}))
            if isinstance(arguments, str):
                arguments = json.loads(arguments)
            if not isinstance(name, str) or not isinstance(arguments, dict):
                raise ValueError("bad shape")
        except (ValueError, KeyError, TypeError):
            continue
        kept.append(text[last : match.start()])
        last = match.end()
        calls.append(ToolCall(name=name, arguments=arguments))
    kept.append(text[last:])
    return "".join(kept).strip() if calls else text, calls
