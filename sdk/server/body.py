"""Reading a request body: bounded in size, JSON, text a model can take, then validated against its schema.

Each step fails with a 400 (413 for size) in OpenAI's shape that says what was wrong, so no body, however
malformed, reaches the routes as something they must guard against again.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from hanlin.server.errors import APIError, from_validation_error

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024  # a long conversation fits; a multi-gigabyte upload does not
Model = TypeVar("Model", bound=BaseModel)


def _too_large(limit: int) -> APIError:
    return APIError(413, f"the request body is larger than this server's limit of {limit} bytes; send a shorter "
                    "conversation, or start the server with a larger --max-body-bytes", code="request_too_large")


async def read_bytes(request: Request, limit: int) -> bytes:
    """The raw body, refused as soon as it passes ``limit``: the declared Content-Length is checked before a byte is
    read, and a chunked body is counted as it arrives, so an oversized body is never held in memory."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _first_unencodable(data: Any) -> str | None:
    """The first string in ``data`` that is not valid Unicode text (a lone surrogate such as "\\ud800" is valid JSON
    but cannot be encoded, tokenized or echoed back), walked without recursion so deep nesting cannot overflow."""
    pending = [data]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return value
    return None


async def read_json(request: Request, model: type[Model], limit: int) -> Model:
    """The body as ``model``, or a 400/413 naming the problem."""
    raw = await read_bytes(request, limit)
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, f"the request body is not valid JSON: {exc}", code="malformed_json") from None
    except RecursionError:
        raise APIError(400, "the request body nests JSON too deeply to read", code="malformed_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object", code="malformed_json")
    if (bad := _first_unencodable(data)) is not None:
        raise APIError(400, f"the request body has a string that is not valid Unicode (a lone surrogate escape): "
                       f"{bad[:40]!r}", code="malformed_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(exc) from None
    except RecursionError:
        raise APIError(400, "the request body nests JSON too deeply to read", code="malformed_json") from None
