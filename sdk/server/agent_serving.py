"""An agent served as a model: the last user message is its task, the earlier messages its memory.

The reply is one chat completion whose text is the agent's answer; its steps (tool calls, results, errors) ride
along in ``hanlin_steps`` / ``hanlin_step``, extra fields that standard OpenAI clients ignore.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

from hanlin.agent import Agent
from hanlin.messages import Message
from hanlin.server.errors import APIError
from hanlin.server.schema import ChatRequest
from hanlin.server.wire import DONE, sse, usage


async def agent_reply(agent: Agent, messages: list[Message], req: ChatRequest) -> Any:
    """Run ``agent`` to its end, then answer as a chat completion (streamed when asked: the steps, then the answer)."""
    if messages[-1].role != "user":
        raise APIError(400, "the last message for an agent must be a user message", param="messages")
    result = await agent.arun(messages[-1], history=[m for m in messages[:-1] if m.role != "system"])
    steps = [e.model_dump(mode="json") for e in result.events if e.type in ("tool_call", "tool_result", "error")]
    text = result.output_text if result.status == "answered" else f"(agent {result.status}: {result.error})"
    created, cid = int(time.time()), "chatcmpl-" + uuid.uuid4().hex[:24]
    finish = "stop" if result.status == "answered" else "length"
    if not req.stream:
        return {"id": cid, "object": "chat.completion", "created": created, "model": req.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
                "usage": usage(result.usage), "hanlin_status": result.status, "hanlin_steps": steps}

    async def events() -> AsyncIterator[str]:
        base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": req.model}
        for step in steps:
            yield sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": None}], "hanlin_step": step})
        yield sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": None}]})
        yield sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}], "hanlin_status": result.status})
        yield DONE

    return StreamingResponse(events(), media_type="text/event-stream")
