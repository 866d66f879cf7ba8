"""Serving across replicas: the router's rules, and `hanlin serve --replicas 3` on loopback with one replica killed
mid-load (real processes, the real SmolLM2 model on the cpu runtime, real HTTP)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from hanlin.errors import ConfigurationError, ModelError
from hanlin.runtimes.remote.router import Router, split_urls
from tests.conftest import requires_llama, requires_smollm2

httpx = pytest.importorskip("httpx")


# ---- the router's rules -----------------------------------------------------------------------------------------
def test_least_outstanding_wins_and_a_full_endpoint_makes_the_caller_wait() -> None:
    spread = Router(["a", "b", "c"])  # no limits: still never the busiest
    held = [spread.acquire() for _ in range(3)]
    assert sorted(e.url for e in held) == ["a", "b", "c"]
    spread.release(held[1])
    assert spread.acquire() is held[1]  # the one that freed up has the fewest outstanding
    router = Router(["a", "b"], max_concurrency=1, wait_timeout=5)
    first, second = router.acquire(), router.acquire()
    assert {first.url, second.url} == {"a", "b"}  # the idle one is chosen, never the busy one
    got: list[str] = []
    waiter = threading.Thread(target=lambda: got.append(router.acquire().url))
    waiter.start()
    time.sleep(0.2)
    assert got == []  # both at their limit: the third request waits instead of overloading one
    router.release(second)
    waiter.join(timeout=5)
    assert got == [second.url]
    busy = Router(["a"], max_concurrency=1, wait_timeout=0.2)
    busy.acquire()
    with pytest.raises(ModelError, match="free slot"):
        busy.acquire()


def test_a_session_keeps_its_endpoint_until_it_is_down_or_far_busier() -> None:
    router = Router(["a", "b", "c"], balance_threshold=2)
    home = router.acquire("session-1")
    router.release(home)
    for _ in range(3):
        other = router.acquire()  # other traffic lands elsewhere, the session stays
        assert router.acquire("session-1") is home
        router.release(home)
        router.release(other)
    router.release(home, failed=True, down=True, error="connection refused")
    moved = router.acquire("session-1")
    assert moved is not home and router.acquire("session-1") is moved  # re-pinned on a live one
    router.release(moved)
    router.release(moved)
    hogs = [router.acquire("session-1") for _ in range(2)]  # its endpoint now 2 busier than the idle one: it moves
    assert router.acquire("session-1") is not moved
    assert all(h is moved for h in hogs)
    limited = Router(["a", "b"], max_concurrency=1, wait_timeout=0.5)
    pinned = limited.acquire("s")
    assert limited.acquire("s") is not pinned  # its replica is full: the request goes on elsewhere, it does not wait


def test_excluded_and_down_endpoints() -> None:
    router = Router(["a", "b"])
    a = router.acquire(exclude=["b"])
    router.release(a, failed=True, down=True, error="refused")
    assert router.acquire().url == "b"  # the down one is skipped while another is up
    assert router.acquire(exclude=["b"]).url == "a"  # ... and used when nothing else is allowed
    with pytest.raises(ModelError, match="every endpoint failed"):
        router.acquire(exclude=["a", "b"])
    assert split_urls("http://x/v1/, http://y/v1") == ["http://x/v1", "http://y/v1"]
    with pytest.raises(ConfigurationError, match="twice"):
        split_urls(["http://x/v1", "http://x/v1/"])
    with pytest.raises(ConfigurationError, match="one per base URL"):
        Router(["a", "b"], max_concurrency=[1])


def test_replicas_refuse_options_they_cannot_honour() -> None:
    from typer.testing import CliRunner

    from hanlin.cli import app

    result = CliRunner().invoke(app, ["serve", "--replicas", "2", "--agent", "x"])
    assert result.exit_code == 2 and "--replicas serves the model alone" in result.output


# ---- a reply cut after its first tokens ---------------------------------------------------------------------------
class _Replica:
    """A loopback endpoint that streams "Hel" "lo" and [DONE], or (``cut``) "Hel" and then drops the connection,
    as a replica killed mid-reply does."""

    def __init__(self, cut: bool) -> None:
        import json
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        def event(**delta: Any) -> bytes:
            return f"data: {json.dumps({'choices': [{'index': 0, 'delta': delta, 'finish_reason': None}]})}\n\n".encode()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers["Content-Length"]))
                body = event(content="Hel") + (b"" if cut else event(content="lo") + b"data: [DONE]\n\n")
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Content-Length", str(len(body) + (10_000 if cut else 0)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"


def test_a_reply_cut_after_tokens_fails_a_stream_but_is_asked_again_when_nobody_saw_it() -> None:
    from hanlin.runtimes.remote.client import RemoteChatModel

    cut, whole = _Replica(cut=True), _Replica(cut=False)
    try:
        for streamed in (True, False):
            model = RemoteChatModel("m", base_url=[cut.url, whole.url], health_interval=0, backoff=0.01)
            busy = model.router.acquire(exclude=[cut.url])  # the whole replica is busier: the cut one goes first
            if streamed:
                pieces: list[str] = []
                with pytest.raises(ModelError, match="after part of the reply was sent"):
                    for chunk in model.stream("hi"):
                        pieces.append(chunk.text)
                assert pieces == ["Hel"]  # the caller saw a token: asking again would repeat it
            else:
                assert model.generate("hi").text == "Hello"  # nobody saw "Hel": asked again on the live replica
            model.router.release(busy)
            model.close()
    finally:
        cut.server.shutdown()
        whole.server.shutdown()


def test_the_servers_non_streamed_route_asks_a_cut_reply_again_on_another_replica() -> None:
    """`hanlin serve` in front of replicas: a non-streamed client has seen nothing when a replica dies mid-reply, so
    it gets the whole reply from the live replica (it got a 500 when the route collected the model's stream)."""
    from hanlin.runtimes.remote.client import RemoteChatModel
    from hanlin.server import create_app
    from tests.loopback_server import serving

    cut, whole = _Replica(cut=True), _Replica(cut=False)
    model = RemoteChatModel("m", base_url=[cut.url, whole.url], health_interval=0, backoff=0.01)
    try:
        with serving(create_app(model, model_name="front")) as url:
            busy = model.router.acquire(exclude=[cut.url])  # the cut replica goes first
            reply = httpx.post(f"{url}/v1/chat/completions", timeout=30,
                               json={"model": "front", "messages": [{"role": "user", "content": "hi"}]})
            assert reply.status_code == 200, reply.text
            assert reply.json()["choices"][0]["message"]["content"] == "Hello"
            model.router.release(busy)
    finally:
        model.close()
        cut.server.shutdown()
        whole.server.shutdown()


# ---- three real replicas on loopback ------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ask(base: str, content: str, system: str = "You are brief.", turns: list[dict[str, str]] | None = None,
         max_tokens: int = 8) -> tuple[int, str]:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": content}, *(turns or [])]
    response = httpx.post(base + "/v1/chat/completions", timeout=120,
                          json={"model": "smollm2", "messages": messages, "max_tokens": max_tokens, "temperature": 0})
    body = response.json()
    return response.status_code, (body["choices"][0]["message"]["content"] if response.status_code == 200
                                  else body["error"]["message"])


def _served(base: str) -> list[int]:
    return [r["routed"]["served"] for r in httpx.get(base + "/health", timeout=10).json()["replicas"]]


def _session_on_one_replica(base: str, name: str, steps: int, dead: tuple[int, ...] = ()) -> int:
    """Run an agent-like session (same system prompt and task, growing turns) step by step; the replica index each
    step went to must be the same every time; returns it. A ``dead`` replica's count grows by the attempt that found
    it dead (then retried elsewhere), so it is left out."""
    homes, turns = set(), []
    for step in range(steps):
        before = _served(base)
        status, text = _ask(base, f"Task {name}: count to three.", system=f"Agent {name}.", turns=turns)
        assert status == 200, text
        after = _served(base)
        homes |= {i for i, (b, a) in enumerate(zip(before, after)) if a > b and i not in dead}
        turns += [{"role": "assistant", "content": text or "ok"}, {"role": "user", "content": f"Step {step + 2}."}]
    assert len(homes) == 1, f"session {name} moved between replicas {homes} while they lived"
    return homes.pop()


@requires_llama
@requires_smollm2
def test_three_replicas_one_killed_mid_load() -> None:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    front = subprocess.Popen([sys.executable, "-m", "hanlin.cli", "serve", "-m", "smollm2", "-r", "cpu",
                              "--replicas", "3", "--port", str(port)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    children: list[int] = []
    try:
        deadline = time.time() + 120
        while True:
            assert front.poll() is None, front.stdout.read()
            try:
                health = httpx.get(base + "/health", timeout=1).json()
                break
            except httpx.HTTPError:
                assert time.time() < deadline, "the front did not answer within 120 s"
                time.sleep(0.3)
        assert health["status"] == "ok" and len(health["replicas"]) == 3
        children = [r["pid"] for r in health["replicas"]]

        results: list[tuple[int, str]] = []
        killed = threading.Event()

        def load(i: int) -> tuple[int, str]:
            result = _ask(base, f"Name a colour number {i}.")
            if i == 3:  # a few requests in: replica 1 dies with requests in flight and queued
                os.kill(children[1], signal.SIGKILL)
                killed.set()
            return result

        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(load, range(12)))
        assert killed.is_set()
        failed = [text for status, text in results if status != 200]
        # non-streamed: no client saw a token of a reply the dead replica cut, so every one was asked again elsewhere
        assert failed == [], failed

        health = httpx.get(base + "/health", timeout=10).json()
        assert health["status"] == "degraded"
        assert [r["up"] for r in health["replicas"]] == [True, False, True]

        home = _session_on_one_replica(base, "A", steps=3)  # sessions keep their replica while it lives
        assert home != 1
        os.kill(children[home], signal.SIGKILL)  # ... and move, without a failed request, when it dies
        assert _session_on_one_replica(base, "A", steps=2, dead=(1, home)) not in (1, home)

        completion = httpx.post(base + "/v1/completions", timeout=120, json={
            "model": "smollm2", "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0})
        assert completion.status_code == 200 and completion.json()["choices"][0]["text"].strip()
        metrics = httpx.get(base + "/metrics", timeout=10).text
        assert 'hanlin_replica_up{replica="1"} 0' in metrics and 'hanlin_replica_up{replica="0"}' in metrics
    finally:
        front.kill()  # SIGKILL: no clean-up runs in the front; the kernel must take the children down with it
        front.wait(timeout=30)
        deadline = time.time() + 15
        while any(_alive(pid) for pid in children) and time.time() < deadline:
            time.sleep(0.2)
        leftover = [pid for pid in children if _alive(pid)]
        for pid in leftover:
            os.kill(pid, signal.SIGKILL)
        assert not leftover, f"replicas {leftover} outlived the front process"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False



def test_each_gpu_replica_sees_its_own_device() -> None:
    from hanlin.server.replicas import gpu_devices

    assert gpu_devices(3, visible="", count=8) == ["0", "1", "2"]
    assert gpu_devices(4, visible="2,5") == ["2", "5", "2", "5"]  # more replicas than GPUs: they share, in turn
    with pytest.raises(ConfigurationError, match="needs a CUDA device"):
        gpu_devices(2, visible="", count=0)
