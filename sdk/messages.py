"""The one message schema that flows through hanlin.

An agent trace, a fine-tuning sample, an evaluation prompt and a server
request are all lists of ``Message``. OpenAI's chat format is the wire format,
so conversion to and from it lives here, next to the schema.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, Field

from hanlin.errors import ConfigurationError

Role = Literal["system", "user", "assistant", "tool"]


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:12]


class ToolCall(BaseModel):
    """A request from the model to run one tool with JSON arguments."""

    id: str = Field(default_factory=new_call_id)
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)

    def to_openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": json.dumps(self.arguments, ensure_ascii=False)},
        }

    @classmethod
    def from_openai(cls, data: Mapping[str, Any]) -> ToolCall:
        """A call in OpenAI's shape (or the flat ``{"name", "arguments"}``); anything else is a ConfigurationError
        that says what was wrong, since this reads what clients and traces send."""
        if not isinstance(data, Mapping):
            raise ConfigurationError(f"a tool call must be an object like {{'id', 'type': 'function', 'function': "
                                     f"{{'name', 'arguments'}}}}, got {type(data).__name__}: {data!r}")
        fn = data.get("function") or {}
        if not isinstance(fn, Mapping):
            raise ConfigurationError(f"a tool call's 'function' must be an object with 'name' and 'arguments', got {fn!r}")
        raw = fn.get("arguments", data.get("arguments", {}))
        if isinstance(raw, str):
            try:
                raw = json.loads(raw) if raw.strip() else {}
            except json.JSONDecodeError as exc:
                raise ConfigurationError(
                    f"tool call {fn.get('name')!r} has arguments that are not valid JSON: {raw!r} ({exc})"
                ) from None
        if not isinstance(raw, dict):
            raise ConfigurationError(f"tool call arguments must be a JSON object, got {raw!r}")
        name = fn.get("name", data.get("name"))
        if not name or not isinstance(name, str):
            raise ConfigurationError(f"tool call has no function name (a non-empty string): {dict(data)!r}")
        call_id = data.get("id") or new_call_id()
        if not isinstance(call_id, str):
            raise ConfigurationError(f"a tool call's 'id' must be a string, got {call_id!r}")
        return cls(id=call_id, name=name, arguments=raw)


class Usage(BaseModel):
    """Token counts of one model call, or summed over a run.

    ``prompt_tokens_evaluated`` and ``prompt_tokens_reused`` split the prompt
    into the part the runtime computed and the part it took from its KV cache;
    runtimes without a cache report everything as evaluated.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_tokens_evaluated: int | None = None
    prompt_tokens_reused: int | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        def add(a: int | None, b: int | None) -> int | None:
            return None if a is None and b is None else (a or 0) + (b or 0)

        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            prompt_tokens_evaluated=add(self.prompt_tokens_evaluated, other.prompt_tokens_evaluated),
            prompt_tokens_reused=add(self.prompt_tokens_reused, other.prompt_tokens_reused),
        )


class Message(BaseModel):
    """One turn of a conversation.

    ``content`` of an assistant turn keeps the model's raw text (a ReAct step
    with its Thought, say) while ``tool_calls`` holds what it asked for, so a
    trace can be re-rendered for any protocol. A ``tool`` turn answers one call
    through ``tool_call_id``; ``is_error`` marks a failed call.
    """

    role: Role
    content: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    tool_call_id: str | None = None
    name: str | None = None
    is_error: bool = False

    @classmethod
    def system(cls, content: str) -> Message:
        return cls(role="system", content=content)

    @classmethod
    def user(cls, content: str) -> Message:
        return cls(role="user", content=content)

    @classmethod
    def assistant(cls, content: str = "", tool_calls: Iterable[ToolCall] = ()) -> Message:
        return cls(role="assistant", content=content, tool_calls=list(tool_calls))

    @classmethod
    def tool(cls, content: str, *, tool_call_id: str | None, name: str | None, is_error: bool = False) -> Message:
        return cls(role="tool", content=content, tool_call_id=tool_call_id, name=name, is_error=is_error)

    def to_openai(self) -> dict[str, Any]:
        """This message in OpenAI chat format (``is_error`` has no place there and is dropped)."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [c.to_openai() for c in self.tool_calls]
        if self.role == "tool":
            out["tool_call_id"] = self.tool_call_id
        if self.name is not None and self.role != "tool":
            out["name"] = self.name
        return out

    @classmethod
    def from_openai(cls, data: Mapping[str, Any]) -> Message:
        if not isinstance(data, Mapping):
            raise ConfigurationError(f"a message must be a Message or a dict, got {type(data).__name__}: {data!r}")
        role = data.get("role")
        if role == "developer":  # OpenAI's newer name for the system role
            role = "system"
        if role not in ("system", "user", "assistant", "tool"):
            raise ConfigurationError(
                f"message role must be one of system/user/assistant/tool, got {role!r} in {dict(data)!r}"
            )
        content = data.get("content")
        if content is None:
            content = ""
        elif isinstance(content, list):  # OpenAI content parts: keep the text parts
            content = _text_of_parts(content)
        if not isinstance(content, str):
            raise ConfigurationError(f"message content must be a string or a list of parts, got {content!r}")
        calls = data.get("tool_calls")
        if calls is not None and not isinstance(calls, list):
            raise ConfigurationError(f"a message's 'tool_calls' must be a list of tool calls, got {calls!r}")
        for key in ("tool_call_id", "name"):
            if data.get(key) is not None and not isinstance(data[key], str):
                raise ConfigurationError(f"a message's {key!r} must be a string, got {data[key]!r}")
        return cls(
            role=role,
            content=content,
            tool_calls=[ToolCall.from_openai(c) for c in calls or []],
            tool_call_id=data.get("tool_call_id"),
            name=data.get("name"),
            is_error=bool(data.get("is_error", False)),
        )


def _text_of_parts(parts: list[Any]) -> str:
    """The text of OpenAI content parts. Other parts (images, audio) are dropped: hanlin's models read text."""
    texts = []
    for part in parts:
        if not isinstance(part, Mapping):
            raise ConfigurationError(f"a content part must be an object like {{'type': 'text', 'text': '...'}}, got {part!r}")
        if part.get("type", "text") == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise ConfigurationError(f"a text content part needs 'text' as a string, got {part!r}")
            texts.append(text)
    return "".join(texts)


MessageLike = Message | Mapping[str, Any]


def to_messages(messages: str | Iterable[MessageLike]) -> list[Message]:
    """Accept a string (one user turn), Messages or OpenAI-style dicts; return Messages."""
    if isinstance(messages, str):
        return [Message.user(messages)]
    out = []
    for m in messages:
        out.append(m if isinstance(m, Message) else Message.from_openai(m))
    return out


def to_openai_messages(messages: Iterable[Message]) -> list[dict[str, Any]]:
    return [m.to_openai() for m in messages]
