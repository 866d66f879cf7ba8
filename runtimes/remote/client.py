"""A ChatModel over an OpenAI-compatible HTTP endpoint, streaming, with retries.

Retries (with exponential backoff) cover connection errors, 429 and 5xx, and
only before the first token arrived: a stream that broke half way is an
error, never a silently duplicated answer.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

from hanlin import (
    Capabilities,
    ChatModel,
    Chunk,
    ConfigurationError,
    ContextOverflowError,
    GenerationParams,
    Message,
    ModelError,
    ToolCall,
    Usage,
)
from hanlin.messages import to_openai_messages

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class RemoteChatModel(ChatModel):
    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None, timeout: float = 120.0,
                 max_retries: int = 3, backoff: float = 0.5, context_length: int | None = None) -> None:
        import httpx

        base_url = base_url or os.environ.get("HANLIN_BASE_URL") or os.environ.get("OPENAI_BASE_URL")
        if not base_url:
            raise ConfigurationError("the remote runtime needs base_url (e.g. http://127.0.0.1:8000/v1) or HANLIN_BASE_URL")
        self.name = model
        self.base_url = base_url.rstrip("/")
        key = api_key if api_key is not None else os.environ.get("HANLIN_API_KEY") or os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)
        self.max_retries, self.backoff = max_retries, backoff
        if context_length is not None and (not isinstance(context_length, int) or context_length < 1):
            raise ConfigurationError(f"context_length must be a positive number of tokens, got {context_length!r}")
        self._context_length = context_length
        self._capabilities: Capabilities | None = None

    @property
    def capabilities(self) -> Capabilities:  # type: ignore[override]
        """Asked of the endpoint once, when first needed: the agent loop needs the context length to tell a reply
        cut by a full context (an error to report) from one cut by max_tokens (a mistake to retry)."""
        if self._capabilities is None:
            self._capabilities = Capabilities(
                constraints=frozenset({"json_schema"}), native_tools=True,
                context_length=self._context_length or self._advertised_context_length(),
            )
        return self._capabilities

    def _advertised_context_length(self) -> int | None:
        """The context length the endpoint's /models entry for this model states (vLLM: max_model_len; others:
        context_length, max_context_length, context_window), or None: not every server says, and a missing
        figure must not stop the model from loading (pass context_length= to state it)."""
        try:
            response = self._client.get("/models", timeout=5.0)
            entries = response.json().get("data") if response.status_code == 200 else None
        except Exception:
            return None
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict) or entry.get("id") != self.name:
                continue
            for key in ("max_model_len", "context_length", "max_context_length", "context_window"):
                value = entry.get(key)
                if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                    return value
        return None

    def _body(self, messages: list[Message], params: GenerationParams) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.name, "messages": to_openai_messages(messages), "stream": True,
                                "stream_options": {"include_usage": True}}
        for key in ("max_tokens", "temperature", "top_p", "seed"):
            value = getattr(params, key)
            if value is not None:
                body[key] = value
        if params.stop:
            body["stop"] = params.stop
        if params.tools:
            body["tools"] = params.tools
            if params.tool_choice is not None:
                body["tool_choice"] = params.tool_choice
        if params.constraint is not None:
            if params.constraint.json_schema is None:
                raise ConfigurationError("the remote runtime supports JSON-schema constraints, not GBNF grammars")
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "output", "schema": params.constraint.json_schema}}
        return body

    def _open(self, body: dict[str, Any]) -> Any:
        import httpx

        for attempt in range(self.max_retries + 1):
            try:
                response = self._client.send(self._client.build_request("POST", "/chat/completions", json=body), stream=True)
            except httpx.TransportError as exc:
                if attempt == self.max_retries:
                    raise ModelError(f"cannot reach {self.base_url}: {exc}") from None
            else:
                if response.status_code < 400:
                    return response
                response.read()
                if response.status_code not in RETRY_STATUS or attempt == self.max_retries:
                    self._raise(response)
                response.close()
            time.sleep(self.backoff * 2**attempt)
        raise ModelError(f"no answer from {self.base_url}")  # not reached

    def _raise(self, response: Any) -> None:
        try:
            error = response.json().get("error", {})
        except ValueError:
            error = {"message": response.text[:300]}
        message = f"{self.base_url} answered {response.status_code}: {error.get('message')}"
        if error.get("code") == "context_length_exceeded":
            raise ContextOverflowError(message)
        raise ModelError(message)

    def _stream(self, messages: list[Message], params: GenerationParams) -> Iterator[Chunk]:
        response = self._open(self._body(messages, params))
        calls: dict[int, dict[str, Any]] = {}
        finish, usage = "stop", None
        try:
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = _event(data, self.base_url)
                if "error" in event:
                    error = event["error"]
                    message = error.get("message") if isinstance(error, dict) else error
                    raise ModelError(f"{self.base_url} failed mid-stream: {message}")
                if event.get("usage"):
                    u = event["usage"]
                    cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens")
                    usage = Usage(prompt_tokens=u.get("prompt_tokens", 0), completion_tokens=u.get("completion_tokens", 0),
                                  prompt_tokens_reused=cached,
                                  prompt_tokens_evaluated=None if cached is None else u.get("prompt_tokens", 0) - cached)
                for choice in event.get("choices") or []:
                    delta = choice.get("delta") or {}
                    if delta.get("content"):
                        yield Chunk(text=delta["content"])
                    for part in delta.get("tool_calls") or []:
                        slot = calls.setdefault(part.get("index", 0), {"id": None, "name": "", "arguments": ""})
                        slot["id"] = part.get("id") or slot["id"]
                        fn = part.get("function") or {}
                        slot["name"] += fn.get("name") or ""
                        slot["arguments"] += fn.get("arguments") or ""
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
        finally:
            response.close()
        tool_calls = []
        for slot in calls.values():
            try:
                arguments = json.loads(slot["arguments"] or "{}")
            except json.JSONDecodeError as exc:
                raise ModelError(f"the endpoint sent tool-call arguments that are not JSON: {slot['arguments']!r} ({exc})") from None
            tool_calls.append(ToolCall(name=slot["name"], arguments=arguments, **({"id": slot["id"]} if slot["id"] else {})))
        if finish not in ("stop", "length", "tool_calls"):
            finish = "stop"
        yield Chunk(finish_reason="tool_calls" if tool_calls else finish, usage=usage or Usage(), tool_calls=tool_calls)

    def close(self) -> None:
        self._client.close()


def _event(data: str, base_url: str) -> dict[str, Any]:
    """One server-sent event's JSON object; anything else is the endpoint's fault, said as such."""
    try:
        event = json.loads(data)
    except json.JSONDecodeError as exc:
        raise ModelError(
            f"{base_url} sent a stream event that is not JSON ({exc}): {data[:200]!r}; is base_url an "
            "OpenAI-compatible /v1 endpoint?"
        ) from None
    if not isinstance(event, dict):
        raise ModelError(f"{base_url} sent a stream event that is not a JSON object: {data[:200]!r}")
    return event
