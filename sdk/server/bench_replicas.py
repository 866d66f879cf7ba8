"""`hanlin bench serve --replicas 1 --replicas 2`: the same bounded load on `hanlin serve` and on `hanlin serve
--replicas N`, each started here on a loopback port, measured one after the other in the same run.

The baseline is the plain server (one process, the runtime's default threads: every core on the cpu runtime); the
replicas split the cores between them (``replica_config``). The load is the serve bench's own (``bench._http_load``:
N streamed chat requests, C at a time), so the numbers compare with `hanlin bench serve --url`.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

from hanlin.bench import BenchTable
from hanlin.errors import ConfigurationError, ModelError
from hanlin.server.bench import _http_load, _percentile
from hanlin.server.replicas import START_TIMEOUT_S, _free_ports


def _start(model: str, runtime: str | None, replicas: int) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_ports(1)[0]
    cmd = [sys.executable, "-m", "hanlin.cli", "serve", "--model", model, "--port", str(port)]
    cmd += (["--runtime", runtime] if runtime else []) + (["--replicas", str(replicas)] if replicas > 1 else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    import httpx

    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise ModelError(f"`{' '.join(cmd[2:])}` exited with status {proc.returncode}: "
                             f"{(proc.stderr.read() if proc.stderr else b'').decode(errors='replace')[-500:]}")
        try:
            if httpx.get(base + "/health", timeout=1.0).json().get("status") == "ok":
                return proc, base
        except (httpx.HTTPError, ValueError):
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise ModelError(f"`{' '.join(cmd[2:])}` did not become healthy within {START_TIMEOUT_S:.0f} s")
        time.sleep(0.3)


def bench_replicas(model: str, runtime: str | None = None, counts: Sequence[int] = (1, 2), *, requests: int = 16,
                   concurrency: int = 4, max_tokens: int = 32) -> BenchTable:
    """Requests/s and latency for each replica count; the ratio is against the first count (the baseline)."""
    if not counts or any(n < 1 for n in counts):
        raise ConfigurationError(f"--replicas takes counts of 1 or more, e.g. --replicas 1 --replicas 2; got {list(counts)}")
    table = BenchTable(
        title=f"serve across replicas: {requests} streamed chat requests, {concurrency} concurrent, {max_tokens} "
              f"tokens each, greedy, {model} on loopback",
        columns=["server", "req/s", "p50 s", "p99 s", "TTFT p50 s", "errors", "req/s ratio"],
        target="0 errors; more req/s with more replicas while cores are free",
    )
    base_rps = None
    for n in counts:
        proc, base = _start(model, runtime, n)
        try:
            asyncio.run(_http_load(base + "/v1", model, max(1, n), max(1, n), 2, None))  # warm every replica
            run = asyncio.run(_http_load(base + "/v1", model, requests, concurrency, max_tokens, None))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        rps = requests / run["wall"]
        base_rps = base_rps or rps
        label = "hanlin serve (1 process, baseline)" if n == 1 else f"hanlin serve --replicas {n}"
        table.rows.append([label, rps, statistics.median(run["lat"] or [float("nan")]), _percentile(run["lat"], 0.99),
                           statistics.median(run["ttft"] or [float("nan")]), run["errors"], f"{rps / base_rps:.2f}x"])
    table.met = all(row[5] == 0 for row in table.rows)
    return table
