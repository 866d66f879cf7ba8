"""A bounded load on a real loopback server: 200 requests, 16 at a time, one in four malformed or abandoned early.

What must hold (the `hanlin bench serve` load, with hostile clients mixed in): no 5xx; every malformed request gets
its 4xx; every good request gets exactly the answer it gets when sent alone; and when the load is over no slot is
held and nothing is generating (``queue_depth`` and ``in_flight`` back to 0), so clients that went away leaked
nothing. The model is scripted and slightly slow, so requests overlap; the figures are printed, never asserted.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Any

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from hanlin.server import create_app  # noqa: E402
from tests.loopback_server import EchoModel, serving  # noqa: E402

REQUESTS, CONCURRENCY = 200, 16
KEY = "sk-load"
AUTH = {"Authorization": f"Bearer {KEY}"}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}

# the bad quarter: (kind, what the server must answer; None for a client that leaves before the answer)
BAD = [
    ("invalid JSON", 400), ("text part null", 400), ("tool_calls 'abc'", 400), ("tool without name", 400),
    ("body over the limit", 413), ("no key", 401), ("gone after the first event", None), ("gone before the answer", None),
]


def _good(i: int) -> tuple[str, dict[str, Any]]:
    """The i-th good request: chat or completion, streamed or not, each with its own text."""
    stream = i % 2 == 0
    if i % 3 == 0:
        return "/v1/completions", {"model": "echo", "prompt": f"prompt number {i}", "stream": stream}
    return "/v1/chat/completions", {"model": "echo", "stream": stream,
                                    "messages": [{"role": "user", "content": f"question number {i}, please"}]}


def _bad_body(kind: str) -> bytes:
    user = [{"role": "user", "content": "hello"}]
    bodies = {
        "invalid JSON": b'{"model": "echo", "messages": [',
        "text part null": json.dumps({"model": "echo", "messages": [{"role": "user", "content": [{"type": "text", "text": None}]}]}).encode(),
        "tool_calls 'abc'": json.dumps({"model": "echo", "messages": [{"role": "assistant", "tool_calls": "abc"}, *user]}).encode(),
        "tool without name": json.dumps({"model": "echo", "messages": user, "tools": [{"type": "function", "function": {}}]}).encode(),
        "body over the limit": json.dumps({"model": "echo", "messages": [{"role": "user", "content": "x" * 20_000}]}).encode(),
    }
    return bodies.get(kind, json.dumps({"model": "echo", "messages": user, "stream": True}).encode())


async def _answer(client: httpx.AsyncClient, route: str, body: dict[str, Any]) -> tuple[int, Any]:
    """(status, the answer with ids and timestamps left out): the text, finish reason and usage the client sees."""
    if not body["stream"]:
        response = await client.post(route, json=body, headers=AUTH)
        if response.status_code != 200:
            return response.status_code, response.text
        data = response.json()
        choice = data["choices"][0]
        return 200, (choice.get("message", {}).get("content", choice.get("text")), choice["finish_reason"], data["usage"])
    async with client.stream("POST", route, json=body, headers=AUTH) as response:
        if response.status_code != 200:
            return response.status_code, await response.aread()
        events = [line[6:] async for line in response.aiter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]", events[-3:]
    choices = [json.loads(e)["choices"][0] for e in events[:-1]]
    text = "".join(c.get("delta", {}).get("content") or c.get("text") or "" for c in choices)
    return 200, (text, choices[-1]["finish_reason"])


async def _bad(client: httpx.AsyncClient, base: str, kind: str) -> int | None:
    body = _bad_body(kind)
    headers = {} if kind == "no key" else {**AUTH, "Content-Type": "application/json"}
    if kind == "gone after the first event":
        async with client.stream("POST", "/v1/chat/completions", content=body, headers=headers) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    break  # leaving the block closes the connection mid-stream
        return None
    if kind == "gone before the answer":  # the whole request sent, the socket closed before a byte comes back
        host, port = base.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        writer.write(head + body)
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        return None
    response = await client.post("/v1/chat/completions", content=body, headers=headers)
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error["message"], str) and error["type"], response.text
    return response.status_code


async def _load(base: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        alone = {i: await _answer(client, *_good(i)) for i in range(REQUESTS) if i % 4 != 3}  # one at a time
    statuses: Counter[str] = Counter()
    mismatches: list[tuple[int, Any, Any]] = []
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(client: httpx.AsyncClient, i: int) -> None:
        async with gate:
            if i % 4 == 3:
                kind, expected = BAD[(i // 4) % len(BAD)]
                status = await _bad(client, base, kind)
                statuses["disconnected early" if status is None else str(status)] += 1
                if status != expected:
                    mismatches.append((i, kind, status))
                return
            got = await _answer(client, *_good(i))
            statuses[str(got[0])] += 1
            if got != alone[i]:
                mismatches.append((i, alone[i], got))

    started = time.perf_counter()
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        await asyncio.gather(*(one(client, i) for i in range(REQUESTS)))
    return {"wall": time.perf_counter() - started, "statuses": statuses, "mismatches": mismatches}


def test_bounded_loopback_load_with_hostile_clients() -> None:
    model = EchoModel(delay=0.002, chunk_size=3)
    # more slots than clients, so only leaked slots (not a client's next request racing its last release) cause 429s
    app = create_app(model, model_name="echo", api_key=KEY, max_queue=CONCURRENCY + 8, max_body_bytes=16 * 1024)
    with serving(app) as base:
        run = asyncio.run(_load(base))
        deadline = time.monotonic() + 10  # a disconnect is noticed a moment after the client leaves
        while (app.state.metrics.queue_depth or app.state.metrics.in_flight) and time.monotonic() < deadline:
            time.sleep(0.02)
        health = httpx.get(base + "/health").json()
        gauge = next(x for x in httpx.get(base + "/metrics").text.splitlines() if x.startswith("hanlin_in_flight "))
    statuses = run["statuses"]
    server_errors = sum(n for s, n in statuses.items() if s.startswith("5"))
    print(f"\nload: {REQUESTS} requests, {CONCURRENCY} concurrent, in {run['wall']:.2f} s = {REQUESTS / run['wall']:.0f} req/s; "
          f"statuses {dict(sorted(statuses.items()))}; 5xx {server_errors}; answers differing from alone "
          f"{len(run['mismatches'])}; after: queue_depth {health['queue_depth']}, {gauge}")
    assert server_errors == 0
    assert run["mismatches"] == []
    assert statuses["200"] == REQUESTS - REQUESTS // 4
    assert health["queue_depth"] == 0 and health["in_flight"] == 0 and gauge == "hanlin_in_flight 0"
