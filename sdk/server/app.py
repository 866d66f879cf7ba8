"""The OpenAI-compatible application: routes, errors in OpenAI's shape, streaming, metrics.

Every failure a client can cause is answered with OpenAI's error JSON and the
matching status, and the server goes on serving. Generation runs in worker
threads (the runtimes are blocking C code); a streaming client that goes away
cancels its generation, which frees the model for the next request.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import ValidationError

from hanlin.agent import Agent
from hanlin.chat_model import ChatModel, Chunk, Constraint, GenerationParams, completion_from_chunks
from hanlin.errors import ConfigurationError, ContextOverflowError, HanlinError
from hanlin.messages import Message, to_messages
from hanlin.server.metrics import Metrics
from hanlin.server.schema import ChatRequest, CompletionRequest


class APIError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


def _validation_error(exc: ValidationError) -> APIError:
    first = exc.errors()[0]
    param = ".".join(str(p) for p in first["loc"]) or None
    return APIError(400, f"invalid value for '{param}': {first['msg']}", param=param, code="invalid_parameter")


async def _body(request: Request, model: type) -> Any:
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, f"the request body is not valid JSON: {exc}", code="malformed_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object", code="malformed_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc) from None


def _constraint(req: ChatRequest, model: ChatModel) -> Constraint | None:
    fmt = req.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        constraint = Constraint(json_schema={"type": "object"})
    else:
        schema = (fmt.json_schema or {}).get("schema")
        if not isinstance(schema, dict):
            raise APIError(400, "response_format json_schema needs json_schema.schema (an object)", param="response_format")
        constraint = Constraint(json_schema=schema)
    if not model.supports(constraint):
        raise APIError(400, f"model '{model.name}' cannot constrain its output, so response_format is unsupported",
                       param="response_format", code="unsupported_parameter")
    return constraint


def _forced_tool(req: ChatRequest) -> list[dict[str, Any]] | None:
    """The tools a tool_choice forces a call to (None when the model may answer in text)."""
    choice = req.tool_choice
    if not req.tools or choice in (None, "auto", "none"):
        return None
    if choice == "required":
        return req.tools
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        chosen = [t for t in req.tools if t.get("function", {}).get("name") == name]
        if not chosen:
            raise APIError(400, f"tool_choice names '{name}', which is not in tools", param="tool_choice")
        return chosen
    raise APIError(400, f"tool_choice must be 'auto', 'none', 'required' or a function, got {choice!r}", param="tool_choice")


def _call_schema(tools: list[dict[str, Any]]) -> dict[str, Any]:
    """JSON schema for {"name": ..., "arguments": {...}} over the given tools."""
    options = []
    for t in tools:
        fn = t.get("function", t)
        options.append({
            "type": "object",
            "properties": {"name": {"const": fn["name"]}, "arguments": fn.get("parameters") or {"type": "object"}},
            "required": ["name", "arguments"],
        })
    return options[0] if len(options) == 1 else {"anyOf": options}


def create_app(
    model: ChatModel,
    *,
    model_name: str | None = None,
    api_key: str | None = None,
    agent: Agent | None = None,
    agent_name: str = "hanlin-agent",
    max_queue: int = 32,
) -> FastAPI:
    """An app serving ``model`` (and, optionally, ``agent`` as a model named ``agent_name``)."""
    name = model_name or model.name
    metrics = Metrics()
    app = FastAPI(title="hanlin", version="0.1.0")
    app.state.metrics = metrics

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        metrics.requests[(request.url.path, exc.status)] += 1
        return exc.response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        metrics.requests[(request.url.path, 500)] += 1
        return APIError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error").response()

    def check(request: Request, requested: str) -> None:
        if api_key is not None:
            header = request.headers.get("authorization", "")
            if header != f"Bearer {api_key}":
                problem = "missing" if not header else "wrong"
                raise APIError(401, f"{problem} API key: send 'Authorization: Bearer <key>'", type="authentication_error",
                               code="invalid_api_key")
        if requested not in (name, agent_name if agent else None):
            served = [name] + ([agent_name] if agent else [])
            raise APIError(404, f"model '{requested}' is not served here; available: {', '.join(served)}",
                           param="model", code="model_not_found")

    def admit() -> None:
        """Take a slot for one generation, or refuse with 429; every admit is paired with one release."""
        if metrics.queue_depth >= max_queue:
            raise APIError(429, f"server busy: {metrics.queue_depth} requests queued (limit {max_queue}); retry shortly",
                           type="rate_limit_error", code="overloaded")
        metrics.queue_depth += 1

    def release() -> None:
        metrics.queue_depth -= 1

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": name, "queue_depth": metrics.queue_depth}

    @app.get("/metrics")
    async def metrics_route() -> PlainTextResponse:
        return PlainTextResponse(metrics.render())

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        if api_key is not None and request.headers.get("authorization") != f"Bearer {api_key}":
            raise APIError(401, "missing or wrong API key", type="authentication_error", code="invalid_api_key")
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "hanlin"}]
        if agent is not None:
            data.append({"id": agent_name, "object": "model", "created": 0, "owned_by": "hanlin-agent"})
        return {"object": "list", "data": data}

    async def generate(messages: list[Message], params: GenerationParams, *, raw: str | None = None) -> AsyncIterator[Chunk]:
        """Stream from the model on an admitted slot, releasing it however the stream ends (cancellation too)."""
        started = time.perf_counter()
        first = True
        try:
            source = model.astream(messages, params) if raw is None else model.astream_prompt(raw, params)
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

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        req: ChatRequest = await _body(request, ChatRequest)
        check(request, req.model)
        try:
            messages = to_messages(req.messages)
        except (ConfigurationError, ValidationError) as exc:
            raise APIError(400, f"invalid messages: {exc}", param="messages") from None
        if agent is not None and req.model == agent_name:
            admit()
            try:
                return await _agent_reply(agent, messages, req, metrics)
            finally:
                release()
        forced = _forced_tool(req) if req.tool_choice != "none" else None
        constraint = _constraint(req, model)
        tools, tool_choice = None, None
        if req.tools and req.tool_choice != "none" and model.capabilities.native_tools and constraint is None:
            # The runtime reads every call format its model writes; where it can constrain decoding, tool_choice
            # required/named is forced by its call grammar and auto is constrained from the first sign of a call.
            tools, tool_choice = req.tools, req.tool_choice
        elif forced is not None:
            if not model.supports(Constraint(json_schema={})):
                raise APIError(400, f"model '{model.name}' can neither call tools natively nor constrain its output",
                               param="tool_choice", code="unsupported_parameter")
            if constraint is not None:
                raise APIError(400, "response_format and a forced tool_choice cannot be combined: the reply is "
                               "either a tool call or the formatted answer", param="response_format")
            constraint = Constraint(json_schema=_call_schema(forced))  # the call as one JSON object
        elif req.tools and req.tool_choice != "none":
            if not model.capabilities.native_tools:
                raise APIError(400, f"model '{model.name}' has no native tool calling; use tool_choice 'required' or a "
                               "named function (served with constrained decoding)", param="tools", code="unsupported_parameter")
            tools = req.tools  # with response_format: the formatted answer, or a call the model writes anyway
        params = GenerationParams(
            max_tokens=req.max_completion_tokens or req.max_tokens, temperature=req.temperature, top_p=req.top_p,
            seed=req.seed, stop=req.stop or [], constraint=constraint, tools=tools, tool_choice=tool_choice,
            parallel_tool_calls=req.parallel_tool_calls,
        )
        completion_id = "chatcmpl-" + uuid.uuid4().hex[:24]
        created = int(time.time())
        admit()
        if not req.stream:
            try:
                chunks = [c async for c in generate(messages, params)]
            finally:
                release()
            completion = completion_from_chunks(chunks)
            text, calls = completion.text, completion.tool_calls
            if constraint is not None and forced is not None and tools is None:
                calls = _as_call(text)
                text = "" if calls else text  # a call cut short by max_tokens stays visible as text
            metrics.requests[("/v1/chat/completions", 200)] += 1
            message: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else "")}
            if calls:
                message["tool_calls"] = [c.to_openai() for c in calls]
            return {
                "id": completion_id, "object": "chat.completion", "created": created, "model": req.model,
                "choices": [{"index": 0, "message": message, "logprobs": None,
                             "finish_reason": "tool_calls" if calls else completion.finish_reason}],
                "usage": _usage(completion.usage),
            }

        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        forced_json = constraint is not None and forced is not None and tools is None

        async def events() -> AsyncIterator[str]:
            def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
                body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": req.model,
                        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
                return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

            collected: list[Chunk] = []
            try:
                yield chunk({"role": "assistant", "content": ""})
                async for piece in generate(messages, params):
                    collected.append(piece)
                    if piece.text and not forced_json:
                        yield chunk({"content": piece.text})
            except APIError as exc:
                yield f"data: {json.dumps({'error': {'message': exc.message, 'type': exc.type, 'code': exc.code}})}\n\n"
                yield "data: [DONE]\n\n"
                return
            finally:
                release()  # also when the client went away: the slot is free for the next request
            completion = completion_from_chunks(collected)
            calls = _as_call(completion.text) if forced_json else completion.tool_calls
            for delta in tool_call_deltas(calls):
                yield chunk(delta)
            yield chunk({}, "tool_calls" if calls else completion.finish_reason)
            if include_usage:
                body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": req.model,
                        "choices": [], "usage": _usage(completion.usage)}
                yield f"data: {json.dumps(body)}\n\n"
            metrics.requests[("/v1/chat/completions", 200)] += 1
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        req: CompletionRequest = await _body(request, CompletionRequest)
        check(request, req.model)
        if agent is not None and req.model == agent_name:
            raise APIError(400, "agents are served through /v1/chat/completions", param="model")
        stop = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
        params = GenerationParams(max_tokens=req.max_tokens, temperature=req.temperature, top_p=req.top_p, seed=req.seed, stop=stop)
        completion_id = "cmpl-" + uuid.uuid4().hex[:24]
        created = int(time.time())
        admit()
        if not req.stream:
            try:
                completion = completion_from_chunks([c async for c in generate([], params, raw=req.prompt)])
            finally:
                release()
            metrics.requests[("/v1/completions", 200)] += 1
            return {"id": completion_id, "object": "text_completion", "created": created, "model": req.model,
                    "choices": [{"index": 0, "text": completion.text, "logprobs": None, "finish_reason": completion.finish_reason}],
                    "usage": _usage(completion.usage)}

        async def events() -> AsyncIterator[str]:
            try:
                async for piece in generate([], params, raw=req.prompt):
                    body = {"id": completion_id, "object": "text_completion", "created": created, "model": req.model,
                            "choices": [{"index": 0, "text": piece.text, "logprobs": None, "finish_reason": piece.finish_reason}]}
                    yield f"data: {json.dumps(body, ensure_ascii=False)}\n\n"
            finally:
                release()
            metrics.requests[("/v1/completions", 200)] += 1
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


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


def _as_call(text: str) -> list[Any]:
    """The forced call the grammar produced; none if generation stopped early (max_tokens) and the JSON is cut."""
    from hanlin.messages import ToolCall

    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return []
    return [ToolCall(name=data["name"], arguments=data.get("arguments") or {})]


def _usage(usage: Any) -> dict[str, Any]:
    out = {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
           "total_tokens": usage.total_tokens}
    if usage.prompt_tokens_reused is not None:
        out["prompt_tokens_details"] = {"cached_tokens": usage.prompt_tokens_reused}
    return out


async def _agent_reply(agent: Agent, messages: list[Message], req: ChatRequest, metrics: Metrics) -> Any:
    """Run the agent on the last user message, with the earlier messages as its memory."""
    if messages[-1].role != "user":
        raise APIError(400, "the last message for an agent must be a user message", param="messages")
    result = await agent.arun(messages[-1], history=[m for m in messages[:-1] if m.role != "system"])
    steps = [e.model_dump(mode="json") for e in result.events if e.type in ("tool_call", "tool_result", "error")]
    text = result.output_text if result.status == "answered" else f"(agent {result.status}: {result.error})"
    metrics.requests[("/v1/chat/completions", 200)] += 1
    created, cid = int(time.time()), "chatcmpl-" + uuid.uuid4().hex[:24]
    finish = "stop" if result.status == "answered" else "length"
    if not req.stream:
        return {"id": cid, "object": "chat.completion", "created": created, "model": req.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
                "usage": _usage(result.usage), "hanlin_status": result.status, "hanlin_steps": steps}

    async def events() -> AsyncIterator[str]:
        base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": req.model}
        for step in steps:  # extra fields standard clients ignore
            yield f"data: {json.dumps({**base, 'choices': [{'index': 0, 'delta': {}, 'finish_reason': None}], 'hanlin_step': step})}\n\n"
        yield f"data: {json.dumps({**base, 'choices': [{'index': 0, 'delta': {'role': 'assistant', 'content': text}, 'finish_reason': None}]})}\n\n"
        yield f"data: {json.dumps({**base, 'choices': [{'index': 0, 'delta': {}, 'finish_reason': finish}]})}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")
