"""The web UI that `hanlin serve` ships: a chat with an agent whose steps stream in, a trace viewer, evaluation results.

Same process, port and API key as the OpenAI-compatible API. ``/`` serves a page of plain ES modules and CSS from
``ui_static/`` (package data: no build step, no CDN, nothing fetched at run time). The page itself holds no data, so it
is served without the key; everything it shows comes from ``/v1/ui/...``, which checks the key like every /v1 route.

- ``POST /v1/ui/runs``: run an agent (the served model, a protocol, ticked tools) on one message of a session; the
  reply is a server-sent event stream of the agent's events as they happen (hanlin's event JSON, plus a ``usage``
  event after each model call with its prompt tokens, the part taken from the KV cache, and completion tokens).
  ``DELETE /v1/ui/runs/{id}`` cancels a run (as does the client going away); ``GET /v1/ui/runs`` lists the running
  and the recent runs; ``GET /v1/ui/runs/{id}/trace`` is a finished run as a trace JSONL line (``save_trace``'s).
- Sessions live server-side: a session's transcript is the next run's history, whatever protocol or tools it picks.
- These routes are the page's own API, left out of the OpenAPI document (which describes the OpenAI-compatible one).
- Evaluation folders: only those the server was given (``eval_folders``: each a ``hanlin eval --out`` folder, or a
  folder whose sub-folders are), addressed by an id, never by a path the client sends.

The page renders every model output, tool result and file it reads as text (``textContent``, never HTML), and the
page is sent with a Content-Security-Policy that allows no inline script, so a page a tool fetched cannot run code.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from hanlin.agent import Agent, RunResult
from hanlin.chat_model import Capabilities, ChatModel, Chunk, GenerationParams
from hanlin.errors import HanlinError
from hanlin.messages import Message
from hanlin.plugin_manager import plugins
from hanlin.server.admission import Admission
from hanlin.server.body import read_json
from hanlin.server.context import ServerContext, app_pages
from hanlin.server.errors import APIError
from hanlin.server.metrics import Metrics
from hanlin.server.streams import ClosingStreamingResponse
from hanlin.server.wire import sse
from hanlin.specs import ToolSpec

STATIC = Path(__file__).with_name("ui_static")
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".svg": "image/svg+xml"}
# No inline script or style, nothing from elsewhere: an injected <script> or onerror= cannot run even if it reached
# the DOM as HTML (the page never puts it there: it renders text only).
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                    "Cache-Control": "no-cache"}
MAX_SESSIONS = 64  # the oldest session is forgotten past this many
RECENT_RUNS = 32  # finished runs kept for the trace viewer and trace downloads
MAX_PREDICTIONS = 5000  # rows sent for one dataset's predictions


class RunRequest(BaseModel):
    model_config = {"extra": "forbid"}

    message: str = Field(min_length=1, max_length=100_000)
    session_id: str | None = Field(default=None, max_length=64)
    protocol: str = "react"
    tools: list[str] = Field(default_factory=list, max_length=32)
    max_steps: int = Field(default=10, ge=1, le=50)
    temperature: float = Field(default=0.0, ge=0, le=2)


class _UsageTap(ChatModel):
    """The served model, seen by one run: every call's usage is reported as it ends (a step's tokens and KV reuse)."""

    def __init__(self, inner: ChatModel, report: Callable[[dict[str, Any]], None]) -> None:
        self.inner, self.report = inner, report
        self.name = inner.name
        self.capabilities: Capabilities = inner.capabilities

    async def astream(self, messages: Any, params: GenerationParams | None = None, **kwargs: Any) -> AsyncIterator[Chunk]:
        async for chunk in self.inner.astream(messages, params, **kwargs):
            if chunk.usage is not None:
                self.report(chunk.usage.model_dump(mode="json"))
            yield chunk

    def _stream(self, messages: list[Message], params: GenerationParams) -> Any:
        return self.inner.stream(messages, params)

    def supports(self, constraint: Any) -> bool:
        return self.inner.supports(constraint)


@dataclass
class _Run:
    id: str
    session_id: str
    message: str
    protocol: str
    tools: list[str]
    queue: asyncio.Queue[dict[str, Any] | None] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None
    status: str = "running"  # then answered / gave_up / error / cancelled
    started: float = field(default_factory=time.time)
    finished: float | None = None
    result: RunResult | None = None

    step: int = 0
    pending_usage: list[dict[str, Any]] = field(default_factory=list)

    def push(self, event: dict[str, Any]) -> None:
        """Queue an event for the page. A model call's usage is seen by the model wrapper before the agent hands on
        the call's tokens, so it waits here until the first event after those tokens, and is sent just before it."""
        if event.get("type") != "token":
            for usage in self.pending_usage:
                self.queue.put_nowait({"type": "usage", "step": self.step, "usage": usage})
            self.pending_usage.clear()
        if event.get("type") == "step_started":
            self.step = event.get("step", self.step)
        self.queue.put_nowait(event)

    def report_usage(self, usage: dict[str, Any]) -> None:
        self.pending_usage.append(usage)

    def cancel(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "session_id": self.session_id, "status": self.status, "message": self.message[:200],
                "protocol": self.protocol, "tools": self.tools, "started": self.started, "finished": self.finished,
                "steps": self.result.steps if self.result else None, "has_trace": self.result is not None}


def _eval_folders(roots: Iterable[Path]) -> dict[str, Path]:
    """id -> folder holding a scores.json: each root that holds one, and each sub-folder of a root that does."""
    found: dict[str, Path] = {}
    for i, root in enumerate(roots):
        if (root / "scores.json").is_file():
            found[str(i)] = root
        try:
            children = sorted(p for p in root.iterdir() if p.is_dir())
        except OSError:
            continue
        for child in children:
            if (child / "scores.json").is_file():
                found[f"{i}/{child.name}"] = child
    return found


def _read_scores(folder: Path) -> dict[str, Any]:
    try:
        scores = json.loads((folder / "scores.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise APIError(500, f"cannot read scores.json of this result folder: {exc}", type="server_error") from None
    if not isinstance(scores, dict):
        raise APIError(500, "scores.json of this result folder is not a JSON object", type="server_error")
    return scores


def _inside(folder: Path, relative: str) -> Path:
    """``relative`` (as scores.json names a predictions file) resolved, and refused unless it stays in ``folder``."""
    base = folder.resolve()
    path = (base / relative).resolve()
    if not path.is_relative_to(base):
        raise APIError(403, "scores.json names a predictions file outside its result folder; not served",
                       type="permission_error")
    return path


def _default_tool_names(agent: Agent | None) -> list[str]:
    table = plugins().tools()
    names = [n for n, e in table.items() if isinstance(e, ToolSpec) and e.default]
    if agent is not None:
        names += [t.name for t in agent.tools if t.name in table]
    return list(dict.fromkeys(names))


def mount_ui(app: FastAPI, model: ChatModel, *, model_name: str, authenticate: Callable[[Request], None],
             admission: Admission, metrics: Metrics, max_body_bytes: int, agent: Agent | None = None,
             tools: list[str] | None = None, eval_folders: Iterable[str | Path] = (),
             context: ServerContext | None = None) -> None:
    """Add the page (``/``, ``/ui/...``) and its API (``/v1/ui/...``) to ``app``.

    ``tools``: the registered tool names the page may tick (default: the registered default tools plus the served
    agent's); ``eval_folders``: the evaluation result folders the page may open (none by default)."""
    static = {p.name: p for p in STATIC.iterdir() if p.suffix in _TYPES} if STATIC.is_dir() else {}
    offered = list(tools) if tools is not None else _default_tool_names(agent)
    roots = [Path(f).expanduser() for f in eval_folders]
    sessions: OrderedDict[str, list[Message]] = OrderedDict()
    running: dict[str, _Run] = {}
    recent: deque[_Run] = deque(maxlen=RECENT_RUNS)

    def asset(name: str) -> Response:
        path = static.get(name)
        if path is None:
            raise APIError(404, f"no UI file named {name!r}")
        return Response(path.read_bytes(), media_type=_TYPES[path.suffix], headers=SECURITY_HEADERS)

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return asset("index.html")

    @app.get("/ui/{name}", include_in_schema=False)
    async def ui_file(name: str) -> Response:
        return asset(name)

    @app.get("/v1/ui/config", include_in_schema=False)
    async def config(request: Request) -> dict[str, Any]:
        authenticate(request)
        table = plugins().tools()
        return {
            "model": model_name,
            "protocols": sorted(plugins().protocols()),
            "default_protocol": agent.protocol.name if agent is not None else "react",
            "tools": [{"name": n, "description": getattr(table.get(n), "description", "")} for n in offered],
            "default_tools": [n for n in _default_tool_names(agent) if n in offered],
            "default_max_steps": agent.options.max_steps if agent is not None else 10,
            "eval_folders": len(roots),
            "pages": app_pages(context) if context is not None else [],
        }

    # ---- agent runs ----------------------------------------------------------------------------------
    def build_agent(req: RunRequest, report: Callable[[dict[str, Any]], None]) -> Agent:
        from hanlin.loading import load_tools

        return Agent(_UsageTap(model, report), load_tools(req.tools), protocol=req.protocol, max_steps=req.max_steps,
                     params=GenerationParams(temperature=req.temperature))

    def session_for(session_id: str | None) -> str:
        if session_id is None:
            session_id = "s-" + uuid.uuid4().hex[:16]
            sessions[session_id] = []
            while len(sessions) > MAX_SESSIONS:
                sessions.popitem(last=False)
        elif session_id not in sessions:
            raise APIError(404, f"no session {session_id!r} on this server (it ended or the server restarted); "
                           "start a new one", param="session_id", code="session_not_found")
        sessions.move_to_end(session_id)
        if any(r.session_id == session_id for r in running.values()):
            raise APIError(409, "this session is running a turn already; wait for it or stop it", param="session_id")
        return session_id

    async def drive(run: _Run, agent: Agent) -> None:
        history = list(sessions.get(run.session_id, []))
        try:
            with metrics.generating():
                result = await agent.arun(run.message, history=history,
                                          on_event=lambda e: run.push(e.model_dump(mode="json")))
            run.result, run.status = result, result.status
            if run.session_id in sessions:
                sessions[run.session_id] = list(result.messages)
        except asyncio.CancelledError:
            run.status = "cancelled"
        except Exception as exc:  # noqa: BLE001  (the page must be told, and the server goes on)
            run.status = "error"
            run.push({"type": "error", "step": run.step, "kind": "model", "message": f"{type(exc).__name__}: {exc}",
                      "recoverable": False})

    def ended(run: _Run, agent: Agent, slot: Any) -> Callable[[asyncio.Task[None]], None]:
        """Cleanup as a done-callback: it runs however the task ends, even cancelled before it ever started."""

        def callback(task: asyncio.Task[None]) -> None:
            slot.release()
            if run.status == "running":
                run.status = "cancelled"
            run.finished = time.time()
            running.pop(run.id, None)
            recent.appendleft(run)
            run.push({"type": "run_ended", "status": run.status, "run_id": run.id})
            run.queue.put_nowait(None)
            asyncio.get_running_loop().run_in_executor(None, agent.close)

        return callback

    async def events(run: _Run) -> AsyncIterator[str]:
        yield sse({"type": "run", "run_id": run.id, "session_id": run.session_id})
        while (event := await run.queue.get()) is not None:
            yield sse(event)

    @app.post("/v1/ui/runs", include_in_schema=False)
    async def start_run(request: Request) -> Response:
        authenticate(request)
        req = await read_json(request, RunRequest, max_body_bytes)
        if req.protocol not in plugins().protocols():
            raise APIError(400, f"unknown protocol {req.protocol!r}; known: {', '.join(sorted(plugins().protocols()))}",
                           param="protocol")
        refused = [t for t in req.tools if t not in offered]
        if refused:
            raise APIError(400, f"tools not offered by this server: {', '.join(refused)}; offered: "
                           f"{', '.join(offered) or '(none)'}", param="tools")
        session_id = session_for(req.session_id)
        run = _Run(id="run-" + uuid.uuid4().hex[:16], session_id=session_id, message=req.message,
                   protocol=req.protocol, tools=list(req.tools))
        slot = admission.admit()
        running[run.id] = run  # before the wait below, so a second turn of this session is refused meanwhile
        try:
            agent = await asyncio.to_thread(build_agent, req, run.report_usage)
        except BaseException as exc:
            slot.release()
            running.pop(run.id, None)
            if isinstance(exc, HanlinError):
                raise APIError(400, str(exc), code="invalid_parameter") from None
            raise
        run.task = asyncio.create_task(drive(run, agent))
        run.task.add_done_callback(ended(run, agent, slot))
        # However the stream ends before the run does (the page closed, the connection dropped), the run is
        # cancelled: nobody is watching it, and the model should serve someone else.
        return ClosingStreamingResponse(events(run), run.cancel, media_type="text/event-stream",
                                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/v1/ui/runs", include_in_schema=False)
    async def list_runs(request: Request) -> dict[str, Any]:
        authenticate(request)
        return {"running": [r.summary() for r in running.values()], "recent": [r.summary() for r in recent]}

    @app.delete("/v1/ui/runs/{run_id}", include_in_schema=False)
    async def cancel_run(run_id: str, request: Request) -> dict[str, Any]:
        authenticate(request)
        run = running.get(run_id)
        if run is None:
            done = next((r for r in recent if r.id == run_id), None)
            if done is None:
                raise APIError(404, f"no run {run_id!r}", code="run_not_found")
            return done.summary()
        run.cancel()
        if run.task is not None:
            await asyncio.wait({run.task}, timeout=30)
        return run.summary()

    @app.get("/v1/ui/runs/{run_id}/trace", include_in_schema=False)
    async def run_trace(run_id: str, request: Request) -> Response:
        authenticate(request)
        run = next((r for r in recent if r.id == run_id), None)
        if run is None or run.result is None:
            raise APIError(404, f"no finished run {run_id!r} with a trace on this server (cancelled runs have none; "
                           f"the last {RECENT_RUNS} runs are kept)", code="run_not_found")
        line = json.dumps(run.result.to_record(), ensure_ascii=False, default=str) + "\n"
        return Response(line, media_type="application/x-ndjson",
                        headers={"Content-Disposition": f'attachment; filename="{run.id}.jsonl"'})

    @app.get("/v1/ui/sessions/{session_id}", include_in_schema=False)
    async def session(session_id: str, request: Request) -> dict[str, Any]:
        authenticate(request)
        if session_id not in sessions:
            raise APIError(404, f"no session {session_id!r}", code="session_not_found")
        return {"id": session_id, "messages": [m.model_dump(mode="json", exclude_defaults=True)
                                                for m in sessions[session_id]]}

    @app.delete("/v1/ui/sessions/{session_id}", include_in_schema=False)
    async def end_session(session_id: str, request: Request) -> dict[str, Any]:
        authenticate(request)
        sessions.pop(session_id, None)
        return {"id": session_id, "deleted": True}

    # ---- evaluation results ---------------------------------------------------------------------------
    def folder(folder_id: str) -> Path:
        found = _eval_folders(roots).get(folder_id)
        if found is None:
            raise APIError(404, f"no evaluation folder {folder_id!r} is served here", code="folder_not_found")
        return found

    @app.get("/v1/ui/evals", include_in_schema=False)
    async def evals(request: Request) -> dict[str, Any]:
        authenticate(request)
        return {"folders": [{"id": i, "name": p.name or str(p)} for i, p in _eval_folders(roots).items()]}

    @app.get("/v1/ui/evals/{folder_id:path}/scores", include_in_schema=False)
    async def eval_scores(folder_id: str, request: Request) -> Response:
        authenticate(request)
        return JSONResponse(_read_scores(folder(folder_id)))

    @app.get("/v1/ui/evals/{folder_id:path}/chart", include_in_schema=False)
    async def eval_chart(folder_id: str, request: Request) -> Response:
        """The folder's scores.png (drawn by `hanlin eval` once a folder holds two or more models), if it has one."""
        authenticate(request)
        path = folder(folder_id) / "scores.png"
        if not path.is_file():
            raise APIError(404, "this result folder has no chart (scores.png is drawn once it holds two models)",
                           code="chart_not_found")
        return Response(path.read_bytes(), media_type="image/png", headers={"Cache-Control": "no-cache"})

    @app.get("/v1/ui/evals/{folder_id:path}/predictions", include_in_schema=False)
    async def eval_predictions(folder_id: str, request: Request) -> dict[str, Any]:
        authenticate(request)  # before anything about the request is looked at, its query included
        model, dataset = request.query_params.get("model"), request.query_params.get("dataset")
        if model is None or dataset is None:
            raise APIError(400, "say which predictions: ?model=NAME&dataset=NAME", param="model" if model is None else "dataset")
        where = folder(folder_id)
        record = _read_scores(where).get("models", {}).get(model, {}).get("datasets", {}).get(dataset)
        if not isinstance(record, dict) or not isinstance(record.get("predictions"), str):
            raise APIError(404, f"no predictions for model {model!r} on dataset {dataset!r} in this folder")
        path = _inside(where, record["predictions"])
        rows: list[Any] = []
        try:
            with path.open(encoding="utf-8") as fh:
                for line in fh:
                    if line.strip():
                        rows.append(json.loads(line))
                    if len(rows) >= MAX_PREDICTIONS:
                        break
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise APIError(500, f"cannot read the predictions of {dataset!r}: {exc}", type="server_error") from None
        return {"model": model, "dataset": dataset, "predictions": rows, "truncated": len(rows) >= MAX_PREDICTIONS}

