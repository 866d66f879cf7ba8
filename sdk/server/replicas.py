"""`hanlin serve --replicas N`: N model processes on loopback ports behind one OpenAI-compatible API.

Why processes: one llama.cpp context does not use many cores well, and a Python process serves one generation at a
time per model; N children each holding the model turn N cores into N concurrent replies. The front process holds
no weights: it serves the usual app (``create_app``) over the remote runtime given all N children's URLs, so the
remote runtime's router (least outstanding requests, health checks, failover before the first token, prefix
affinity for agent sessions, a per-replica limit equal to the child's queue) does the routing. The sdk reaches that
runtime through ``load_model(..., runtime="remote")``, that is through the plugin manager, never by import.

Children are started with a random key only the front knows (they listen on 127.0.0.1 only), are told by the
kernel to die with the front (``PR_SET_PDEATHSIG`` on Linux; elsewhere the front terminates them on exit), and each
gets ``cpu_count // N`` threads on the cpu runtime, or one GPU of its own on the gpu runtime. ``/health`` and ``/metrics`` of the front aggregate the
children's (``replica="i"`` labels).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from hanlin.errors import ConfigurationError, ModelError

START_TIMEOUT_S = 300.0


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _die_with_parent() -> None:
    """Run in the child before exec: the kernel sends it SIGTERM when the front process dies, even by SIGKILL."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux: the front's own clean-up (terminate on exit) still runs


def replica_config(model: str, runtime: str | None, replicas: int) -> dict[str, Any]:
    """Load options for each child: on the cpu runtime, its share of the cores (llama.cpp's default is all of them,
    and N contexts each spinning on every core run slower than one)."""
    from hanlin.loading import resolve_model

    threads = max(1, (os.cpu_count() or 1) // replicas)
    if runtime == "cpu" or (runtime is None and resolve_model(model).format == "gguf"):
        return {"n_threads": threads}
    return {}


def gpu_devices(n: int, visible: str | None = None, count: int | None = None) -> list[str]:
    """On the gpu runtime, child i sees one GPU: the i-th visible one (``CUDA_VISIBLE_DEVICES`` if set, else every
    device torch counts), round robin when there are more replicas than GPUs (they then share one)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
    if visible:
        ids = [d.strip() for d in visible.split(",") if d.strip()]
    else:
        if count is None:
            import torch

            count = torch.cuda.device_count()
        ids = [str(i) for i in range(count)]
    if not ids:
        raise ConfigurationError("--replicas with --runtime gpu needs a CUDA device, and none is visible here")
    return [ids[i % len(ids)] for i in range(n)]


class Replicas:
    """The child processes: started, waited for, and stopped."""

    def __init__(self, model: str, runtime: str | None, n: int, *, max_queue: int = 32,
                 config: dict[str, Any] | None = None) -> None:
        if n < 1:
            raise ConfigurationError(f"--replicas must be at least 1, got {n}")
        self.key = secrets.token_urlsafe(24)
        self.ports = _free_ports(n)
        self.urls = [f"http://127.0.0.1:{p}" for p in self.ports]
        env = {**os.environ, "HANLIN_API_KEY": self.key}
        devices = gpu_devices(n) if runtime == "gpu" else [None] * n
        self.procs: list[subprocess.Popen[bytes]] = []
        for port, device in zip(self.ports, devices):
            cmd = [sys.executable, "-m", "hanlin.server.replicas", "--model", model, "--port", str(port),
                   "--max-queue", str(max_queue), "--config", json.dumps(config or {})]
            if runtime:
                cmd += ["--runtime", runtime]
            child_env = env if device is None else {**env, "CUDA_VISIBLE_DEVICES": device}
            self.procs.append(subprocess.Popen(cmd, env=child_env, stdin=subprocess.DEVNULL,
                                               preexec_fn=_die_with_parent if sys.platform == "linux" else None))

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        """Every child answers /health, or a clear error naming the one that exited or did not start in time."""
        import httpx

        deadline = time.monotonic() + timeout
        pending = dict(enumerate(self.urls))
        while pending:
            for i, url in list(pending.items()):
                code = self.procs[i].poll()
                if code is not None:
                    self.stop()
                    raise ModelError(f"replica {i} ({url}) exited with status {code} while loading the model; its "
                                     "messages are above; run plain `hanlin serve` with the same options to see why")
                try:
                    if httpx.get(url + "/health", timeout=1.0).status_code == 200:
                        del pending[i]
                except httpx.HTTPError:
                    pass
            if pending and time.monotonic() > deadline:
                self.stop()
                raise ModelError(f"replicas {sorted(pending)} did not answer /health within {timeout:.0f} s")
            time.sleep(0.2)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _relabel(text: str, replica: int, families: dict[str, tuple[str, list[str]]]) -> None:
    """A child's Prometheus text into ``families``: names prefixed ``hanlin_replica_``, a ``replica`` label added."""
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            families.setdefault(name.replace("hanlin_", "hanlin_replica_", 1), (kind, []))
            continue
        if not line or line.startswith("#"):
            continue
        sample, _, value = line.rpartition(" ")
        name, brace, labels = sample.partition("{")
        family = name.replace("hanlin_", "hanlin_replica_", 1)
        for suffix in ("_bucket", "_sum", "_count"):
            if family not in families and family.endswith(suffix):
                family = family[: -len(suffix)]
        labelled = f'{name.replace("hanlin_", "hanlin_replica_", 1)}{{replica="{replica}"' + (
            f",{labels}" if brace else "}")
        families.setdefault(family, ("untyped", []))[1].append(f"{labelled} {value}")


def aggregate_routes(app: Any, model: Any, replicas: Replicas, metrics: Any) -> None:
    """Replace the app's /health and /metrics with ones that include every child's (the front's own numbers stay)."""
    import httpx
    from fastapi.responses import JSONResponse, PlainTextResponse

    app.router.routes = [r for r in app.router.routes if getattr(r, "path", None) not in ("/health", "/metrics")]

    async def fetch(path: str) -> list[Any]:
        async with httpx.AsyncClient(timeout=2.0) as client:
            async def one(url: str) -> Any:
                try:
                    response = await client.get(url + path)
                    return response.json() if path == "/health" else response.text
                except (httpx.HTTPError, ValueError) as exc:
                    return exc
            return await asyncio.gather(*(one(u) for u in replicas.urls))

    @app.get("/health")
    async def health() -> Any:
        answers = await fetch("/health")
        routed = model.router.snapshot()
        rows = []
        for i, (url, answer, route) in enumerate(zip(replicas.urls, answers, routed)):
            up = not isinstance(answer, Exception) and replicas.procs[i].poll() is None
            rows.append({"replica": i, "url": url, "pid": replicas.procs[i].pid, "up": up,
                         **({"health": answer} if up else {"error": str(answer) or "process exited"}),
                         "routed": {k: route[k] for k in ("healthy", "outstanding", "served", "failures")}})
        alive = sum(r["up"] for r in rows)
        status = "ok" if alive == len(rows) else "degraded" if alive else "down"
        body = {"status": status, "model": model.name, "replicas": rows, "queue_depth": metrics.queue_depth,
                "in_flight": metrics.in_flight}
        return JSONResponse(body, status_code=200 if alive else 503)

    @app.get("/metrics")
    async def metrics_route() -> PlainTextResponse:
        families: dict[str, tuple[str, list[str]]] = {"hanlin_replica_up": ("gauge", [])}
        for i, text in enumerate(await fetch("/metrics")):
            families["hanlin_replica_up"][1].append(f'hanlin_replica_up{{replica="{i}"}} {int(isinstance(text, str))}')
            if isinstance(text, str):
                _relabel(text, i, families)
        lines = [metrics.render().rstrip("\n")]
        for name, (kind, samples) in families.items():
            lines += [f"# TYPE {name} {kind}", *samples]
        return PlainTextResponse("\n".join(lines) + "\n")


def build_front(model: str, replicas: Replicas, *, api_key: str | None, max_queue: int, max_body_bytes: int) -> Any:
    """The front app: the standard routes over the remote runtime across the children, plus aggregated health."""
    from hanlin.loading import load_model
    from hanlin.server.app import create_app

    routed = load_model(model, runtime="remote", base_url=[u + "/v1" for u in replicas.urls], api_key=replicas.key,
                        max_concurrency=max_queue, health_interval=2.0)
    app = create_app(routed, model_name=model, api_key=api_key, max_queue=max_queue * len(replicas.urls),
                     max_body_bytes=max_body_bytes)
    aggregate_routes(app, routed, replicas, app.state.metrics)
    return app


def serve_replicas(model: str, runtime: str | None, n: int, *, host: str, port: int, api_key: str | None,
                   max_queue: int, max_body_bytes: int, say: Any = print) -> None:
    """Start the children, wait for them, serve the front until interrupted; the children stop with it."""
    import uvicorn

    replicas = Replicas(model, runtime, n, max_queue=max_queue, config=replica_config(model, runtime, n))
    try:
        replicas.wait_ready()
        app = build_front(model, replicas, api_key=api_key, max_queue=max_queue, max_body_bytes=max_body_bytes)
        say(f"serving {model} at http://{host}:{port}/v1 across {n} replicas ({', '.join(replicas.urls)})")
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        replicas.stop()


def _child(argv: Sequence[str] | None = None) -> None:
    """One replica: the model loaded with the front's options, served like `hanlin serve` on a loopback port."""
    import uvicorn

    from hanlin.loading import load_model
    from hanlin.server.app import create_app
    from hanlin.server.auth import resolve_api_key

    parser = argparse.ArgumentParser(prog="python -m hanlin.server.replicas", description=_child.__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--runtime")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-queue", type=int, default=32)
    parser.add_argument("--config", default="{}", help="load options as a JSON object, e.g. {\"n_threads\": 1}")
    args = parser.parse_args(argv)
    chat_model = load_model(args.model, runtime=args.runtime, **json.loads(args.config))
    app = create_app(chat_model, model_name=args.model, api_key=resolve_api_key(), max_queue=args.max_queue)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    _child()
