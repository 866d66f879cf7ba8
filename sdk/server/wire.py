"""OpenAI's response shapes: usage, server-sent events, streamed tool-call deltas.

Kept apart from the routes so the model path and the agent path write the same bytes for the same thing.
"""

from __future__ import annotations

import json
from typing import Any

DONE = "data: [DONE]\n\n"


def sse(body: dict[str, Any]) -> str:
    """One server-sent event carrying ``body`` as JSON."""
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def usage(usage: Any) -> dict[str, Any]:
    out = {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
           "total_tokens": usage.total_tokens}
    if usage.prompt_tokens_reused is not None:
        out["prompt_tokens_details"] = {"cached_tokens": usage.prompt_tokens_reused}
    return out


def tool_call_deltas(calls: list[Any], fragment: int = 32) -> list[dict[str, Any]]:
    """Calls as OpenAI streams them: per call a delta with its index, id, type and name (empty arguments), then
    the arguments JSON in fragments, which clients concatenate by index."""
    deltas: list[dict[str, Any]] = []
    for i, call in enumerate(calls):
        head = {"index": i, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}
        deltas.append({"tool_calls": [head]})
        args = json.dumps(call.arguments, ensure_ascii=False)
        deltas.extend({"tool_calls": [{"index": i, "function": {"arguments": args[k:k + fragment]}}]}
                      for k in range(0, len(args), fragment))
    return deltas
