"""The assistant over HTTP, built with the server's own auth, body and error helpers: alone (``hanlin assistant
serve``) or inside ``hanlin serve --app assistant.kb=DIR`` (then under the server's key, admission and metrics, with
the web UI's Assistant tab for retrieval testing).

- ``POST /v1/chat/completions``: an OpenAI-compatible model named ``hanlin-assistant``. The last user message is
  the chat message (``user`` in the body is the group id, the message's ``name`` the sender). Silence is an empty
  reply (``content: ""``); the decision, with its stage and reason, is in the documented extra field
  ``hanlin_decision`` of the response. ``stream: true`` is served as OpenAI's chunks, but the reply is still decided
  whole first (an answer is checked before any of it is sent): the role chunk at once, then the answer, then a last
  chunk with ``finish_reason`` and ``hanlin_decision``, then ``[DONE]``.
- ``POST /v1/assistant/webhook``: a chat message ``{"group": ..., "sender": ..., "text": ...}`` in, the full
  ``Decision`` out (``answered``, ``answer``, ``stage``, ``reason``, ``passages``, ``citations``, ``records``).
- ``POST /v1/assistant/retrieve`` ``{"query": ..., "top_k": 5}``: retrieval testing, no model call: every hit with
  its score, the rejection threshold and whether it clears it (HuixiangDou's "is this in the knowledge base?").
- ``POST /v1/assistant/decide``: the whole pipeline on one message as a dry run (no history kept, no rate limit
  spent): what the assistant would do, stage by stage.

Malformed JSON, a body of the wrong shape, a wrong key: OpenAI's error shape with 400 / 401 / 413.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from fastapi import FastAPI, Request  # this module loads only when serving (cli serve, tests)
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from hanlin.plugins.apps.assistant.records import ChatMessage, Decision

MODEL_NAME = "hanlin-assistant"


class _ChatBody(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI clients send sampling fields the assistant does not use

    model: str = MODEL_NAME
    messages: list[dict[str, Any]] = Field(min_length=1)
    user: str | None = None
    stream: bool = False


class RetrieveBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=2000)
    top_k: int = Field(default=5, ge=1, le=20)


class DecideBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=8000)
    group: str = Field(default="retrieval-test", min_length=1, max_length=200)


def retrieval_test(assistant: Any, query: str, top_k: int) -> dict[str, Any]:
    """Every hit for ``query`` with its score; ``in_knowledge_base`` when the best clears the rejection threshold and
    the passages cover enough of the question's words (``coverage``, ``missing``), ``accepted`` on the hits that would
    go to the model (the retrieve stage's top-k within ``KEEP`` of the best)."""
    from hanlin.plugins.tools.kb_index import accepts

    from hanlin.plugins.apps.assistant.retrieve import kept

    stage = assistant.retrieve
    threshold, query = stage.applied, " ".join(query.split())
    hits = assistant.kb.index.search(query, top_k)
    sent = kept(hits[:stage.top_k])
    covered = stage.covered(query, [h.chunk.text for h in sent])
    found = bool(hits) and accepts(hits[0].score, threshold) and covered.share >= stage.coverage
    going = {id(h) for h in sent} if found else set()
    rows = [{"rank": n, "source": h.chunk.where, "score": round(h.score, 6), "accepted": id(h) in going,
             "text": h.chunk.text} for n, h in enumerate(hits, 1)]
    return {"query": query, "threshold": threshold, "in_knowledge_base": found, "top_k": stage.top_k, "hits": rows,
            "coverage": covered.share, "coverage_threshold": stage.coverage, "missing": covered.missing}


def decision_field(decision: Decision) -> dict[str, Any]:
    return {"answered": decision.answered, "stage": decision.stage, "reason": decision.reason,
            "citations": decision.citations, "passages": [p.model_dump() for p in decision.passages]}


def add_assistant_api(app: FastAPI, assistant: Any, *, authenticate: Callable[[Request], None], max_body_bytes: int,
                      chat_path: str, admit: Callable[[], Any] | None = None) -> None:
    """The assistant's routes on ``app``, its chat model at ``chat_path``. ``admit``: the server's admission (a slot
    per request that calls the model; 429 when the server is full)."""
    from hanlin.server.body import read_json
    from hanlin.server.errors import APIError

    @contextmanager
    def slot() -> Iterator[None]:
        with admit() if admit is not None else nullcontext():
            yield

    @app.post("/v1/assistant/webhook", tags=["assistant"])
    async def webhook(request: Request) -> dict[str, Any]:
        """A group-chat message in; the assistant's decision (an answer with sources, or silence and why) out."""
        authenticate(request)
        message = await read_json(request, ChatMessage, max_body_bytes)
        with slot():
            decision = await asyncio.to_thread(assistant.handle, message)
        return decision.model_dump()

    @app.post("/v1/assistant/retrieve", tags=["assistant"])
    async def retrieve(request: Request) -> dict[str, Any]:
        """Retrieval testing: the knowledge base's hits for a query, scored against the rejection threshold."""
        authenticate(request)
        body = await read_json(request, RetrieveBody, max_body_bytes)
        return await asyncio.to_thread(retrieval_test, assistant, body.query, body.top_k)

    @app.post("/v1/assistant/decide", tags=["assistant"])
    async def decide(request: Request) -> dict[str, Any]:
        """The whole pipeline on one message as a dry run: nothing remembered, no rate limit spent."""
        authenticate(request)
        body = await read_json(request, DecideBody, max_body_bytes)
        with slot():
            decision = await asyncio.to_thread(assistant.handle, ChatMessage(group=body.group, text=body.text),
                                               dry_run=True)
        return decision.model_dump()

    async def chat(request: Request) -> Any:
        """The assistant as an OpenAI-compatible model: an empty reply is silence (``hanlin_decision`` says why)."""
        authenticate(request)
        body = await read_json(request, _ChatBody, max_body_bytes)
        if body.model != MODEL_NAME:
            raise APIError(404, f"model '{body.model}' is not served here; available: {MODEL_NAME}", param="model",
                           code="model_not_found")
        last = next((m for m in reversed(body.messages) if m.get("role") == "user"), None)
        if last is None or not isinstance(last.get("content"), str):
            raise APIError(400, "messages must include a user message whose content is a string", param="messages")
        message = ChatMessage(group=body.user or "default", sender=str(last.get("name") or "user"),
                              text=last["content"][:8000])
        reply_id, created = "chatcmpl-" + uuid.uuid4().hex[:24], int(time.time())
        if body.stream:  # the slot is taken before the 200, so a full server still answers 429
            held = admit() if admit is not None else nullcontext()
            return StreamingResponse(streamed(message, reply_id, created, held), media_type="text/event-stream")
        with slot():
            decision = await asyncio.to_thread(assistant.handle, message)
        return {"id": reply_id, "object": "chat.completion", "created": created, "model": MODEL_NAME,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": decision.answer},
                             "logprobs": None, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
                "hanlin_decision": decision_field(decision)}

    async def streamed(message: ChatMessage, reply_id: str, created: int, held: Any) -> AsyncIterator[str]:
        """OpenAI's chunks for a reply decided whole: nothing of an answer leaves before the check stage passed it."""
        from hanlin.server.wire import sse

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
            return sse({"id": reply_id, "object": "chat.completion.chunk", "created": created, "model": MODEL_NAME,
                        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra})

        with held:
            yield chunk({"role": "assistant", "content": ""})
            decision = await asyncio.to_thread(assistant.handle, message)
        if decision.answer:
            yield chunk({"content": decision.answer})
        yield chunk({}, "stop", hanlin_decision=decision_field(decision))
        yield "data: [DONE]\n\n"

    app.add_api_route(chat_path, chat, methods=["POST"], tags=["assistant"])


def create_assistant_app(assistant: Any, *, api_key: str | None = None, max_body_bytes: int = 1 << 20) -> FastAPI:
    """The assistant alone: ``hanlin-assistant`` at ``/v1/chat/completions`` plus the routes above."""
    from hanlin.server.auth import KeyCheck
    from hanlin.server.errors import install_error_handlers
    from hanlin.server.metrics import Metrics

    app = FastAPI(title="hanlin assistant", version="0.1.0")
    metrics = Metrics()
    app.state.metrics = metrics
    install_error_handlers(app, metrics)
    authenticate = KeyCheck(api_key)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": MODEL_NAME}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        authenticate(request)
        return {"object": "list", "data": [{"id": MODEL_NAME, "object": "model", "created": 0, "owned_by": "hanlin"}]}

    add_assistant_api(app, assistant, authenticate=authenticate, max_body_bytes=max_body_bytes,
                      chat_path="/v1/chat/completions")
    return app
