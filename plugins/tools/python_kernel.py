"""A stateful Python interpreter on a real Jupyter kernel, hardened for agent use.

Why a kernel and not exec(): the code runs in another process, so a crash,
an endless loop or a memory blow-up hits the kernel, not the agent. Each call
has a timeout that interrupts the kernel (its variables survive); a cell that
ignores the interrupt, and a kernel that dies, get a fresh kernel and the model
is told its state was lost; rlimits cap memory and CPU time and are read back
before any code runs (python_limits); as root the kernel runs as a user of its
own (python_sandbox); input() fails at once instead of hanging; long output is
cut with a note, and images are saved as files.
"""

from __future__ import annotations

import atexit
import base64
import os
import re
import signal
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from queue import Empty
from typing import Any

from hanlin import ToolResult
from hanlin.errors import ToolError
from hanlin.plugins.tools.python_hints import RETURN_FIX, Hint, error_hint, returning_cell_fix
from hanlin.plugins.tools.python_shown import (bounded_repr_probe, no_output_text, shown_names, unprinted_names,
                                               unprinted_text)
from hanlin.plugins.tools.python_timeout_hints import reruns_safely, timeout_hint

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_LIVE: weakref.WeakSet[KernelSession] = weakref.WeakSet()


def _shutdown_all() -> None:
    for session in list(_LIVE):
        session.close()


atexit.register(_shutdown_all)  # no orphan kernels, also after Ctrl-C (KeyboardInterrupt exits through atexit)


def cut(text: str, limit: int) -> str:
    """Keep the head and the tail of long output, and say how much was cut."""
    if len(text) <= limit:
        return text
    head, tail = text[: limit * 2 // 3], text[-(limit // 3):]
    return f"{head}\n[... {len(text) - len(head) - len(tail)} characters cut ...]\n{tail}"




# A cell that reads sys.argv gets the kernel's own command line ("-f", the connection file): Qwen2.5-Coder-0.5B wrote
# `words = sys.argv[1].split()`, printed "-f", and answered from it (python-10, tools). Like input(), say so.
ARGV_USE = re.compile(r"\bsys\.argv\b|\bfrom\s+sys\s+import\b[^\n]*\bargv\b")
ARGV_NOTE = ("[note: sys.argv here is the Python kernel's own command line, not input for this code: write the values "
             "into the code]")


def _manager(argv: list[str], **traits: Any) -> Any:
    """A KernelManager that launches ``argv`` (the sandbox's command) instead of the kernel spec's."""
    from jupyter_client import KernelManager

    class SandboxedKernelManager(KernelManager):
        def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
            connection = os.path.realpath(self.connection_file)
            return [arg.replace("{connection_file}", connection) for arg in argv]

    return SandboxedKernelManager(**traits)


class KernelSession:
    """One kernel process with its own working directory, user, limits and private runtime folder.

    Closing is safe from any thread, also while code runs: the running call then gets an error saying the session
    was ended, and the kernel it would have restarted is never started.
    """

    def __init__(self, workdir: Path | None = None, *, memory_mb: int | None = 2048, cpu_seconds: int | None = 600,
                 max_output_chars: int = 4000, startup_timeout: float = 60.0) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="hanlin-python-"))
        self.memory_mb, self.cpu_seconds = memory_mb, cpu_seconds
        self.max_output_chars = max_output_chars
        self.startup_timeout = startup_timeout
        self._km: Any = None
        self._kc: Any = None
        self._user: Any = None  # python_sandbox.KernelUser while a kernel runs
        self._private: Path | None = None  # sockets, connection file, IPython's and the code's temp files
        self._lock = threading.Lock()
        self._closed = False
        self._fix_for: tuple[str, Hint] | None = None  # the cell that just failed, and its hint with a fixed cell
        self._images = 0

    @property
    def busy(self) -> bool:
        """True while code runs."""
        return self._lock.locked()

    @property
    def kernel_uid(self) -> int | None:
        """The user id the kernel runs as; None when it runs as the agent's user (or is not running)."""
        return self._user.uid if self._user is not None else None

    # ---- lifecycle ---------------------------------------------------------------------------
    def _start(self) -> None:
        """Start a kernel as its own user and check its limits; ToolError (and nothing left running) if either
        fails."""
        from hanlin.plugins.tools import python_limits, python_sandbox

        self._user = python_sandbox.take_user()
        _LIVE.add(self)
        try:
            self._private = Path(tempfile.mkdtemp(prefix="hanlin-kernel-"))
            self._prepare_folder()
            km = _manager(python_sandbox.launch_command(self._user), kernel_name="python3", transport="ipc",
                          ip=str(self._private / "kernel"), connection_file=str(self._private / "connection.json"))
            km.write_connection_file()
            for sub in ("ipython", "matplotlib"):
                (self._private / sub).mkdir()
            self._user.own(self._private)  # the kernel reads its connection file and makes its sockets here
            self._km = km
            km.start_kernel(cwd=str(self.workdir), env=python_sandbox.kernel_env(self.workdir, self._private),
                            **self._user.popen_args())
            self._kc = km.client()
            self._kc.start_channels()
            self._kc.wait_for_ready(timeout=self.startup_timeout)
            self._check_limits(python_limits)
        except BaseException as exc:
            self._stop()
            if isinstance(exc, ToolError):
                raise
            if isinstance(exc, Exception):
                raise ToolError(f"the Python kernel did not start: {type(exc).__name__}: {exc}") from exc
            raise

    def _prepare_folder(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.workdir.is_symlink() or not self.workdir.is_dir():
            raise ToolError(f"the kernel's folder {self.workdir} is not a plain folder; remove it")
        self._user.own(self.workdir)

    def _check_limits(self, python_limits: Any) -> None:
        limits = python_limits.wanted(self.memory_mb, self.cpu_seconds, own_user=self.kernel_uid is not None)
        out = self._run(python_limits.cell(limits), 30.0)
        printed = "".join(out["stdout"])
        if out["error"] is not None or out["timed_out"] or out["died"]:
            found = [f"the limits cell failed: {out['error'][2] if out['error'] else 'it timed out or the kernel died'}"]
        else:
            found = python_limits.problems(printed, limits, self.kernel_uid)
        if found:
            raise ToolError("the Python kernel's resource limits are not in place, so it was shut down and no code "
                            f"was run: {'; '.join(found)}. Check the host's rlimits (ulimit -a) and the python "
                            "tool's memory_mb / cpu_seconds")

    def _ensure(self) -> None:
        if self._km is None:
            self._start()

    def _restart(self) -> str:
        """Stop the kernel and start a fresh one; '' or why no new kernel runs."""
        self._stop()
        if self._closed:
            return "the session was ended"
        try:
            self._start()
        except ToolError as exc:
            return str(exc)
        return ""

    def _stop(self) -> None:
        """Shut the kernel down and remove what it had: channels, processes (all of its user's), private folder."""
        kc, km, user, private = self._kc, self._km, self._user, self._private
        self._kc = self._km = self._user = self._private = None
        if kc is not None:
            kc.stop_channels()
        if km is not None and km.has_kernel:
            km.shutdown_kernel(now=True)
        if km is not None:
            km.cleanup_resources()
        if user is not None:
            user.release()
        if private is not None:
            from hanlin.plugins.tools.python_sandbox import remove_tree

            remove_tree(private)
        if self._own_workdir and self._closed:
            from hanlin.plugins.tools.python_sandbox import remove_tree

            remove_tree(self.workdir)
        _LIVE.discard(self)

    def _kill(self) -> None:
        """Kill the kernel's processes without touching its channels (another thread is reading them)."""
        km, user = self._km, self._user
        process = getattr(getattr(km, "provisioner", None), "process", None)
        if process is not None:
            try:
                os.killpg(process.pid, signal.SIGKILL)  # the kernel leads its own process group
            except (ProcessLookupError, PermissionError):
                pass
        if user is not None:
            user.kill_all()

    def close(self) -> None:
        """End the session: no kernel of it runs afterwards, whatever thread is using it."""
        self._closed = True
        if not self._stop_if_idle():
            self._kill()  # busy: the running call sees the kernel die and finishes the stop itself

    def _stop_if_idle(self) -> bool:
        if not self._lock.acquire(blocking=False):
            return False
        try:
            self._stop()
        finally:
            self._lock.release()
        return True

    # ---- running code ------------------------------------------------------------------------
    def _run(self, code: str, timeout: float, on_input: Callable[[str], str] | None = None, *,
             store_history: bool = True) -> dict[str, Any]:
        """Execute and collect output; on timeout interrupt the kernel; detect a dead or a stuck kernel.

        With ``on_input`` the cell may ask the host for input (Jupyter's stdin channel): each ``input_request``'s
        prompt goes to ``on_input`` and its return value is the reply. The time spent in ``on_input`` does not count
        against ``timeout`` (the host's work has its own limits). A cell still running ``grace`` seconds after the
        interrupt (it ignores SIGINT, or sits in native code) is "stuck": only a restart frees the kernel.
        """
        msg_id = self._kc.execute(code, allow_stdin=on_input is not None, store_history=store_history)
        out: dict[str, Any] = {"stdout": [], "result": None, "error": None, "images": [], "timed_out": False,
                               "died": False, "stuck": False}
        deadline = time.monotonic() + timeout
        while True:
            if on_input is not None:
                deadline += self._answer_input(msg_id, on_input)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                out["timed_out"] = True
                self._km.interrupt_kernel()
                ended = self._drain(msg_id, min(5.0, max(1.0, timeout)))
                out["died"], out["stuck"] = ended == "died", ended == "busy"
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

    def _drain(self, msg_id: str, timeout: float) -> str:
        """Wait for the interrupted cell to end: 'idle', 'died', or 'busy' (still running after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self._kc.get_iopub_msg(timeout=0.1)
            except Empty:
                if not self._km.is_alive():
                    return "died"
                continue
            mine = msg.get("parent_header", {}).get("msg_id") == msg_id
            if mine and msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return "idle"
        return "busy"

    def _save_png(self, data: str) -> str:
        """Save an image into the kernel's folder. That folder belongs to the model's code, which may have put a
        symbolic link where the file goes: the file is made new (O_EXCL) and links are never followed."""
        while True:
            self._images += 1
            path = self.workdir / f"output_{self._images}.png"
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            except FileExistsError:
                continue
            with os.fdopen(fd, "wb") as f:
                f.write(base64.b64decode(data))
            return str(path)

    def _died_note(self, process: Any) -> str:
        code = process.poll() if process is not None else None
        if code == -signal.SIGKILL and self.cpu_seconds:
            return (f"it was killed (SIGKILL): most likely its CPU time limit (cpu_seconds={self.cpu_seconds}) ran "
                    "out, or the machine ran out of memory")
        return "a crash, os._exit, or the memory limit"

    def execute(self, code: str, timeout: float = 30.0, *, on_input: Callable[[str], str] | None = None,
                setup: str | None = None) -> ToolResult:
        """Run ``code``; ``setup`` runs silently first (e.g. to define helper functions), and ``on_input`` answers
        the cell's input requests (see ``_run``): how a host lets the code call back into it."""
        with self._lock:
            result = self._execute(code, timeout, on_input, setup)
        if self._closed:  # closed while we ran: close() could not stop the kernel, so we do
            self._stop_if_idle()
        return result

    def _execute(self, code: str, timeout: float, on_input: Callable[[str], str] | None,
                 setup: str | None) -> ToolResult:
        if self._closed:
            return ToolResult.error("this Python session was ended (reset or closed); nothing was run")
        try:
            self._ensure()
        except ToolError as exc:
            return ToolResult.error(str(exc))
        if setup is not None:
            prepared = self._run(setup, 30.0)
            if prepared["error"] is not None or prepared["timed_out"] or prepared["died"]:
                problem = prepared["error"][2] if prepared["error"] else "it timed out or the kernel died"
                if prepared["died"] or prepared["stuck"]:
                    self._restart()
                return ToolResult.error(f"the kernel's setup code failed, so the code was not run: {problem}")
        process = getattr(self._km.provisioner, "process", None)
        ran_fix = ""
        if self._fix_for is not None and code == self._fix_for[0] and self._fix_for[1].fixed_code is not None:
            # The same cell again, straight after it failed in a way the hint showed a fix for: unchanged it can only
            # fail the same way, so it runs with that fix (see python_hints).
            code, ran_fix = self._fix_for[1].fixed_code, f"[run with {self._fix_for[1].fix}, as the hint said]\n"
        elif (fixed := returning_cell_fix(code)) is not None:
            # It would not compile, so nothing of it would run: it runs as the hint would have it (see python_hints).
            code, ran_fix = fixed, f"[run with {RETURN_FIX}: a cell cannot return]\n"
        self._fix_for = None
        out = self._run(code, timeout, on_input)
        if (out["timed_out"] and not (out["died"] or out["stuck"] or out["stdout"] or self._closed)
                and (hint := timeout_hint(code)) is not None and reruns_safely(code)):
            # A recursion that branches, in a cell that only defines, assigns and prints: it runs again at once
            # with the cache the hint names (see python_timeout_hints), as a cell that cannot compile does.
            ran_fix += f"[timed out after {timeout:g} s; run again with {hint.fix}]\n"
            code = hint.fixed_code or code
            out = self._run(code, timeout, on_input)
        if self._closed:
            self._stop()
            return ToolResult.error("this Python session was ended while the code ran; its kernel is shut down")
        if out["died"] or out["stuck"]:
            why = (f"timed out after {timeout:g} s and did not stop when interrupted (it ignores SIGINT or is stuck "
                   "in native code)" if out["stuck"] else f"the Python kernel died while running this code "
                   f"({self._died_note(process)})")
            failed = self._restart()
            after = (f"; no new kernel could be started: {failed}" if failed else
                     ", so the kernel was restarted: all variables and imports are gone, re-run what you need")
            return ToolResult.error(why + after)
        quiet = not (out["stdout"] or out["result"] is not None or out["images"])
        if not (out["error"] or out["timed_out"]):
            out["values"] = self._values(shown_names(code)) if quiet else self._values(unprinted_names(code),
                                                                                      numbers_only=True)
        result = self._result(out, timeout, code)
        return result.model_copy(update={"content": ran_fix + result.content}) if ran_fix else result

    def _values(self, names: list[str], *, numbers_only: bool = False) -> dict[str, str]:
        """The reprs of ``names`` in the kernel, each by a silent cell kept out of the history (see python_shown).
        ``numbers_only``: of ints and floats only, so a big list or frame the note would not show is never rendered."""
        values = {}
        for name in names:
            probe = f"{name} if type({name}) in (int, float) else None" if numbers_only else bounded_repr_probe(name)
            got = self._run(probe, 5.0, store_history=False)
            if got["error"] is not None or got["timed_out"] or got["died"]:
                continue
            value = got["result"] if numbers_only else "".join(got["stdout"]).rstrip("\n") or None
            if value is not None:
                values[name] = value
        return values

    def _result(self, out: dict[str, Any], timeout: float, code: str) -> ToolResult:
        parts = ["".join(out["stdout"])] if out["stdout"] else []
        if out["result"] is not None:
            parts.append(out["result"])
        for image in out["images"]:
            parts.append(f"[image saved to {image}]")
        text = cut("\n".join(p.rstrip("\n") for p in parts), self.max_output_chars)
        argv_note = f"\n{ARGV_NOTE}" if ARGV_USE.search(code) else ""
        if out["timed_out"]:
            note = f"timed out after {timeout:g} s and was interrupted; variables defined before that are kept"
            if hint := timeout_hint(code):
                note += "\n" + hint.text
                self._fix_for = (code, hint)
            return ToolResult(content=(text + "\n" if text else "") + note, is_error=True, artifacts=out["images"])
        if out["error"] is not None:
            name, value, trace = out["error"]
            if name == "StdinNotImplementedError":
                return ToolResult.error("input() is not available: nobody can type here; put the values in the code")
            lines = [line for line in trace.splitlines() if line.strip() and not set(line.strip()) <= {"-"}]
            short = "\n".join(lines[-8:]) + argv_note  # the end of the traceback is where the cause is
            if hint := error_hint(name, value, code):
                short += "\n" + hint.text
                if hint.fixed_code is not None:
                    self._fix_for = (code, hint)
            return ToolResult(content=cut(f"{text}\n{short}".strip(), self.max_output_chars), is_error=True,
                              artifacts=out["images"])
        values = out.get("values", {})
        shown = text + unprinted_text(values, text) if text else no_output_text(values)
        return ToolResult(content=shown + argv_note, artifacts=out["images"])
