"""The OpenAI-compatible application: its routes, in the order a request meets them.

Each /v1 route authenticates first, then reads a bounded body, then validates it, then takes an admission slot,
then generates; every failure a client can cause is answered in OpenAI's error shape with the matching status, and
the server goes on serving. Generation runs in worker threads (the runtimes are blocking C code); a streaming
client that goes away cancels its generation, which frees the model and its slot for the next request.

The other jobs live beside this module: errors.py (the error shape), auth.py (the key), body.py (reading),
admission.py (slots), streams.py (clean-up), forced.py (tools and forced calls), agent_serving.py (an agent as a
model), wire.py (response shapes).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import aclosing
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ValidationError

from hanlin.agent import Agent
from hanlin.chat_model import ChatModel, Chunk, GenerationParams, completion_from_chunks
from hanlin.errors import ConfigurationError, ContextOverflowError, HanlinError
from hanlin.messages import Message, to_messages
from hanlin.server.admission import Admission
from hanlin.server.agent_serving import agent_reply
from hanlin.server.auth import KeyCheck
from hanlin.plugin_manager import plugins
from hanlin.server.body import DEFAULT_MAX_BODY_BYTES, read_json
from hanlin.server.context import ServerContext, check_claimed
from hanlin.server.errors import APIError, install_error_handlers
from hanlin.server.forced import plan_tools
from hanlin.server.metrics import Metrics
from hanlin.server.schema import ChatRequest, CompletionRequest, chat_examples, completion_examples
from hanlin.server.streams import ClosingStreamingResponse
from hanlin.server.wire import DONE, sse, tool_call_deltas, usage


def _openapi_extra(model: type[BaseModel], served: list[str], app: FastAPI,
                   examples: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The route's request body for the OpenAPI document. The routes read the body themselves (after the key check,
    within the size limit), so FastAPI is told its schema here rather than through a parameter; the schemas it
    refers to are added to the document's components by ``_install_openapi``."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    app.state.openapi_schemas.update(schema.pop("$defs", {}))
    schema["properties"]["model"] = {"type": "string", "enum": served, "title": "Model"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema, "examples": examples}}}}


async def _guarded(events: AsyncIterator[str], metrics: Metrics, route: str) -> AsyncIterator[str]:
    """A stream whose status line (200) is already sent: a failure becomes an error event and ``[DONE]``, which
    OpenAI clients read as an error, instead of a connection cut with no explanation."""
    try:
        async with aclosing(events):
            async for event in events:
                yield event
        metrics.requests[(route, 200)] += 1
        return
    except APIError as exc:
        error = exc
    except Exception as exc:  # noqa: BLE001  (whatever it was, the client must be told, and the server goes on)
        error = APIError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error")
    metrics.requests[(route, error.status)] += 1
    yield error.sse()
    yield DONE


def create_app(
    model: ChatModel,
    *,
    model_name: str | None = None,
    api_key: str | None = None,
    agent: Agent | None = None,
    agent_name: str = "hanlin-agent",
    max_queue: int = 32,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    eval_folders: Sequence[str | Path] = (),
    app_options: Mapping[str, str] | None = None,
) -> FastAPI:
    """An app serving ``model`` (and, optionally, ``agent`` as a model named ``agent_name``).

    ``api_key``: require ``Authorization: Bearer <key>`` on /v1 (see ``hanlin.server.auth.resolve_api_key``);
    ``max_queue``: requests admitted at once before 429; ``max_body_bytes``: larger bodies get 413.
    ``eval_folders``: the `hanlin eval --out` folders (or folders of them) the web UI at ``/`` may open.
    ``app_options``: ``{"APP.OPTION": value}`` for the app plugins whose routes the server mounts (``--app``).
    """
    name = model_name or model.name
    served = [name] + ([agent_name] if agent else [])
    metrics = Metrics()
    admission = Admission(metrics, max_queue)
    authenticate = KeyCheck(api_key)
    app = FastAPI(title="hanlin", version="0.1.0")
    app.state.metrics = metrics
    app.state.openapi_schemas = {}
    install_error_handlers(app, metrics)

    def served_model(requested: str) -> None:
        if requested not in served:
            raise APIError(404, f"model '{requested}' is not served here; available: {', '.join(served)}",
                           param="model", code="model_not_found")

    async def whole(messages: list[Message], params: GenerationParams) -> AsyncIterator[Chunk]:
        """A non-streamed reply as one chunk, from a model that makes whole replies its own way (``generates_whole``:
        the remote runtime asks again a reply a dying replica cut, which a stream already shown cannot)."""
        done = await model.agenerate(messages, params)
        yield Chunk(text=done.text, tool_calls=done.tool_calls, finish_reason=done.finish_reason, usage=done.usage)

    async def generate(messages: list[Message], params: GenerationParams, *, raw: str | None = None,
                       streamed: bool = True) -> AsyncIterator[Chunk]:
        """Stream from the model, counted in ``in_flight`` and the latency histogram however it ends."""
        started = time.perf_counter()
        first = True
        try:
            with metrics.generating():
                if raw is not None:
                    source = model.astream_prompt(raw, params)
                elif not streamed and model.generates_whole:
                    source = whole(messages, params)
                else:
                    source = model.astream(messages, params)
                async with aclosing(source):
                    async for chunk in source:
                        if first and chunk.text:
                            metrics.ttft.observe(time.perf_counter() - started)
                            first = False
                        if chunk.usage is not None:
                            metrics.prompt_tokens += chunk.usage.prompt_tokens
                            metrics.completion_tokens += chunk.usage.completion_tokens
                        yield chunk
        except ContextOverflowError as exc:
            raise APIError(400, str(exc), param="messages", code="context_length_exceeded") from None
        except ConfigurationError as exc:
            raise APIError(400, str(exc), code="invalid_parameter") from None
        except NotImplementedError as exc:
            raise APIError(400, str(exc), code="unsupported_parameter") from None
        except HanlinError as exc:
            raise APIError(500, str(exc), type="server_error") from None
        finally:
            metrics.latency.observe(time.perf_counter() - started)

    async def collect(messages: list[Message], params: GenerationParams, *, raw: str | None = None) -> list[Chunk]:
        async with aclosing(generate(messages, params, raw=raw, streamed=False)) as stream:
            return [c async for c in stream]

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": name, "queue_depth": metrics.queue_depth, "in_flight": metrics.in_flight}

    @app.get("/metrics")
    async def metrics_route() -> PlainTextResponse:
        return PlainTextResponse(metrics.render())

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        authenticate(request)
        entry: dict[str, Any] = {"id": name, "object": "model", "created": 0, "owned_by": "hanlin"}
        if model.capabilities.context_length:  # as vLLM says it, so a remote client knows when a reply was cut
            entry["max_model_len"] = model.capabilities.context_length
        data = [entry]
        if agent is not None:
            data.append({"id": agent_name, "object": "model", "created": 0, "owned_by": "hanlin-agent"})
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions", openapi_extra=_openapi_extra(ChatRequest, served, app, chat_examples(name)))
    async def chat(request: Request) -> Any:
        authenticate(request)
        req = await read_json(request, ChatRequest, max_body_bytes)
        served_model(req.model)
        try:
            messages = to_messages(req.messages)
        except (ConfigurationError, ValidationError) as exc:
            raise APIError(400, f"invalid messages: {exc}", param="messages") from None
        if agent is not None and req.model == agent_name:
            with admission.admit(), metrics.generating():
                reply = await agent_reply(agent, messages, req)
            metrics.requests[("/v1/chat/completions", 200)] += 1
            return reply
        plan = plan_tools(req, model)
        params = GenerationParams(
            max_tokens=req.max_completion_tokens or req.max_tokens, temperature=req.temperature, top_p=req.top_p,
            seed=req.seed, frequency_penalty=req.frequency_penalty, presence_penalty=req.presence_penalty,
            stop=req.stop or [], constraint=plan.constraint, tools=plan.tools,
            tool_choice=plan.tool_choice, parallel_tool_calls=req.parallel_tool_calls,
            ground_arguments=req.ground_arguments,
        )
        completion_id = "chatcmpl-" + uuid.uuid4().hex[:24]
        created = int(time.time())
        slot = admission.admit()
        if not req.stream:
            with slot:
                completion = completion_from_chunks(await collect(messages, params))
            text, calls = plan.calls(completion)
            metrics.requests[("/v1/chat/completions", 200)] += 1
            message: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else "")}
            if calls:
                message["tool_calls"] = [c.to_openai() for c in calls]
            return {
                "id": completion_id, "object": "chat.completion", "created": created, "model": req.model,
                "choices": [{"index": 0, "message": message, "logprobs": None,
                             "finish_reason": "tool_calls" if calls else completion.finish_reason}],
                "usage": usage(completion.usage),
            }

        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            return sse({"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": req.model,
                        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})

        async def events() -> AsyncIterator[str]:
            collected: list[Chunk] = []
            yield chunk({"role": "assistant", "content": ""})
            with slot:  # given back when generation ends, before the closing events are written
                async with aclosing(generate(messages, params)) as stream:
                    async for piece in stream:
                        collected.append(piece)
                        if piece.text and plan.forced_json is None:
                            yield chunk({"content": piece.text})
            completion = completion_from_chunks(collected)
            _, calls = plan.calls(completion)
            if plan.forced_json is not None and not calls:
                yield chunk({"content": completion.text})  # not a call after all: the text the model wrote
            for delta in tool_call_deltas(calls):
                yield chunk(delta)
            yield chunk({}, "tool_calls" if calls else completion.finish_reason)
            if include_usage:
                yield sse({"id": completion_id, "object": "chat.completion.chunk", "created": created,
                           "model": req.model, "choices": [], "usage": usage(completion.usage)})
            yield DONE

        return ClosingStreamingResponse(_guarded(events(), metrics, "/v1/chat/completions"), slot.release,
                                        media_type="text/event-stream")

    @app.post("/v1/completions", openapi_extra=_openapi_extra(CompletionRequest, served, app,
                                                               completion_examples(name)))
    async def completions(request: Request) -> Any:
        authenticate(request)
        req = await read_json(request, CompletionRequest, max_body_bytes)
        served_model(req.model)
        if agent is not None and req.model == agent_name:
            raise APIError(400, "agents are served through /v1/chat/completions", param="model")
        stop = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
        params = GenerationParams(max_tokens=req.max_tokens, temperature=req.temperature, top_p=req.top_p, seed=req.seed,
                                  frequency_penalty=req.frequency_penalty, presence_penalty=req.presence_penalty,
                                  stop=stop)
        completion_id = "cmpl-" + uuid.uuid4().hex[:24]
        created = int(time.time())
        slot = admission.admit()
        if not req.stream:
            with slot:
                completion = completion_from_chunks(await collect([], params, raw=req.prompt))
            metrics.requests[("/v1/completions", 200)] += 1
            return {"id": completion_id, "object": "text_completion", "created": created, "model": req.model,
                    "choices": [{"index": 0, "text": completion.text, "logprobs": None, "finish_reason": completion.finish_reason}],
                    "usage": usage(completion.usage)}

        async def events() -> AsyncIterator[str]:
            with slot:
                async with aclosing(generate([], params, raw=req.prompt)) as stream:
                    async for piece in stream:
                        yield sse({"id": completion_id, "object": "text_completion", "created": created, "model": req.model,
                                   "choices": [{"index": 0, "text": piece.text, "logprobs": None,
                                                "finish_reason": piece.finish_reason}]})
            yield DONE

        return ClosingStreamingResponse(_guarded(events(), metrics, "/v1/completions"), slot.release,
                                        media_type="text/event-stream")

    from hanlin.server.ui import mount_ui  # the web UI: the page at /, its API under /v1/ui

    context = ServerContext(model=model, model_name=name, authenticate=authenticate, admission=admission,
                            metrics=metrics, max_body_bytes=max_body_bytes, app_options=dict(app_options or {}))
    app.state.hanlin = context
    mount_ui(app, model, model_name=name, authenticate=authenticate, admission=admission, metrics=metrics,
             max_body_bytes=max_body_bytes, agent=agent, eval_folders=eval_folders, context=context)
    # App plugins (research, assistant, third parties) add their routes and pages; one that fails is recorded by
    # the plugin manager (see `hanlin plugins`) and the server starts without it.
    plugins().add_routes(app)
    check_claimed(context)
    _install_openapi(app)
    return app


def _install_openapi(app: FastAPI) -> None:
    """Add the request-body schemas the routes document to the generated OpenAPI document."""
    default = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = default()
            schema.setdefault("components", {}).setdefault("schemas", {}).update(app.state.openapi_schemas)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
