"""`hanlin bench serve`: the same bounded load through the HTTP server and straight into the runtime.

The server's overhead is the ratio between the two. The load is bounded (N
requests, C at a time) and only ever sent to a loopback address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import statistics
import time
from typing import Any
from urllib.parse import urlparse

from hanlin.bench import BenchTable
from hanlin.chat_model import ChatModel
from hanlin.errors import ConfigurationError

PROMPTS = [f"In one sentence, what is {topic}?" for topic in
           ("a compiler", "photosynthesis", "a prime number", "the moon", "a database index", "jazz", "an atom", "rain")]


def _check_loopback(url: str) -> None:
    host = urlparse(url).hostname or ""
    try:
        ok = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = False
    if not ok:
        raise ConfigurationError(f"hanlin bench serve only sends load to loopback addresses; {host!r} is not one")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


async def _http_load(url: str, model: str, n: int, concurrency: int, max_tokens: int, api_key: str | None) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    ttfts: list[float] = []
    errors = 0
    gate = asyncio.Semaphore(concurrency)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    async def one(client: httpx.AsyncClient, i: int) -> None:
        nonlocal errors
        body = {"model": model, "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                "max_tokens": max_tokens, "temperature": 0, "stream": True}
        async with gate:
            started = time.perf_counter()
            first = None
            try:
                async with client.stream("POST", "/chat/completions", json=body) as response:
                    if response.status_code != 200:
                        errors += 1
                        return
                    async for line in response.aiter_lines():
                        if first is None and line.startswith("data:") and '"content": "' in line and '"content": ""' not in line:
                            first = time.perf_counter() - started
            except httpx.HTTPError:
                errors += 1
                return
            latencies.append(time.perf_counter() - started)
            ttfts.append(first if first is not None else latencies[-1])

    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url.rstrip("/"), headers=headers, timeout=600) as client:
        await asyncio.gather(*(one(client, i) for i in range(n)))
    return {"wall": time.perf_counter() - started, "lat": latencies, "ttft": ttfts, "errors": errors}


async def _direct_load(model: ChatModel, n: int, concurrency: int, max_tokens: int) -> dict[str, Any]:
    latencies: list[float] = []
    ttfts: list[float] = []
    errors = 0
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        nonlocal errors
        async with gate:
            started = time.perf_counter()
            first = None
            try:
                async for chunk in model.astream(PROMPTS[i % len(PROMPTS)], max_tokens=max_tokens, temperature=0):
                    if first is None and chunk.text:
                        first = time.perf_counter() - started
            except Exception:
                errors += 1
                return
            latencies.append(time.perf_counter() - started)
            ttfts.append(first if first is not None else latencies[-1])

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return {"wall": time.perf_counter() - started, "lat": latencies, "ttft": ttfts, "errors": errors}


def bench_serve(url: str, model: ChatModel, served_name: str, *, requests: int = 16, concurrency: int = 4,
                max_tokens: int = 32, api_key: str | None = None) -> BenchTable:
    _check_loopback(url)
    model.generate("warm up", max_tokens=2)
    http = asyncio.run(_http_load(url, served_name, requests, concurrency, max_tokens, api_key))
    direct = asyncio.run(_direct_load(model, requests, concurrency, max_tokens))
    table = BenchTable(
        title=f"serve: {requests} chat requests, {concurrency} concurrent, {max_tokens} tokens each, streamed, greedy",
        columns=["path", "req/s", "p50 s", "p99 s", "TTFT p50 s", "errors", "req/s ratio"],
        target="0 errors; the ratio is the server's overhead",
    )
    base_rps = requests / direct["wall"]
    for label, run in (("in-process runtime (baseline)", direct), (f"hanlin serve {url}", http)):
        rps = requests / run["wall"]
        table.rows.append([label, rps, statistics.median(run["lat"] or [float("nan")]), _percentile(run["lat"], 0.99),
                           statistics.median(run["ttft"] or [float("nan")]), run["errors"], rps / base_rps])
    table.met = http["errors"] == 0 and direct["errors"] == 0
    table.notes.append(json.dumps({"server_wall_s": round(http["wall"], 3), "direct_wall_s": round(direct["wall"], 3)}))
    return table
