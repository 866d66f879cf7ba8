"""The server fuzzed from its own OpenAPI document (schemathesis), against a real server on loopback.

Whatever schemathesis sends, valid by the schema or deliberately not, the server must never answer 5xx, every
error must be in OpenAI's shape ``{"error": {"message", "type", ...}}``, and a stream that starts must not end in a
server error. The model is scripted (the server is under test, not the model), and the run is bounded: a few dozen
examples per route, well under a minute.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("fastapi")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402

from hanlin import Agent, load_tool  # noqa: E402
from hanlin.server import create_app  # noqa: E402
from tests.loopback_server import EchoModel, serving  # noqa: E402

KEY = "sk-fuzz"
FIGURES: dict[str, int] = {"cases": 0, "2xx": 0, "4xx": 0}


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[str]:
    # no native tools: a forced tool_choice goes through the constrained-JSON path, and auto tools are refused
    model = EchoModel(native_tools=False, fail_on=None)
    agent = Agent(EchoModel(outputs=lambda messages, params: "Thought: done\nFinal Answer: ok", fail_on=None),
                  [load_tool("calculator")], protocol="react", max_steps=2)
    app = create_app(model, model_name="echo", api_key=KEY, agent=agent, agent_name="echo-agent",
                     max_body_bytes=64 * 1024)
    started = time.perf_counter()
    with serving(app) as base:
        yield base
    print(f"\nfuzz: {FIGURES['cases']} cases in {time.perf_counter() - started:.1f} s: {FIGURES['2xx']} 2xx, "
          f"{FIGURES['4xx']} 4xx, 0 5xx; in flight at the end: {app.state.metrics.in_flight}, "
          f"slots held: {app.state.metrics.queue_depth}")
    assert app.state.metrics.in_flight == 0 and app.state.metrics.queue_depth == 0


@pytest.fixture(scope="module")
def api_schema(fuzz_server):
    return schemathesis.openapi.from_url(fuzz_server + "/openapi.json")


def _check(response) -> None:
    FIGURES["cases"] += 1
    request = response.request
    assert response.status_code < 500, f"{request.method} {request.url} {request.body!r} -> {response.status_code} {response.text}"
    if response.status_code >= 400:
        FIGURES["4xx"] += 1
        error = response.json()["error"]
        assert isinstance(error["message"], str) and error["message"] and isinstance(error["type"], str)
        assert {"param", "code"} <= set(error)
        return
    FIGURES["2xx"] += 1
    if response.headers.get("content-type", [""])[0].startswith("text/event-stream"):  # schemathesis: header lists
        events = [line[len("data: "):] for line in response.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        assert not any("error" in json.loads(e) for e in events[:-1]), response.text


@pytest.mark.parametrize("route,mode,examples", [
    ("POST /v1/chat/completions", GenerationMode.POSITIVE, 60),
    ("POST /v1/chat/completions", GenerationMode.NEGATIVE, 60),
    ("POST /v1/completions", GenerationMode.POSITIVE, 30),
    ("POST /v1/completions", GenerationMode.NEGATIVE, 30),
    ("GET /v1/models", GenerationMode.POSITIVE, 3),
    ("GET /health", GenerationMode.POSITIVE, 3),
    ("GET /metrics", GenerationMode.POSITIVE, 3),
])
def test_no_input_makes_the_server_fail_and_every_error_has_openai_shape(fuzz_server, api_schema, route, mode, examples) -> None:
    method, path = route.split()
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    def fuzz(case) -> None:
        _check(case.call(base_url=fuzz_server, headers={"Authorization": f"Bearer {KEY}"}, timeout=30))

    fuzz()
