"""A ChatModel over one or several OpenAI-compatible HTTP endpoints, streaming, with retries and failover.

Retries (with exponential backoff) cover connection errors, 429 and 5xx, and
only before the first token arrived: a stream that broke half way is an
error, never a silently duplicated answer. With several base URLs (replicas)
``router.py`` picks the endpoint of each request (least outstanding requests,
health, per-endpoint limits, session affinity by prompt prefix) and a request
that failed before its first token is retried on a replica not yet tried.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

from hanlin import (
    Capabilities,
    ChatModel,
    Chunk,
    Completion,
    ConfigurationError,
    ContextOverflowError,
    GenerationParams,
    Message,
    ModelError,
    ToolCall,
    Usage,
)
from hanlin.chat_model import completion_from_chunks
from hanlin.messages import to_openai_messages
from hanlin.runtimes.remote.router import Endpoint, Router, split_urls

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class RemoteChatModel(ChatModel):
    """``base_url``: one endpoint, or several (a list, or comma-separated) served as replicas of one model.
    ``max_concurrency``: requests in flight per endpoint (one number, or one per URL; default
    ``$HANLIN_REMOTE_MAX_CONCURRENCY``, else unbounded); ``health_interval``: seconds
    between background probes of several endpoints (0: none; failures still take an endpoint out at once)."""

    def __init__(self, model: str, *, base_url: str | Sequence[str] | None = None, api_key: str | None = None,
                 timeout: float = 120.0, max_retries: int = 3, backoff: float = 0.5, context_length: int | None = None,
                 max_concurrency: int | Sequence[int | None] | None = None, health_interval: float = 5.0) -> None:
        import httpx

        base_url = base_url or os.environ.get("HANLIN_BASE_URL") or os.environ.get("OPENAI_BASE_URL")
        if not base_url:
            raise ConfigurationError("the remote runtime needs base_url (e.g. http://127.0.0.1:8000/v1) or HANLIN_BASE_URL")
        urls = split_urls(base_url)
        if max_concurrency is None and os.environ.get("HANLIN_REMOTE_MAX_CONCURRENCY"):
            limit = os.environ["HANLIN_REMOTE_MAX_CONCURRENCY"]
            if not limit.isdigit() or int(limit) < 1:
                raise ConfigurationError(f"HANLIN_REMOTE_MAX_CONCURRENCY must be a positive number of requests per "
                                         f"endpoint, got {limit!r}")
            max_concurrency = int(limit)
        self.name = model
        self.base_url = ",".join(urls)  # the identity the eval cache keys on: the whole replica set
        key = api_key if api_key is not None else os.environ.get("HANLIN_API_KEY") or os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.Client(headers=headers, timeout=timeout)
        self.router = Router(urls, max_concurrency=max_concurrency, probe=self._alive,
                             health_interval=health_interval if len(urls) > 1 else 0.0)
        self.max_retries, self.backoff = max_retries, backoff
        if context_length is not None and (not isinstance(context_length, int) or context_length < 1):
            raise ConfigurationError(f"context_length must be a positive number of tokens, got {context_length!r}")
        self._context_length = context_length
        self._capabilities: Capabilities | None = None

    def _alive(self, url: str) -> bool:
        """The health probe: any answer below 500 from ``GET {url}/models`` (vLLM, LMDeploy, SGLang and hanlin all
        serve it; a 401 still proves the server is up)."""
        try:
            return self._client.get(url + "/models", timeout=2.0).status_code < 500
        except Exception:  # noqa: BLE001  (any failure to answer is "not alive")
            return False

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
            url = next((e.url for e in self.router.endpoints if e.healthy), self.router.endpoints[0].url)
            response = self._client.get(url + "/models", timeout=5.0)
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
        for key in ("max_tokens", "temperature", "top_p", "seed", "frequency_penalty", "presence_penalty"):
            value = getattr(params, key)
            if value is not None:
                body[key] = value
        if params.stop:
            body["stop"] = params.stop
        if params.tools:
            body["tools"] = params.tools
            if params.tool_choice is not None:
                body["tool_choice"] = params.tool_choice
            if params.parallel_tool_calls is not None:
                body["parallel_tool_calls"] = params.parallel_tool_calls
            if params.ground_arguments is False:  # hanlin serve's own field; other servers ignore unknown fields
                body["ground_arguments"] = False
        if params.constraint is not None:
            if params.constraint.json_schema is None:
                raise ConfigurationError("the remote runtime supports JSON-schema constraints, not GBNF grammars")
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "output", "schema": params.constraint.json_schema}}
        return body

    def _open(self, body: dict[str, Any], affinity: str | None, tried: list[str],
              route: str = "/chat/completions") -> tuple[Endpoint, Any]:
        """A streaming response from an endpoint, retrying connection errors and busy answers (429, 5xx) on
        endpoints not yet in ``tried`` first, then, once every one was tried, on all again after a backoff. The
        endpoint stays counted as outstanding until the caller releases it."""
        import httpx

        attempt = 0
        while True:
            if len(tried) >= len(self.router.endpoints):  # each one failed once: start over, after a pause
                time.sleep(self.backoff * 2 ** (attempt - 1))
                tried.clear()
            endpoint = self.router.acquire(affinity, exclude=tried)
            try:
                response = self._client.send(self._client.build_request("POST", endpoint.url + route,
                                                                        json=body), stream=True)
            except httpx.TransportError as exc:
                error = f"cannot reach {endpoint.url}: {exc}"
                self.router.release(endpoint, failed=True, down=True, error=error)
                if attempt >= self.max_retries:
                    raise ModelError(error) from None
            else:
                if response.status_code < 400:
                    return endpoint, response
                response.read()
                retry = response.status_code in RETRY_STATUS and attempt < self.max_retries
                self.router.release(endpoint, failed=True, error=f"status {response.status_code}")
                if not retry:
                    self._raise(response, endpoint.url)
                response.close()
            tried.append(endpoint.url)
            attempt += 1

    def _raise(self, response: Any, url: str) -> None:
        try:
            error = response.json().get("error", {})
        except ValueError:
            error = {"message": response.text[:300]}
        message = f"{url} answered {response.status_code}: {error.get('message')}"
        if error.get("code") == "context_length_exceeded":
            raise ContextOverflowError(message)
        raise ModelError(message)

    def _stream(self, messages: list[Message], params: GenerationParams) -> Iterator[Chunk]:
        body = self._body(messages, params)
        return self._routed(body, affinity_key(body["messages"]), "/chat/completions")

    generates_whole = True  # see _generate: the server's non-streamed routes use it, so a front over replicas retries

    def _generate(self, messages: list[Message], params: GenerationParams) -> Completion:
        """Not streamed: nobody has seen a token until the reply is whole, so a reply cut by a dying replica is
        asked again (the dead one is out of rotation by then) instead of failing, up to ``max_retries`` times."""
        for attempt in range(self.max_retries + 1):
            try:
                return completion_from_chunks(self._stream(messages, params))
            except _PartialReply:
                if attempt == self.max_retries:
                    raise
        raise ModelError("not reached")

    def _stream_prompt(self, prompt: str, params: GenerationParams) -> Iterator[Chunk]:
        """Raw text completion through ``/completions`` (the legacy route vLLM, SGLang and hanlin serve keep), so a
        replica front serves it too; affinity on the prompt's first 256 characters."""
        body = {k: v for k, v in self._body([], params).items() if k not in ("messages", "tools", "tool_choice")}
        if "response_format" in body:
            raise ConfigurationError("raw text completion over the remote runtime takes no constraint")
        body["prompt"] = prompt
        return self._routed(body, hashlib.sha256(prompt[:256].encode("utf-8")).hexdigest()[:32], "/completions")

    def _routed(self, body: dict[str, Any], affinity: str | None, route: str) -> Iterator[Chunk]:
        """Stream one reply. A failure before the first token (a replica died, sent an error event, broke the
        connection) is retried on an endpoint not yet tried, up to ``max_retries`` times; after it, or with no
        other endpoint left, it is an error."""
        import httpx

        tried: list[str] = []
        for attempt in range(self.max_retries + 1):
            endpoint, response = self._open(body, affinity, tried, route)
            reply = _Reply()
            ok, error = False, ""
            try:
                for chunk in reply.read(response, endpoint.url):
                    yield chunk
                ok = True
            except (ModelError, httpx.TransportError) as exc:
                error = str(exc) if isinstance(exc, ModelError) else f"{endpoint.url} broke the stream: {exc}"
                untried = {e.url for e in self.router.endpoints} - {*tried, endpoint.url}
                if reply.started or attempt == self.max_retries or not untried:  # the same endpoint is not asked again
                    why = ("after part of the reply was sent; not retried (the reply would repeat)" if reply.started
                           else f"before any token; tried {len(tried) + 1} endpoint(s), none left to retry on")
                    raise (_PartialReply if reply.started else ModelError)(f"{error} ({why})") from None
            finally:
                response.close()
                self.router.release(endpoint, failed=bool(error), down=bool(error) and not reply.event_error, error=error)
            if ok:
                yield reply.last()
                return
            tried.append(endpoint.url)

    def close(self) -> None:
        self.router.close()
        self._client.close()


def affinity_key(messages: list[dict[str, Any]]) -> str | None:
    """What an agent session's requests share: the conversation up to and including its first user turn (system
    prompt, tools prompt, task). Later steps append to it, so they hash the same and go to the replica whose KV
    cache holds that prefix."""
    end = next((i for i, m in enumerate(messages) if m.get("role") == "user"), None)
    if end is None:
        return None
    blob = json.dumps(messages[:end + 1], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


class _PartialReply(ModelError):
    """A reply that broke after some of it was streamed: a streaming caller must not get it twice."""


class _Reply:
    """Reads one endpoint's server-sent events into chunks; remembers whether any output was sent (after that a
    failure cannot be retried) and whether the failure was an error event (the endpoint is alive, just failed)."""

    def __init__(self) -> None:
        self.started = self.event_error = False
        self.calls: dict[int, dict[str, Any]] = {}
        self.finish, self.usage = "stop", None

    def read(self, response: Any, url: str) -> Iterator[Chunk]:
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            event = _event(data, url)
            if "error" in event:
                error = event["error"]
                message = error.get("message") if isinstance(error, dict) else error
                self.event_error = True
                raise ModelError(f"{url} failed mid-stream: {message}")
            if event.get("usage"):
                u = event["usage"]
                cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens")
                self.usage = Usage(prompt_tokens=u.get("prompt_tokens", 0), completion_tokens=u.get("completion_tokens", 0),
                                   prompt_tokens_reused=cached,
                                   prompt_tokens_evaluated=None if cached is None else u.get("prompt_tokens", 0) - cached)
            for choice in event.get("choices") or []:
                delta = choice.get("delta") or {"content": choice.get("text")}  # a chat delta, or a completion
                if delta.get("content"):
                    self.started = True
                    yield Chunk(text=delta["content"])
                for part in delta.get("tool_calls") or []:
                    self.started = True
                    slot = self.calls.setdefault(part.get("index", 0), {"id": None, "name": "", "arguments": ""})
                    slot["id"] = part.get("id") or slot["id"]
                    fn = part.get("function") or {}
                    slot["name"] += fn.get("name") or ""
                    slot["arguments"] += fn.get("arguments") or ""
                if choice.get("finish_reason"):
                    self.finish = choice["finish_reason"]

    def last(self) -> Chunk:
        """The closing chunk: finish reason, usage and the tool calls assembled from their streamed parts."""
        tool_calls = []
        for slot in self.calls.values():
            try:
                arguments = json.loads(slot["arguments"] or "{}")
            except json.JSONDecodeError as exc:
                raise ModelError(f"the endpoint sent tool-call arguments that are not JSON: {slot['arguments']!r} ({exc})") from None
            tool_calls.append(ToolCall(name=slot["name"], arguments=arguments, **({"id": slot["id"]} if slot["id"] else {})))
        finish = self.finish if self.finish in ("stop", "length", "tool_calls") else "stop"
        return Chunk(finish_reason="tool_calls" if tool_calls else finish, usage=self.usage or Usage(), tool_calls=tool_calls)

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
