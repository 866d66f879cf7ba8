"""``hanlin assistant serve``: the assistant over HTTP, built with the server's own auth, body and error helpers.

- ``POST /v1/chat/completions``: an OpenAI-compatible model named ``hanlin-assistant``. The last user message is
  the chat message (``user`` in the body is the group id, the message's ``name`` the sender). Silence is an empty
  reply (``content: ""``); the decision, with its stage and reason, is in the documented extra field
  ``hanlin_decision`` of the response.
- ``POST /v1/assistant/webhook``: a chat message ``{"group": ..., "sender": ..., "text": ...}`` in, the full
  ``Decision`` out (``answered``, ``answer``, ``stage``, ``reason``, ``passages``, ``citations``, ``records``).

Malformed JSON, a body of the wrong shape, a wrong key: OpenAI's error shape with 400 / 401 / 413.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request  # this module loads only when serving (cli serve, tests)
from pydantic import BaseModel, ConfigDict, Field

from hanlin.plugins.apps.assistant.records import ChatMessage, Decision

MODEL_NAME = "hanlin-assistant"


class _ChatBody(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI clients send sampling fields the assistant does not use

    model: str = MODEL_NAME
    messages: list[dict[str, Any]] = Field(min_length=1)
    user: str | None = None
    stream: bool = False


def decision_field(decision: Decision) -> dict[str, Any]:
    return {"answered": decision.answered, "stage": decision.stage, "reason": decision.reason,
            "citations": decision.citations, "passages": [p.model_dump() for p in decision.passages]}


def create_assistant_app(assistant: Any, *, api_key: str | None = None, max_body_bytes: int = 1 << 20) -> FastAPI:
    from hanlin.server.auth import KeyCheck
    from hanlin.server.body import read_json
    from hanlin.server.errors import APIError, install_error_handlers
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

    @app.post("/v1/assistant/webhook")
    async def webhook(request: Request) -> dict[str, Any]:
        authenticate(request)
        message = await read_json(request, ChatMessage, max_body_bytes)
        decision = await asyncio.to_thread(assistant.handle, message)
        return decision.model_dump()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict[str, Any]:
        authenticate(request)
        body = await read_json(request, _ChatBody, max_body_bytes)
        if body.model != MODEL_NAME:
            raise APIError(404, f"model '{body.model}' is not served here; available: {MODEL_NAME}", param="model",
                           code="model_not_found")
        if body.stream:
            raise APIError(400, "the assistant answers whole replies only; send stream=false", param="stream")
        last = next((m for m in reversed(body.messages) if m.get("role") == "user"), None)
        if last is None or not isinstance(last.get("content"), str):
            raise APIError(400, "messages must include a user message whose content is a string", param="messages")
        message = ChatMessage(group=body.user or "default", sender=str(last.get("name") or "user"),
                              text=last["content"][:8000])
        decision = await asyncio.to_thread(assistant.handle, message)
        return {"id": "chatcmpl-" + uuid.uuid4().hex[:24], "object": "chat.completion", "created": int(time.time()),
                "model": MODEL_NAME,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": decision.answer},
                             "logprobs": None, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
                "hanlin_decision": decision_field(decision)}

    return app
