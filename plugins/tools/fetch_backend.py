"""The network backend under web_fetch's httpx client: it connects only where the URL guard just agreed, and
no socket operation outlives the fetch's deadline.

Why the addresses are pinned here: checking a host name and then letting the HTTP client resolve it again leaves a
window (DNS rebinding: the second answer differs). The backend asks the guard, and connects to the very addresses
the guard checked.

Why the deadline lives here: httpx's timeouts are per operation (connect, each read, each write). A server that
sends one header byte a second never trips any of them, and holds a worker of the shared tool pool for as long as
it likes. So a fetch sets one deadline (``deadline_in``) and every connect, TLS handshake, read and write made for
it is given only the time left, and fails at once when none is. The failure is httpcore's own timeout, which httpx
reports as ``httpx.TimeoutException``, so callers need no new error path. Python bounds a whole TLS handshake by
the socket's timeout, so a slow handshake is covered too.

Not covered: the name lookup itself (``getaddrinfo``), which the system resolver bounds by its own timeouts.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from typing import Any

from hanlin.plugins.tools.url_guard import URLGuard

_DEADLINE: ContextVar[float | None] = ContextVar("hanlin_fetch_deadline", default=None)


@contextmanager
def deadline_in(seconds: float) -> Iterator[float]:
    """Every connection operation inside the block ends by ``seconds`` from now; yields the monotonic deadline."""
    at = time.monotonic() + seconds
    token = _DEADLINE.set(at)
    try:
        yield at
    finally:
        _DEADLINE.reset(token)


def _left(timeout: float | None, error: type[Exception]) -> float | None:
    """``timeout`` cut to the time left before the deadline; ``error`` if it has passed."""
    at = _DEADLINE.get()
    if at is None:
        return timeout
    left = at - time.monotonic()
    if left <= 0:
        raise error("the fetch's deadline has passed")
    return left if timeout is None else min(timeout, left)


@lru_cache(maxsize=1)
def _classes() -> tuple[type, type]:
    import httpcore

    class DeadlineStream(httpcore.NetworkStream):
        """A connection whose every read, write and TLS upgrade is cut to the current fetch's deadline."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
            return self.inner.read(max_bytes, timeout=_left(timeout, httpcore.ReadTimeout))

        def write(self, buffer: bytes, timeout: float | None = None) -> None:
            self.inner.write(buffer, timeout=_left(timeout, httpcore.WriteTimeout))

        def close(self) -> None:
            self.inner.close()

        def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                      timeout: float | None = None) -> Any:
            return DeadlineStream(self.inner.start_tls(ssl_context, server_hostname=server_hostname,
                                                       timeout=_left(timeout, httpcore.ConnectTimeout)))

        def get_extra_info(self, info: str) -> Any:
            return self.inner.get_extra_info(info)

    class FetchBackend(httpcore.NetworkBackend):
        """Connects to the addresses ``guard`` approves in this very call (or, with no guard, to the host as
        named), within the deadline; the streams it returns keep to the deadline too."""

        def __init__(self, guard: URLGuard | None) -> None:
            self.guard = guard
            self.inner = httpcore.SyncBackend()

        def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                        socket_options: Iterable[Any] | None = None) -> Any:
            addresses = self.guard.check_host(host, port) if self.guard is not None else [host]
            last: Exception | None = None
            for address in addresses:
                try:
                    stream = self.inner.connect_tcp(address, port, timeout=_left(timeout, httpcore.ConnectTimeout),
                                                    local_address=local_address, socket_options=socket_options)
                except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                    last = exc
                    continue
                return DeadlineStream(stream)
            raise last or httpcore.ConnectError(f"no address to connect to for {host}")

        def connect_unix_socket(self, *args: Any, **kwargs: Any) -> Any:
            raise httpcore.ConnectError("unix sockets are not allowed")

        def sleep(self, seconds: float) -> None:
            self.inner.sleep(seconds)

    return DeadlineStream, FetchBackend


def install_backend(transport: Any, guard: URLGuard) -> bool:
    """Make an ``httpx.HTTPTransport`` connect through the fetch backend (pinned to ``guard``'s addresses when the
    guard checks them); False if this httpx version hides its connection pool."""
    import httpcore

    pool = getattr(transport, "_pool", None)
    if not isinstance(pool, httpcore.ConnectionPool) or not hasattr(pool, "_network_backend"):
        return False
    pool._network_backend = _classes()[1](guard if guard.checks_addresses else None)
    return True
