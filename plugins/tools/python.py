"""The `python` tool: code runs in a Jupyter kernel that keeps its state between calls of one agent session."""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import logging
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from hanlin import Tool, ToolResult, ToolSpec, Toolkit, current_session, hookimpl, tool
from hanlin.errors import ConfigurationError, ToolError

log = logging.getLogger(__name__)
OUTSIDE_AGENT = "default"  # the session of calls made outside an agent run (scripts, tests)
MIN_MEMORY_MB = 256  # an idle ipykernel already maps ~150 MB of address space


class PythonToolkit(Toolkit):
    """A pool of kernels, one per agent session, at most ``max_kernels`` alive.

    Sessions are how an app separates users: two conversations must never see each other's variables or files, and
    concurrent sessions run their code in parallel. When the pool is full the least recently used idle kernel is
    shut down; if its session comes back it gets a fresh kernel and the model is told its state was discarded.
    Each session works in its own folder under ``workdir``, named by a hash of the session id (``folder``); run as
    root, each kernel also runs as its own user and its folder is readable by nobody else (python_sandbox).
    ``workdir=None`` makes a temporary folder that ``close()`` removes.
    """

    def __init__(self, workdir: str | Path | None = None, timeout: float = 30.0, memory_mb: int | None = 2048,
                 cpu_seconds: int | None = 600, max_output_chars: int = 4000, max_kernels: int = 4) -> None:
        if importlib.util.find_spec("jupyter_client") is None or importlib.util.find_spec("ipykernel") is None:
            raise ToolError("the python tool needs jupyter-client and ipykernel: pip install 'hanlin[tools]'")
        if max_kernels < 1:
            raise ConfigurationError(f"max_kernels must be at least 1, got {max_kernels}")
        if memory_mb is not None and memory_mb < MIN_MEMORY_MB:
            raise ConfigurationError(f"memory_mb={memory_mb} is too small for a Jupyter kernel; give at least "
                                     f"{MIN_MEMORY_MB}, or None for no memory limit")
        self.timeout = timeout
        self._workdir = Path(workdir) if workdir else None  # a temp folder is made on first use, not at build
        self._temp_workdir = False
        self._warned_path = False
        self.max_kernels = max_kernels
        self._options = {"memory_mb": memory_mb, "cpu_seconds": cpu_seconds, "max_output_chars": max_output_chars}
        self._kernels: OrderedDict[str, Any] = OrderedDict()  # session -> KernelSession, least recently used first
        self._leases: dict[int, int] = {}  # id(KernelSession) -> calls using it now: never evicted while > 0
        self._evicted: set[str] = set()
        self._lock = threading.Lock()  # guards the pool only; kernels start and stop outside it

    def sessions(self) -> list[str]:
        """Sessions that have a live kernel slot, least recently used first."""
        with self._lock:
            return list(self._kernels)

    def folder(self, session_id: str | None = None) -> Path:
        """The folder a session's code works in: ``workdir / session-<sha256 of the id>``. A hash, so no id can
        name a path (``..``, ``/``) or share another's folder (``user/a`` and ``user_a``, long ids)."""
        with self._lock:
            return self._folder(session_id or OUTSIDE_AGENT)

    def _folder(self, key: str) -> Path:
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="hanlin-python-"))
            self._workdir.chmod(0o711)  # kernels (other users) may pass through to their own folder, not list it
            self._temp_workdir = True
        return self._workdir / f"session-{hashlib.sha256(key.encode()).hexdigest()[:32]}"

    def _lease(self, key: str) -> tuple[Any, str]:
        """The session's kernel, marked in use so no other thread evicts it before the call ends (``_release``)."""
        from hanlin.plugins.tools.python_kernel import KernelSession

        note, evicted = "", []
        with self._lock:
            session = self._kernels.get(key)
            if session is not None:
                self._kernels.move_to_end(key)
            else:
                idle = [k for k, s in self._kernels.items() if not self._leases.get(id(s))]
                while len(self._kernels) >= self.max_kernels and idle:  # all busy: briefly exceed the cap, never block
                    victim = idle.pop(0)
                    evicted.append(self._kernels.pop(victim))
                    self._evicted.add(victim)
                session = KernelSession(self._folder(key), **self._options)
                self._warn_if_closed(session.workdir)
                self._kernels[key] = session
                if key in self._evicted:
                    self._evicted.discard(key)
                    note = (f"[note: this session's earlier Python state was discarded to make room for other "
                            f"sessions (max_kernels={self.max_kernels}); re-run what you need]\n")
            self._leases[id(session)] = self._leases.get(id(session), 0) + 1
        for old in evicted:  # outside the lock: other sessions keep running while these shut down
            old.close()
        return session, note

    def _warn_if_closed(self, folder: Path) -> None:
        from hanlin.plugins.tools.python_sandbox import closed_ancestors

        if self._warned_path or self._temp_workdir:
            return
        self._warned_path = True
        closed = closed_ancestors(folder)
        if closed:
            log.warning("the python tool's kernels run as other users and cannot pass through %s, so absolute paths "
                        "into their own folders fail (relative ones work); chmod o+x those folders, or leave workdir "
                        "unset for a temporary one", ", ".join(map(str, closed)))

    def _release(self, session: Any) -> None:
        with self._lock:
            left = self._leases.pop(id(session)) - 1
            if left:
                self._leases[id(session)] = left

    @tool(timeout=None)  # the kernel enforces its own timeout and interrupts the code
    def python(self, code: Annotated[str, Field(max_length=8000)]) -> ToolResult:
        """Run Python code in a persistent Jupyter kernel and return what it printed and its last value.

        Variables and imports persist between calls. Images (e.g. matplotlib) are saved as files.

        Args:
            code: Python source to run, e.g. "x = 37 * 91 + 5\\nprint(x)".
        """
        return self.run_code(code)

    def run_code(self, code: str, *, on_input: Callable[[str], str] | None = None, setup: str | None = None) -> ToolResult:
        """What the tool does, for hosts that drive the kernel themselves (the `code` protocol): ``setup`` runs
        silently first and ``on_input`` answers the code's input requests (KernelSession.execute)."""
        session, note = self._lease(current_session() or OUTSIDE_AGENT)
        try:
            result = session.execute(code, timeout=self.timeout, on_input=on_input, setup=setup)
        finally:
            self._release(session)
        return result.model_copy(update={"content": note + result.content}) if note else result

    def end_session(self, session_id: str | None) -> None:
        with self._lock:
            keys = list(self._kernels) if session_id is None else [session_id]
            gone = [self._kernels.pop(k) for k in keys if k in self._kernels]
            self._evicted.difference_update(keys)
        for session in gone:  # outside the lock; a session still running code is stopped by its own call
            session.close()

    def close(self) -> None:
        """End every session; a temporary workdir is removed with all the sessions' folders."""
        self.end_session(None)
        with self._lock:
            workdir, temp = self._workdir, self._temp_workdir
            if temp:
                self._workdir, self._temp_workdir = None, False
        if temp and workdir is not None:
            from hanlin.plugins.tools.python_sandbox import remove_tree

            remove_tree(workdir)


OPTIONS = tuple(p for p in inspect.signature(PythonToolkit.__init__).parameters if p != "self")


def make_python(**config: Any) -> list[Tool]:
    unknown = [name for name in config if name not in OPTIONS]
    if unknown:
        raise ConfigurationError(f"the python tool has no option {', '.join(map(repr, unknown))}; "
                                 f"valid options: {', '.join(OPTIONS)}")
    return PythonToolkit(**config).tools()


@hookimpl
def register_tools(register: Any) -> None:
    register(ToolSpec(
        name="python", factory=make_python,
        description="Run Python in a persistent Jupyter kernel per agent session (timeouts, rlimits, restart on crash).",
        # Not a default tool: it needs the [tools] extra (a Jupyter kernel), which `hanlin run`'s minimal install
        # lacks; `--tool python` adds it. With both tools, Qwen2.5-Coder-0.5B answers the README question too.
        default=False,
    ))
