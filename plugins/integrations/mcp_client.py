"""MCP servers' tools as hanlin tools.

``load_mcp_tools(command, args)`` starts an MCP server as a subprocess speaking stdio, initializes a
session, lists its tools and returns an ``McpToolkit`` whose tools the agent calls like any other.

Why it is built this way:

- The mcp client is async and its session must live in one event loop, while hanlin calls tools from
  threads, from ``asyncio.run`` and from other loops. So each toolkit runs one loop in a background
  thread that owns the session; every call is a coroutine submitted to that loop, and any number may
  run at once.
- We spawn the server ourselves (a few lines on anyio instead of the SDK's ``stdio_client``) to own
  the process: its pid (``close()`` can be checked to leave no orphan), its exit code and the tail of
  its stderr, which is what turns "connection closed" into an error a person or a model can act on.
- Timeouts are hanlin's per-tool ``timeout``: a call that runs out is cancelled, and cancelling the
  request makes the mcp session tell the server (``notifications/cancelled``).
- A hanlin ``Tool`` derives its JSON schema from a pydantic model; an MCP tool *is* a JSON schema. The
  narrowest bridge is ``McpTool``: a Tool subclass whose ``parameters`` is the server's ``inputSchema``
  verbatim, with an arguments model that validates against that schema (jsonschema), so malformed
  calls are stopped here with a clear message before they cross the pipe.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import concurrent.futures
import contextlib
import importlib.metadata
import logging
import os
import shlex
import signal
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any


from hanlin.errors import ConfigurationError, ToolError
from hanlin.plugins.integrations.mcp_tool import McpTool, _hanlin_name, to_tool_result
from hanlin.tools import DEFAULT_TIMEOUT_S, Tool, Toolkit, ToolResult

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'hanlin[mcp]'"
_GRACE_S = 2.0  # how long a server gets to exit by itself once its stdin closes, then again after SIGTERM


def require_mcp() -> None:
    """Fail with the install command when the mcp SDK is missing or is the 1.x line (its API differs)."""
    try:
        version = importlib.metadata.version("mcp")
    except importlib.metadata.PackageNotFoundError:
        raise ToolError(f"MCP support needs the mcp package: {INSTALL_HINT}") from None
    if int(version.split(".")[0]) < 2:
        raise ToolError(f"hanlin's MCP support needs mcp 2.x, found mcp {version}: pip install -U 'hanlin[mcp]'")


def _root_cause(exc: BaseException) -> BaseException:
    """The first real error inside anyio's exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = next((e for e in exc.exceptions if not isinstance(e, asyncio.CancelledError)), exc.exceptions[0])
    return exc


# ---- the toolkit: one server process, one session, one loop ------------------------------------------
class McpToolkit(Toolkit):
    """The tools of one MCP server started as a subprocess; ``close()`` stops it (also at interpreter exit).

    The server gets a minimal environment (PATH, HOME, USER, ...; the mcp SDK's default) plus ``env``: your
    secrets are not handed to a third-party server unless you name them. ``prefix`` is put before every
    tool name (to keep two servers' ``search`` apart); ``only`` keeps just the named tools.
    """

    def __init__(self, command: str, args: Sequence[str] = (), *, env: Mapping[str, str] | None = None,
                 cwd: str | Path | None = None, prefix: str = "", only: Sequence[str] | None = None,
                 timeout: float | None = DEFAULT_TIMEOUT_S, startup_timeout: float = 30.0) -> None:
        require_mcp()
        if isinstance(args, str):
            raise ConfigurationError(f"args must be a list of strings, got the string {args!r}; e.g. args=[{args!r}]")
        self.command, self.args = command, [str(a) for a in args]
        self.env, self.cwd = dict(env or {}), cwd
        self.prefix, self.timeout, self.startup_timeout = prefix, timeout, startup_timeout
        self.label = shlex.join([command, *self.args])
        self.pid: int | None = None
        self.server_name = ""
        self.instructions: str | None = None
        self._process: Any = None
        self._session: Any = None
        self._stderr: collections.deque[str] = collections.deque(maxlen=20)
        self._gone: str | None = None  # why calls can no longer reach the server
        self._closing = False
        self._lock = threading.Lock()
        self._stop = asyncio.Event()  # binds to the background loop on first use
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"hanlin-mcp-{command}", daemon=True)
        self._thread.start()
        atexit.register(self.close)
        ready: concurrent.futures.Future[list[Any]] = concurrent.futures.Future()
        self._owner = asyncio.run_coroutine_threadsafe(self._own(ready), self._loop)
        try:
            listing = ready.result(timeout=startup_timeout + 3 * _GRACE_S + 5)  # _own enforces startup_timeout itself
        except BaseException as exc:
            message = self._startup_failure(exc)
            self.close()
            raise ToolError(message) from None
        self._tools = self._make_tools(listing, only)

    # ---- what the agent sees ----
    def tools(self) -> list[Tool]:
        return list(self._tools)

    def _make_tools(self, listing: list[Any], only: Sequence[str] | None) -> list[McpTool]:
        if only is not None:
            missing = sorted(set(only) - {t.name for t in listing})
            if missing:
                self.close()
                raise ToolError(f"MCP server {self.label!r} has no tool(s) {missing}; it has: "
                                f"{', '.join(t.name for t in listing) or '(none)'}")
            listing = [t for t in listing if t.name in set(only)]
        made: list[McpTool] = []
        taken: set[str] = set()
        for remote in listing:
            name = base = _hanlin_name(self.prefix + remote.name)
            n = 2
            while name in taken:  # two MCP names that map to one hanlin name ("a.b" and "a_b")
                name = f"{base[:60]}_{n}"
                n += 1
            taken.add(name)
            description = remote.description or remote.title or f"the {remote.name} tool of MCP server {self.label}"
            made.append(McpTool(self, remote.name, name, description, dict(remote.input_schema), self.timeout))
        return made

    # ---- calling (any thread, any loop) ----
    async def acall(self, tool: McpTool, arguments: dict[str, Any]) -> ToolResult:
        """Run one call on the server's loop and wait for it here, without blocking this loop."""
        if self._gone:
            return ToolResult.error(self._gone)
        try:
            future = asyncio.run_coroutine_threadsafe(self._call_remote(tool, arguments), self._loop)
        except RuntimeError:  # the loop was closed under us
            return ToolResult.error(self._gone or self._closed_message())
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # our caller gave up (a timeout): let it
                raise
            return ToolResult.error(self._gone or self._closed_message())  # the server side was torn down

    async def _call_remote(self, tool: McpTool, arguments: dict[str, Any]) -> ToolResult:
        from mcp.shared.exceptions import MCPError
        from mcp_types import CONNECTION_CLOSED

        session = self._session
        if session is None or self._gone:
            return ToolResult.error(self._gone or self._closed_message())
        try:
            result = await session.call_tool(tool.remote_name, arguments)
        except MCPError as exc:
            if exc.code == CONNECTION_CLOSED:
                return ToolResult.error(await self._server_gone())
            return ToolResult.error(f"the MCP server refused the call to '{tool.name}': {exc.message} "
                                    f"(JSON-RPC error {exc.code})")
        except Exception as exc:  # a result that breaks its own output schema, an unexpected result shape
            return ToolResult.error(f"calling '{tool.name}' on the MCP server failed: {type(exc).__name__}: {exc}")
        return to_tool_result(tool.name, result)

    # ---- lifecycle (on the background loop) ----
    async def _own(self, ready: concurrent.futures.Future[list[Any]]) -> None:
        """Hold the process and the session open until ``close()``; report start-up to ``ready``."""
        import anyio
        from mcp import ClientSession
        from mcp.types import Implementation

        from hanlin import __version__

        try:
            async with self._transport() as (read, write):
                async with ClientSession(read, write, client_info=Implementation(name="hanlin", version=__version__)) as session:
                    with anyio.fail_after(self.startup_timeout):
                        init = await session.initialize()
                        listing = await self._list_tools(session)
                    self.server_name = init.server_info.name
                    self.instructions = init.instructions
                    self._session = session
                    ready.set_result(listing)
                    await self._stop.wait()
        except BaseException as exc:  # noqa: BLE001 - reported to the waiting constructor, never lost
            if not ready.done():
                ready.set_exception(_root_cause(exc))
            elif not self._closing:
                logger.warning("MCP session with %r ended: %r", self.label, _root_cause(exc))
            if not isinstance(exc, Exception):
                raise
        finally:
            self._session = None

    @staticmethod
    async def _list_tools(session: Any) -> list[Any]:
        from mcp.types import PaginatedRequestParams

        listed = await session.list_tools()
        tools = list(listed.tools)
        while listed.next_cursor:
            listed = await session.list_tools(params=PaginatedRequestParams(cursor=listed.next_cursor))
            tools.extend(listed.tools)
        return tools

    @contextlib.asynccontextmanager
    async def _transport(self) -> AsyncIterator[tuple[Any, Any]]:
        """The server process and the two message streams ClientSession reads and writes."""
        import anyio
        import mcp_types
        from mcp.client.stdio import get_default_environment
        from mcp.shared.message import SessionMessage

        process = await anyio.open_process([self.command, *self.args], env={**get_default_environment(), **self.env},
                                           cwd=self.cwd, start_new_session=True)  # own group: close() kills it whole
        self._process, self.pid = process, process.pid
        read_send, read_recv = anyio.create_memory_object_stream[Any](0)
        write_send, write_recv = anyio.create_memory_object_stream[Any](0)
        broken = (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream, OSError)

        async def lines(stream: Any) -> AsyncIterator[bytes]:
            buffer = b""
            with contextlib.suppress(*broken):
                async for chunk in stream:
                    *done, buffer = (buffer + chunk).split(b"\n")
                    for line in done:
                        if line.strip():
                            yield line

        async def stdout_to_session() -> None:
            async with read_send:
                async for line in lines(process.stdout):
                    try:
                        message = SessionMessage(mcp_types.jsonrpc_message_adapter.validate_json(line, by_name=False))
                    except ValueError:
                        logger.warning("MCP server %r wrote a line that is not JSON-RPC: %.200r", self.label, line)
                        continue
                    with contextlib.suppress(*broken):  # session gone: keep draining, a full pipe blocks the server
                        await read_send.send(message)

        async def session_to_stdin() -> None:
            try:
                async with write_recv:
                    async for message in write_recv:
                        data = message.message.model_dump_json(by_alias=True, exclude_unset=True) + "\n"
                        await process.stdin.send(data.encode())
            except broken:
                read_send.close()  # the server stopped reading: let pending requests fail instead of waiting

        async def keep_stderr() -> None:
            async for line in lines(process.stderr):
                text = line.decode(errors="replace").rstrip()
                self._stderr.append(text[:300])
                logger.debug("MCP server %r: %s", self.label, text)

        async with anyio.create_task_group() as tg:
            tg.start_soon(stdout_to_session)
            tg.start_soon(session_to_stdin)
            tg.start_soon(keep_stderr)
            try:
                yield read_recv, write_send
            finally:
                with anyio.CancelScope(shield=True):
                    write_send.close()
                    read_recv.close()
                    await self._stop_process(process)
                tg.cancel_scope.cancel()

    async def _stop_process(self, process: Any) -> None:
        """Close stdin (the MCP way to ask a stdio server to exit), then SIGTERM, then SIGKILL the group."""
        import anyio

        with contextlib.suppress(Exception):
            await process.stdin.aclose()
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None:
                self._signal_group(process.pid, sig)
            if await self._exited(process, _GRACE_S):
                break
        self._signal_group(process.pid, signal.SIGKILL)  # anything the server left behind in its group
        with anyio.move_on_after(_GRACE_S), contextlib.suppress(Exception):
            await process.aclose()

    @staticmethod
    def _signal_group(pid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)

    @staticmethod
    async def _exited(process: Any, within: float) -> bool:
        import anyio

        with anyio.move_on_after(within):
            while process.returncode is None:
                await anyio.sleep(0.02)
        return process.returncode is not None

    async def _server_gone(self) -> str:
        """The connection closed under a call: say why, and make later calls say it too."""
        if self._closing:
            return self._closed_message()
        process = self._process
        if process is not None:
            await self._exited(process, 1.0)
        code = None if process is None else process.returncode
        if code is None:
            how = "closed its connection"
        elif code < 0:
            how = f"was killed by signal {signal.Signals(-code).name}"
        else:
            how = f"exited with code {code}"
        why = self._stderr_note() if code is None or code > 0 else ""  # its own failure: its stderr says why
        self._gone = (f"the MCP server {self.label!r} is gone: it {how}. Its tools cannot be used any more in this "
                      f"session; load them again to restart the server.{why}")
        return self._gone

    # ---- messages ----
    def _stderr_note(self) -> str:
        tail = [line for line in self._stderr if line.strip()][-5:]
        return ("\nLast lines of its stderr:\n" + "\n".join(tail)) if tail else ""

    def _closed_message(self) -> str:
        return f"the MCP server {self.label!r} was closed; load its tools again to use them"

    def _startup_failure(self, exc: BaseException) -> str:
        from mcp.shared.exceptions import MCPError

        if isinstance(exc, (TimeoutError, concurrent.futures.TimeoutError)):
            return (f"MCP server {self.label!r} did not finish starting (initialize and tools/list) within "
                    f"{self.startup_timeout:g} s; check that it speaks MCP over stdio{self._stderr_note()}")
        if isinstance(exc, OSError):
            return f"cannot start MCP server {self.label!r}: {exc}; check the command and that it is installed"
        if isinstance(exc, MCPError):
            code = None if self._process is None else self._process.returncode
            if code is not None:
                return f"MCP server {self.label!r} exited during start-up with code {code}{self._stderr_note()}"
            return f"MCP server {self.label!r} failed during start-up: {exc.message}{self._stderr_note()}"
        return f"MCP server {self.label!r} failed during start-up: {type(exc).__name__}: {exc}{self._stderr_note()}"

    def close(self) -> None:
        """Stop the server process (no orphans) and the background loop. Idempotent."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        atexit.unregister(self.close)
        loop = self._loop
        if loop.is_running():
            loop.call_soon_threadsafe(self._stop.set)
            try:
                self._owner.result(timeout=4 * _GRACE_S + 5)
            except BaseException:  # noqa: BLE001 - already reported; closing must go on
                self._owner.cancel()
            with contextlib.suppress(BaseException):
                asyncio.run_coroutine_threadsafe(_cancel_the_rest(), loop).result(timeout=5)
            loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            loop.close()
        self._gone = self._gone or self._closed_message()

    def __repr__(self) -> str:
        return f"<McpToolkit {self.label!r} pid={self.pid} tools={[t.name for t in getattr(self, '_tools', [])]}>"


async def _cancel_the_rest() -> None:
    """Cancel calls still running on a closing toolkit's loop; their callers get the 'closed' message."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def load_mcp_tools(command: str, args: Sequence[str] = (), env: Mapping[str, str] | None = None,
                   cwd: str | Path | None = None, **options: Any) -> McpToolkit:
    """Start the MCP server ``command args`` over stdio and return its tools as an ``McpToolkit``.

    Options: ``prefix``, ``only``, ``timeout`` (per call, seconds), ``startup_timeout``. Pass the toolkit (or
    ``toolkit.tools()``) to an Agent; ``Agent.close()`` or ``toolkit.close()`` stops the server.
    """
    return McpToolkit(command, args, env=env, cwd=cwd, **options)
