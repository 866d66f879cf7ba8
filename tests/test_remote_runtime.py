"""The remote runtime's HTTP behaviour against a small scripted endpoint on loopback: retries, errors, tool calls."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from hanlin import ConfigurationError, ContextOverflowError, ModelError, load_model

pytest.importorskip("httpx")


class Endpoint:
    """Answers POST /v1/chat/completions with the scripted (status, body) pairs, in order."""

    def __init__(self, replies: list[tuple[int, object]], models: dict | None = None) -> None:
        self.replies = list(replies)
        self.models = models
        self.requests: list[dict] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                endpoint.requests.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                status, body = endpoint.replies.pop(0)
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/event-stream" if isinstance(body, str) else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                if endpoint.models is None or self.path != "/v1/models":
                    self.send_error(404)
                    return
                data = json.dumps(endpoint.models).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        self.server.shutdown()


def sse(*events: dict) -> str:
    return "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"


def delta(**d) -> dict:
    return {"choices": [{"index": 0, "delta": d, "finish_reason": None}]}


OK = sse(delta(role="assistant", content=""), delta(content="Hel"), delta(content="lo"),
         {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
         {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}})
BUSY = (503, {"error": {"message": "busy", "type": "server_error", "code": None}})


@pytest.fixture
def endpoint():
    made = []

    def make(replies, models=None):
        made.append(Endpoint(replies, models))
        return made[-1]

    yield make
    for e in made:
        e.close()


def test_retries_busy_answers_with_backoff(endpoint) -> None:
    server = endpoint([BUSY, BUSY, (200, OK)])
    model = load_model("any-model", runtime="remote", base_url=server.url, api_key="k", backoff=0.01)
    completion = model.generate("hi", max_tokens=5, temperature=0, frequency_penalty=0.5)
    assert completion.text == "Hello" and completion.usage.total_tokens == 7
    assert len(server.requests) == 3
    body = server.requests[0]
    assert body["model"] == "any-model" and body["stream"] is True and body["max_tokens"] == 5
    assert body["frequency_penalty"] == 0.5 and "presence_penalty" not in body  # what was not set is not sent


def test_gives_up_after_max_retries(endpoint) -> None:
    server = endpoint([BUSY, BUSY])
    model = load_model("m", runtime="remote", base_url=server.url, max_retries=1, backoff=0.01)
    with pytest.raises(ModelError, match="503: busy"):
        model.generate("hi")


def test_client_errors_are_not_retried_and_map_to_hanlin_errors(endpoint) -> None:
    too_long = (400, {"error": {"message": "prompt too long", "type": "invalid_request_error", "code": "context_length_exceeded"}})
    server = endpoint([too_long, (401, {"error": {"message": "bad key"}})])
    model = load_model("m", runtime="remote", base_url=server.url, backoff=0.01)
    with pytest.raises(ContextOverflowError, match="prompt too long"):
        model.generate("hi")
    with pytest.raises(ModelError, match="401: bad key"):
        model.generate("hi")
    assert len(server.requests) == 2


def test_streamed_tool_call_fragments_are_joined(endpoint) -> None:
    parts = [
        delta(role="assistant", tool_calls=[{"index": 0, "id": "c1", "type": "function", "function": {"name": "calculator", "arguments": ""}}]),
        delta(tool_calls=[{"index": 0, "function": {"arguments": '{"expression": '}}]),
        delta(tool_calls=[{"index": 0, "function": {"arguments": '"6*7"}'}}]),
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]
    server = endpoint([(200, sse(*parts))])
    model = load_model("m", runtime="remote", base_url=server.url)
    completion = model.generate("6*7?", tools=[{"type": "function", "function": {"name": "calculator", "parameters": {}}}])
    assert completion.finish_reason == "tool_calls"
    assert [(c.id, c.name, c.arguments) for c in completion.tool_calls] == [("c1", "calculator", {"expression": "6*7"})]
    assert server.requests[0]["tools"][0]["function"]["name"] == "calculator"
    assert "parallel_tool_calls" not in server.requests[0] and "ground_arguments" not in server.requests[0]


def test_tool_options_travel_to_the_endpoint(endpoint) -> None:
    server = endpoint([(200, OK)])
    model = load_model("m", runtime="remote", base_url=server.url)
    model.generate("6*7?", tools=[{"type": "function", "function": {"name": "calculator", "parameters": {}}}],
                   parallel_tool_calls=False, ground_arguments=False)
    assert server.requests[0]["parallel_tool_calls"] is False and server.requests[0]["ground_arguments"] is False


def test_unreachable_endpoint_and_missing_url() -> None:
    from hanlin import ConfigurationError

    with pytest.raises(ModelError, match="cannot reach"):
        load_model("m", runtime="remote", base_url="http://127.0.0.1:9/v1", max_retries=0).generate("hi")
    with pytest.raises(ConfigurationError, match="needs base_url"):
        import os

        saved = {k: os.environ.pop(k) for k in ("HANLIN_BASE_URL", "OPENAI_BASE_URL") if k in os.environ}
        try:
            load_model("m", runtime="remote")
        finally:
            os.environ.update(saved)


def test_a_stream_event_that_is_not_json_is_a_clear_model_error(endpoint) -> None:
    server = endpoint([(200, 'data: {"choices": [\n\n'), (200, "data: [1, 2]\n\n")])
    model = load_model("m", runtime="remote", base_url=server.url, backoff=0.01)
    with pytest.raises(ModelError, match="sent a stream event that is not JSON"):
        model.generate("hi")
    with pytest.raises(ModelError, match="not a JSON object"):
        model.generate("hi")


def test_context_length_comes_from_the_endpoint_or_the_option(endpoint) -> None:
    listing = {"object": "list", "data": [{"id": "other", "max_model_len": 999},
                                          {"id": "m", "object": "model", "max_model_len": 4096}]}
    server = endpoint([(200, sse(delta(content="cut"), {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}],
                                                       "usage": {"prompt_tokens": 4000, "completion_tokens": 95}}))],
                      models=listing)
    model = load_model("m", runtime="remote", base_url=server.url)
    assert model.capabilities.context_length == 4096
    # a reply cut by the full context ends the agent run with the reason, not with retries of a "mistake"
    from hanlin import Agent

    result = Agent(model, [], protocol="react", max_retries=3).run("go")
    assert result.status == "error" and "filled the model's context (4095 of 4096 tokens)" in result.error
    assert len(server.requests) == 1
    assert load_model("m", runtime="remote", base_url=server.url, context_length=2048).capabilities.context_length == 2048
    silent = endpoint([])  # no /models listing: unknown, and loading still works
    assert load_model("m", runtime="remote", base_url=silent.url).capabilities.context_length is None
    with pytest.raises(ConfigurationError, match="context_length must be a positive"):
        load_model("m", runtime="remote", base_url=silent.url, context_length=0)
