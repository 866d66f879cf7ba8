"""The research app inside `hanlin serve`: ``POST /v1/research`` streams a run as server-sent events, and the web UI's
Research tab draws the graph as it grows.

- ``POST /v1/research`` ``{"question": ..., "max_nodes": 4, ...}``: with ``stream`` (the default) the reply is an
  event stream, one research event per ``data:`` line (``research_started``, ``node_added``, ``node_started``,
  ``searcher_step``, ``node_answered``, ``final``, ...; the same JSON as ``hanlin research --json`` and the trace
  file), first a ``{"type": "run", "run_id": ...}`` line and last ``[DONE]``. Without ``stream``: the whole result.
- ``GET /v1/research/runs/{id}/trace``: a finished run's events as JSONL, which ``load_trace`` / ``replay`` read.
- The search backend is the server's choice, never the client's (``--app research.search=local:DIR``, default the
  installed packages' descriptions): a request cannot make the server read an arbitrary folder.
- A run holds one admission slot (429 when the server is full) and is cancelled when its client goes away.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from hanlin.errors import HanlinError
from hanlin.plugin_manager import plugins
from hanlin.server.body import read_json
from hanlin.server.context import ServerContext, server_context
from hanlin.server.errors import APIError
from hanlin.server.streams import ClosingStreamingResponse
from hanlin.server.wire import DONE, sse

KEPT_RUNS = 16  # finished runs whose traces stay downloadable


class ResearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1, max_length=2000)
    max_nodes: int = Field(default=4, ge=1, le=8)
    max_depth: int = Field(default=3, ge=1, le=4)
    max_parallel: int = Field(default=1, ge=1, le=4)
    protocol: str = Field(default="react", description="The searchers' agent protocol.")
    decompose: bool = Field(default=True, description="Seed the plan with one constrained split of the question.")
    stream: bool = True


class _Backend:
    """The search backend, built on first use (the package corpus is indexed once, in a worker thread)."""

    def __init__(self, search: str) -> None:
        self.search = search
        self._backend: Any = None
        self._lock = asyncio.Lock()

    async def get(self) -> Any:
        async with self._lock:
            if self._backend is None:
                from hanlin.plugins.apps.research.searcher import make_search_backend

                self._backend = await asyncio.to_thread(make_search_backend, self.search)
            return self._backend


def add_research_routes(app: FastAPI, context: ServerContext) -> None:
    options = context.options_for("research")
    backend = _Backend(options.get("search", "packages"))
    finished: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()

    async def research_for(req: ResearchRequest) -> Any:
        from hanlin.plugins.apps.research.pipeline import Research

        if req.protocol not in plugins().protocols():
            raise APIError(400, f"unknown protocol {req.protocol!r}; known: {', '.join(sorted(plugins().protocols()))}",
                           param="protocol")
        try:
            return Research(context.model, await backend.get(), max_nodes=req.max_nodes, max_depth=req.max_depth,
                            max_parallel=req.max_parallel, searcher_protocol=req.protocol, decompose=req.decompose)
        except HanlinError as exc:
            raise APIError(400, str(exc), code="invalid_parameter") from None

    def keep(run_id: str, events: list[dict[str, Any]]) -> None:
        finished[run_id] = events
        while len(finished) > KEPT_RUNS:
            finished.popitem(last=False)

    @app.post("/v1/research", tags=["research"])
    async def research(request: Request) -> Response:
        """Answer a question by planning sub-questions, searching them concurrently and citing what was read."""
        context.authenticate(request)
        req = await read_json(request, ResearchRequest, context.max_body_bytes)
        app_run = await research_for(req)
        run_id = "research-" + uuid.uuid4().hex[:16]
        slot = context.admission.admit()
        if not req.stream:
            try:
                with context.metrics.generating():
                    result = await app_run.arun(req.question)
            except HanlinError as exc:
                raise APIError(400, str(exc), code="invalid_parameter") from None
            finally:
                slot.release()
            events = [e.model_dump(mode="json") for e in result.events]
            keep(run_id, events)
            return JSONResponse({"run_id": run_id, **result.model_dump(mode="json", exclude={"events"}),
                                 "events": events})

        async def stream() -> AsyncIterator[str]:
            events: list[dict[str, Any]] = []
            yield sse({"type": "run", "run_id": run_id})
            try:
                with context.metrics.generating():
                    async with aclosing(app_run.astream(req.question)) as source:
                        async for event in source:
                            data = event.model_dump(mode="json")
                            events.append(data)
                            yield sse(data)
                keep(run_id, events)
            except HanlinError as exc:
                yield sse({"type": "error", "message": str(exc)})
            except Exception as exc:  # noqa: BLE001  (the client is told; the server goes on)
                yield sse({"type": "error", "message": f"internal error: {type(exc).__name__}: {exc}"})
            yield DONE

        # The client leaving ends the stream: the generator is closed, which cancels the run's searchers.
        return ClosingStreamingResponse(stream(), slot.release, media_type="text/event-stream",
                                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/v1/research/runs/{run_id}/trace", tags=["research"])
    async def trace(run_id: str, request: Request) -> Response:
        """A finished run's events as JSONL (replayable with ``hanlin.plugins.apps.research.events.load_trace``)."""
        context.authenticate(request)
        events = finished.get(run_id)
        if events is None:
            raise APIError(404, f"no finished research run {run_id!r} here (the last {KEPT_RUNS} are kept; a "
                           "cancelled run has no trace)", code="run_not_found")
        body = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in events)
        return Response(body, media_type="application/x-ndjson",
                        headers={"Content-Disposition": f'attachment; filename="{run_id}.jsonl"'})

    context.add_page(app, "research", "Research", Path(__file__).with_name("ui"))


def register(app: FastAPI) -> None:
    add_research_routes(app, server_context(app))
