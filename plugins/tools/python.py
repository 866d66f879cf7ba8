"""The `python` tool: code runs in a Jupyter kernel that keeps its state between calls of one agent session."""

from __future__ import annotations

import importlib.util
import re
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from hanlin import Tool, ToolResult, ToolSpec, Toolkit, current_session, hookimpl, tool

OUTSIDE_AGENT = "default"  # the session of calls made outside an agent run (scripts, tests)


class PythonToolkit(Toolkit):
    """A pool of kernels, one per agent session, at most ``max_kernels`` alive.

    Sessions are how an app separates users: two conversations must never see each other's variables, and
    concurrent sessions run their code in parallel. When the pool is full the least recently used idle kernel is
    shut down; if its session comes back it gets a fresh kernel and the model is told its state was discarded.
    Each session works in its own folder under ``workdir`` (calls outside an agent use ``workdir`` itself).
    """

    def __init__(self, workdir: str | Path | None = None, timeout: float = 30.0, memory_mb: int | None = 2048,
                 cpu_seconds: int | None = 600, max_output_chars: int = 4000, max_kernels: int = 4) -> None:
        if importlib.util.find_spec("jupyter_client") is None or importlib.util.find_spec("ipykernel") is None:
            from hanlin import ToolError

            raise ToolError("the python tool needs jupyter-client and ipykernel: pip install 'hanlin[tools]'")
        if max_kernels < 1:
            from hanlin import ConfigurationError

            raise ConfigurationError(f"max_kernels must be at least 1, got {max_kernels}")
        self.timeout = timeout
        self._workdir = Path(workdir) if workdir else None  # a temp folder is made on first use, not at build
        self.max_kernels = max_kernels
        self._options = {"memory_mb": memory_mb, "cpu_seconds": cpu_seconds, "max_output_chars": max_output_chars}
        self._kernels: OrderedDict[str, Any] = OrderedDict()  # session -> KernelSession, least recently used first
        self._evicted: set[str] = set()
        self._lock = threading.Lock()

    def sessions(self) -> list[str]:
        """Sessions that have a live kernel slot, least recently used first."""
        with self._lock:
            return list(self._kernels)

    def _kernel_for(self, key: str) -> tuple[Any, str]:
        from hanlin.plugins.tools.python_kernel import KernelSession

        with self._lock:
            if key in self._kernels:
                self._kernels.move_to_end(key)
                return self._kernels[key], ""
            idle = [k for k, s in self._kernels.items() if not s.busy]
            while len(self._kernels) >= self.max_kernels and idle:  # all busy: briefly exceed the cap, never block
                victim = idle.pop(0)
                self._kernels.pop(victim).close()
                self._evicted.add(victim)
            if self._workdir is None:
                self._workdir = Path(tempfile.mkdtemp(prefix="hanlin-python-"))
            root = self._workdir
            folder = root if key == OUTSIDE_AGENT else root / re.sub(r"[^A-Za-z0-9_.-]", "_", key)[:80]
            session = KernelSession(folder, **self._options)
            self._kernels[key] = session
            note = ""
            if key in self._evicted:
                self._evicted.discard(key)
                note = (f"[note: this session's earlier Python state was discarded to make room for other sessions "
                        f"(max_kernels={self.max_kernels}); re-run what you need]\n")
            return session, note

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
        session, note = self._kernel_for(current_session() or OUTSIDE_AGENT)
        result = session.execute(code, timeout=self.timeout, on_input=on_input, setup=setup)
        return result.model_copy(update={"content": note + result.content}) if note else result

    def end_session(self, session_id: str | None) -> None:
        with self._lock:
            keys = list(self._kernels) if session_id is None else [session_id]
            gone = [self._kernels.pop(k) for k in keys if k in self._kernels]
            self._evicted.difference_update(keys)
        for session in gone:
            session.close()

    def close(self) -> None:
        self.end_session(None)


def make_python(**config: Any) -> list[Tool]:
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
