"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}`` with the matching status.

Clients (the openai package, LangChain, curl scripts) read this shape, so every failure a request can cause is
answered in it, including the ones raised by FastAPI and Starlette themselves (an unknown route, a wrong method).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from hanlin.server.metrics import Metrics


class APIError(Exception):
    """A failure with its HTTP status, answered in OpenAI's error shape."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> Response:
        # ensure_ascii: a message may quote what the client sent, lone surrogates included, and must still encode
        return Response(json.dumps(self.body()), status_code=self.status, media_type="application/json")

    def sse(self) -> str:
        """The error as a server-sent event, for a stream whose headers (and 200) are already sent."""
        return f"data: {json.dumps(self.body())}\n\n"


def from_validation_error(exc: ValidationError) -> APIError:
    """A pydantic failure as a 400 that names the first bad field and what was wrong with it."""
    first = exc.errors()[0]
    param = ".".join(str(p) for p in first["loc"]) or None
    return APIError(400, f"invalid value for '{param}': {first['msg']}", param=param, code="invalid_parameter")


_HTTP_TYPES = {401: "authentication_error", 404: "invalid_request_error", 405: "invalid_request_error"}


def install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    """Answer every error in OpenAI's shape, count it, and keep serving."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> Response:
        metrics.requests[(request.url.path, exc.status)] += 1
        return exc.response()

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> Response:
        error = APIError(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}; this server answers "
                         "POST /v1/chat/completions, POST /v1/completions, GET /v1/models, /health and /metrics",
                         type=_HTTP_TYPES.get(exc.status_code, "invalid_request_error"))
        metrics.requests[("(no route)", exc.status_code)] += 1  # one label: scanned paths must not grow metrics
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def _request_validation(request: Request, exc: RequestValidationError) -> Response:
        first = (exc.errors() or [{"loc": (), "msg": "invalid request"}])[0]
        param = ".".join(str(p) for p in first.get("loc", ())) or None
        return APIError(400, f"invalid value for '{param}': {first.get('msg')}", param=param).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        metrics.requests[(request.url.path, 500)] += 1
        return APIError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error").response()
