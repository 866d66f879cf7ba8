"""The `python` tool: code runs in a Jupyter kernel that keeps its state between calls."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from hanlin import Tool, ToolResult, ToolSpec, Toolkit, hookimpl, tool


class PythonToolkit(Toolkit):
    """One kernel per toolkit (one per agent); it starts on the first call and stops with close()."""

    def __init__(self, workdir: str | Path | None = None, timeout: float = 30.0, memory_mb: int | None = 2048,
                 cpu_seconds: int | None = 600, max_output_chars: int = 4000) -> None:
        if importlib.util.find_spec("jupyter_client") is None or importlib.util.find_spec("ipykernel") is None:
            from hanlin import ToolError

            raise ToolError("the python tool needs jupyter-client and ipykernel: pip install 'hanlin[tools]'")
        from hanlin.plugins.tools.python_kernel import KernelSession

        self.timeout = timeout
        self.session = KernelSession(Path(workdir) if workdir else None, memory_mb=memory_mb, cpu_seconds=cpu_seconds,
                                     max_output_chars=max_output_chars)

    @tool(timeout=None)  # the kernel enforces its own timeout and interrupts the code
    def python(self, code: str) -> ToolResult:
        """Run Python code in a persistent Jupyter kernel and return what it printed and its last value.

        Variables and imports persist between calls. Images (e.g. matplotlib) are saved as files.

        Args:
            code: Python source to run, e.g. "x = 37 * 91 + 5\\nprint(x)".
        """
        return self.session.execute(code, timeout=self.timeout)

    def close(self) -> None:
        self.session.close()


def make_python(**config: Any) -> list[Tool]:
    return PythonToolkit(**config).tools()


@hookimpl
def register_tools(register: Any) -> None:
    register(ToolSpec(
        name="python", factory=make_python,
        description="Run Python in a persistent Jupyter kernel (timeouts, rlimits, restart on crash).",
        # Not a default tool yet: with both calculator and python offered, Qwen2.5-Coder-0.5B loops on the
        # calculator for the README's question (measured); the tools issue tunes the prompt for both.
        default=False,
    ))
