"""Render messages into a model's prompt text, and read tool calls back out of its output.

The runtimes that own their tokenisation (llama.cpp, transformers, gpu)
render the chat template themselves so the prompt tokens, and so prefix
reuse, are under their control. Base models without a template get a plain
completion layout.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from hanlin import Message, ModelError
from hanlin.runtimes.tool_calls import FORMATS, CallFormat


def template_messages(
    messages: Sequence[Message],
    *,
    tool_roles: bool = True,
    call_format: CallFormat | None = None,
    tools: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Messages as the dicts HF/GGUF chat templates expect (tool call arguments as objects).

    ``tool_roles=False`` is for templates that know nothing of tools (SmolLM2's): they would print a
    call as an empty assistant turn and a result under a 'tool' role the model never saw in training,
    so calls are written into the assistant text in ``call_format`` (hermes by default) and results
    become user turns instead. With ``tools`` offered to such a template, the format's instructions
    (the function list and how to call) open the system message, so any chat model can call tools.
    """
    fmt = call_format or FORMATS["hermes"]
    out: list[dict[str, Any]] = []
    for m in messages:
        if not tool_roles and m.role == "tool":
            out.append({"role": "user", "content": fmt.render_result(m.name, m.content, m.is_error)})
            continue
        item: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.tool_calls and not tool_roles:
            written = fmt.render_calls(m.tool_calls)
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
    if tools and not tool_roles:
        guide = fmt.instructions(tools)
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{guide}"}
        else:
            out.insert(0, {"role": "system", "content": guide})
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
    call_format: CallFormat | None = None,
) -> str:
    """Apply a Jinja chat template, ending with the assistant's generation prompt.

    A template that renders tools gets ``tools`` itself; one that does not gets them as instructions in the
    system message (see ``template_messages``)."""
    knows = template_knows_tools(template)
    try:
        return _compile(template).render(
            messages=template_messages(messages, tool_roles=knows, call_format=call_format, tools=tools),
            tools=tools if knows else None,
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
