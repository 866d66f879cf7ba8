"""The server fuzzed from its own OpenAPI document (schemathesis), against a real server on loopback.

Whatever schemathesis sends, valid by the schema or deliberately not, the server must never answer 5xx, every
error must be in OpenAI's shape ``{"error": {"message", "type", ...}}``, and a stream that starts must not end in a
server error. Two of schemathesis's phases run: coverage (the documented examples, then every schema keyword at and
past its boundaries) and fuzzing (random bodies, valid and not). The model is scripted (the server is under test,
not the model), and the run is bounded: a few hundred requests, well under a minute.
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
    schema = schemathesis.openapi.from_url(fuzz_server + "/openapi.json")
    # schemathesis stops reading an event stream after 20 events by default; a long echo has more, and the end of
    # the stream ([DONE], no error event) is what is checked
    schema.config.max_stream_events = 100_000
    return schema


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
        assert not response.stream_cut_short, "the client stopped reading the stream before it ended"
        events = [line[len("data: "):] for line in response.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        assert not any("error" in json.loads(e) for e in events[:-1]), response.text


ROUTES = ["POST /v1/chat/completions", "POST /v1/completions", "GET /v1/models", "GET /health", "GET /metrics"]


@pytest.mark.parametrize("route", ROUTES)
def test_coverage_cases_from_the_schema_and_its_examples(fuzz_server, api_schema, route) -> None:
    """Schemathesis's coverage phase: each documented example, then each keyword of the schema at and past its
    boundaries (missing required fields, wrong types, out-of-range values, unexpected methods), one at a time."""
    method, path = route.split()
    operation = api_schema[path][method]
    cases = api_schema.iter_coverage_cases(operation, generation_modes=list(GenerationMode),
                                           generation_config=api_schema.config.generation_for(operation=operation))
    for case in cases:
        _check(case.call(base_url=fuzz_server, headers={"Authorization": f"Bearer {KEY}"}, timeout=30))


@pytest.mark.parametrize("route,mode,examples", [
    ("POST /v1/chat/completions", GenerationMode.POSITIVE, 40),
    ("POST /v1/chat/completions", GenerationMode.NEGATIVE, 40),
    ("POST /v1/completions", GenerationMode.POSITIVE, 20),
    ("POST /v1/completions", GenerationMode.NEGATIVE, 20),
])
def test_random_bodies_valid_or_not(fuzz_server, api_schema, route, mode, examples) -> None:
    """Schemathesis's fuzzing phase: random bodies that match the schema (positive) or break it (negative)."""
    method, path = route.split()
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    def fuzz(case) -> None:
        _check(case.call(base_url=fuzz_server, headers={"Authorization": f"Bearer {KEY}"}, timeout=30))

    fuzz()
