"""A stateful Python interpreter on a real Jupyter kernel, hardened for agent use.

Why a kernel and not exec(): the code runs in another process, so a crash,
an endless loop or a memory blow-up hits the kernel, not the agent. Each call
has a timeout that interrupts the kernel (its variables survive); a kernel
that dies is restarted and the model is told its state was lost; rlimits cap
memory and CPU time; input() fails at once instead of hanging; long output is
cut with a note, and images are saved as files.
"""

from __future__ import annotations

import atexit
import base64
import re
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from queue import Empty
from typing import Any

from hanlin import ToolResult

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_LIVE: weakref.WeakSet[KernelSession] = weakref.WeakSet()


def _shutdown_all() -> None:
    for session in list(_LIVE):
        session.close()


atexit.register(_shutdown_all)  # no orphan kernels, also after Ctrl-C (KeyboardInterrupt exits through atexit)


def _limits_code(memory_mb: int | None, cpu_seconds: int | None) -> str:
    lines = ["import resource, builtins"]
    if memory_mb:
        lines.append(f"resource.setrlimit(resource.RLIMIT_AS, ({memory_mb} * 1024 * 1024, {memory_mb} * 1024 * 1024))")
    if cpu_seconds:
        lines.append(f"resource.setrlimit(resource.RLIMIT_CPU, ({cpu_seconds}, {cpu_seconds}))")
    return "\n".join(lines)


def cut(text: str, limit: int) -> str:
    """Keep the head and the tail of long output, and say how much was cut."""
    if len(text) <= limit:
        return text
    head, tail = text[: limit * 2 // 3], text[-(limit // 3):]
    return f"{head}\n[... {len(text) - len(head) - len(tail)} characters cut ...]\n{tail}"


class KernelSession:
    """One kernel process with its own working directory."""

    def __init__(self, workdir: Path | None = None, *, memory_mb: int | None = 2048, cpu_seconds: int | None = 600,
                 max_output_chars: int = 4000, startup_timeout: float = 60.0) -> None:
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="hanlin-python-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.memory_mb, self.cpu_seconds = memory_mb, cpu_seconds
        self.max_output_chars = max_output_chars
        self.startup_timeout = startup_timeout
        self._km: Any = None
        self._kc: Any = None
        self._lock = threading.Lock()
        self._images = 0
        self._sockets: Path | None = None
        _LIVE.add(self)

    @property
    def busy(self) -> bool:
        """True while code runs: a pool must not shut this kernel down under it."""
        return self._lock.locked()

    # ---- lifecycle ---------------------------------------------------------------------------
    def _start(self) -> None:
        from jupyter_client import KernelManager

        # ipc sockets are paths; make them absolute, since the kernel runs in another working directory
        self._sockets = Path(tempfile.mkdtemp(prefix="hanlin-kernel-"))
        sockets = self._sockets / "kernel"
        self._km = KernelManager(kernel_name="python3", transport="ipc", ip=str(sockets))
        self._km.start_kernel(cwd=str(self.workdir))
        self._kc = self._km.client()
        self._kc.start_channels()
        self._kc.wait_for_ready(timeout=self.startup_timeout)
        self._run(_limits_code(self.memory_mb, self.cpu_seconds), timeout=30)

    def _ensure(self) -> None:
        if self._km is None:
            self._start()

    def _restart(self) -> None:
        self.close()
        _LIVE.add(self)
        self._start()

    def close(self) -> None:
        if self._kc is not None:
            self._kc.stop_channels()
        if self._km is not None and self._km.has_kernel:
            self._km.shutdown_kernel(now=True)
        self._km = self._kc = None
        if self._sockets is not None:  # the ipc socket files' folder: nothing in it outlives the kernel
            shutil.rmtree(self._sockets, ignore_errors=True)
            self._sockets = None

    # ---- running code ------------------------------------------------------------------------
    def _run(self, code: str, timeout: float, on_input: Callable[[str], str] | None = None) -> dict[str, Any]:
        """Execute and collect output; on timeout interrupt the kernel; detect a dead kernel.

        With ``on_input`` the cell may ask the host for input (Jupyter's stdin channel): each ``input_request``'s
        prompt goes to ``on_input`` and its return value is the reply. The time spent in ``on_input`` does not count
        against ``timeout`` (the host's work has its own limits).
        """
        msg_id = self._kc.execute(code, allow_stdin=on_input is not None, store_history=True)
        out: dict[str, Any] = {"stdout": [], "result": None, "error": None, "images": [], "timed_out": False, "died": False}
        deadline = time.monotonic() + timeout
        while True:
            if on_input is not None:
                deadline += self._answer_input(msg_id, on_input)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                out["timed_out"] = True
                self._km.interrupt_kernel()
                self._drain(msg_id, 10.0)
                return out
            try:
                msg = self._kc.get_iopub_msg(timeout=min(0.25 if on_input is None else 0.02, remaining))
            except Empty:
                if not self._km.is_alive():
                    out["died"] = True
                    return out
                continue
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue  # output of an earlier, interrupted cell
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                out["stdout"].append(content["text"])
            elif kind == "execute_result":
                out["result"] = content["data"].get("text/plain")
            elif kind == "display_data":
                if "image/png" in content["data"]:
                    out["images"].append(self._save_png(content["data"]["image/png"]))
                elif "text/plain" in content["data"]:
                    out["stdout"].append(content["data"]["text/plain"] + "\n")
            elif kind == "error":
                trace = _ANSI.sub("", "\n".join(content.get("traceback", [])))
                out["error"] = (content["ename"], content["evalue"], trace)
            elif kind == "status" and content["execution_state"] == "idle":
                return out

    def _answer_input(self, msg_id: str, on_input: Callable[[str], str]) -> float:
        """Answer this cell's pending input requests; returns the seconds spent doing so."""
        spent = 0.0
        while True:
            try:
                msg = self._kc.get_stdin_msg(timeout=0)
            except Empty:
                return spent
            if msg.get("parent_header", {}).get("msg_id") != msg_id or msg["msg_type"] != "input_request":
                continue  # a request of an earlier, interrupted cell: nobody waits for its reply
            started = time.monotonic()
            try:
                reply = on_input(msg["content"].get("prompt", ""))
            except BaseException:
                self._kc.input("")  # never leave the kernel blocked on a reply
                raise
            self._kc.input(reply)
            spent += time.monotonic() - started

    def _drain(self, msg_id: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self._kc.get_iopub_msg(timeout=0.25)
            except Empty:
                if not self._km.is_alive():
                    return
                continue
            mine = msg.get("parent_header", {}).get("msg_id") == msg_id
            if mine and msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return

    def _save_png(self, data: str) -> str:
        self._images += 1
        path = self.workdir / f"output_{self._images}.png"
        path.write_bytes(base64.b64decode(data))
        return str(path)

    def execute(self, code: str, timeout: float = 30.0, *, on_input: Callable[[str], str] | None = None,
                setup: str | None = None) -> ToolResult:
        """Run ``code``; ``setup`` runs silently first (e.g. to define helper functions), and ``on_input`` answers
        the cell's input requests (see ``_run``): how a host lets the code call back into it."""
        with self._lock:
            self._ensure()
            if setup is not None:
                prepared = self._run(setup, 30.0)
                if prepared["error"] is not None or prepared["timed_out"] or prepared["died"]:
                    problem = prepared["error"][2] if prepared["error"] else "it timed out or the kernel died"
                    if prepared["died"]:
                        self._restart()
                    return ToolResult.error(f"the kernel's setup code failed, so the code was not run: {problem}")
            out = self._run(code, timeout, on_input)
            if out["died"]:
                self._restart()
                return ToolResult.error(
                    "the Python kernel died while running this code (a crash, os._exit, or the memory limit) and was "
                    "restarted: all variables and imports are gone, run the setup again"
                )
        parts = ["".join(out["stdout"])] if out["stdout"] else []
        if out["result"] is not None:
            parts.append(out["result"])
        for image in out["images"]:
            parts.append(f"[image saved to {image}]")
        text = cut("\n".join(p.rstrip("\n") for p in parts), self.max_output_chars)
        if out["timed_out"]:
            note = f"timed out after {timeout:g} s and was interrupted; variables defined before that are kept"
            return ToolResult(content=(text + "\n" if text else "") + note, is_error=True, artifacts=out["images"])
        if out["error"] is not None:
            name, value, trace = out["error"]
            if name == "StdinNotImplementedError":
                return ToolResult.error("input() is not available: nobody can type here; put the values in the code")
            lines = [line for line in trace.splitlines() if line.strip() and not set(line.strip()) <= {"-"}]
            short = "\n".join(lines[-8:])  # the end of the traceback is where the cause is
            return ToolResult(content=cut(f"{text}\n{short}".strip(), self.max_output_chars), is_error=True,
                              artifacts=out["images"])
        return ToolResult(content=text or "(no output)", artifacts=out["images"])
