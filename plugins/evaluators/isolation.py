"""How the code sandbox starts a child and how it makes sure every process of that child is gone afterwards.

``sandbox.py`` decides what runs and how its ending reads; this module decides where it runs. Three ways, the best
this machine allows, chosen once per process by trying each:

- ``namespaces`` (root with util-linux ``unshare`` and ``setpriv``, CI and containers): the child gets its own PID
  namespace (when its first process exits, or is killed, the kernel kills every process left in it, however it
  daemonized: ``setsid``, double fork), its own network namespace (no interface but a loopback that is down: no
  connection reaches this machine or any other), its own mount namespace with its own ``/proc`` (the evaluator's
  processes are not even listed), and a user id of its own, unused by anyone else, so ``RLIMIT_NPROC``, which the
  kernel counts per user, bounds this one sandbox and not every sandbox at once;
- ``user-namespaces`` (an ordinary user where the kernel lets one create user namespaces): the same PID, network
  and mount namespaces inside a user namespace; files keep the user's own permissions;
- ``plain`` (neither works): a separate process group, a sweep afterwards for processes carrying the run's marker,
  and, as root, a user id of its own. No network isolation: the note says so.
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Mode = Literal["namespaces", "user-namespaces", "plain"]
MARKER = "HANLIN_SANDBOX_RUN"  # in every sandboxed process's environment: the plain mode's sweep looks for it
_UID_RANGE = (1_500_000_000, 2_000_000_000)  # far above any uid a distribution or an LDAP directory hands out


@dataclass(frozen=True, slots=True)
class Launcher:
    """How children start here. ``root``: whether each run gets a user id of its own."""

    interpreter: str
    mode: Mode
    root: bool
    note: str = ""

    @property
    def pid_namespace(self) -> bool:
        """Whether the child starts as the first process of its own PID namespace (``sandbox.py`` keeps it as an
        init and runs the program in a child of it)."""
        return self.mode != "plain"

    def command(self, argv: list[str], uid: int | None) -> list[str]:
        """``argv`` (an interpreter command) wrapped so that it runs isolated as ``uid``."""
        if self.mode == "namespaces":
            assert uid is not None
            return [*_NAMESPACES, "--", "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                    "--no-new-privs", "--", *argv]
        if self.mode == "user-namespaces":
            return [*_NAMESPACES, "--user", "--map-root-user", "--", *argv]
        return argv

    def popen_options(self, uid: int | None) -> dict:
        """What ``subprocess.Popen`` needs besides the command: the plain mode switches users itself."""
        if self.mode == "plain" and uid is not None:
            return {"user": uid, "group": uid, "extra_groups": []}
        return {}

    def new_uid(self) -> int | None:
        """A user id for one run, as root: random in a range no account uses, and not in the password database."""
        if not self.root:
            return None
        import pwd

        while True:
            uid = _UID_RANGE[0] + secrets.randbelow(_UID_RANGE[1] - _UID_RANGE[0])
            try:
                pwd.getpwuid(uid)
            except KeyError:
                return uid

    def kill_all(self, proc: subprocess.Popen, uid: int | None, marker: str) -> None:
        """Kill every process the run started. ``proc``: the process Popen started (``unshare`` in the namespace
        modes). Call it before ``proc`` is reaped: a reaped pid may already belong to someone else."""
        if self.mode != "plain":
            if proc.returncode is None:  # its child is the namespace's first process: the kernel kills the rest
                for child in _children(proc.pid):
                    _kill(child)
                _kill_group(proc.pid)
            return  # once the first process has ended, the namespace is empty: nothing can be left
        _kill_group(proc.pid)
        for _ in range(20):  # a fork bomb can add processes while we sweep; RLIMIT_NPROC bounds how many
            found = _sweep(uid, marker)
            if not found:
                break
            for pid in found:
                _kill(pid)


_NAMESPACES = ["unshare", "--pid", "--fork", "--kill-child", "--net", "--mount", "--mount-proc"]


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _children(pid: int) -> list[int]:
    """Direct children of ``pid``, from /proc (``children`` when the kernel has it, else every process's ppid)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return [int(p) for p in text.split()]
    except OSError:
        pass
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _sweep(uid: int | None, marker: str) -> list[int]:
    """Processes left by a plain-mode run: those running as its own uid (root), or carrying its marker."""
    found = []
    needle = f"{MARKER}={marker}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if uid is not None:
                if entry.stat().st_uid == uid:
                    found.append(int(entry.name))
            elif needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


_IDENTITY = "import sys; print(sys.version, sys.base_prefix, sys.path)"


def _probe(command: list[str], options: dict) -> str | None:
    """What the command printed, or None when it failed."""
    try:
        done = subprocess.run(command, cwd="/", env={"PATH": "/usr/bin:/bin"}, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=60, **options)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _interpreters() -> list[str]:
    """The evaluator's own interpreter first; as another user it may be unreadable (pyenv under /root)."""
    found = (sys.executable, shutil.which("python3"), "/usr/bin/python3", "/usr/local/bin/python3")
    return list(dict.fromkeys(c for c in found if c))


@functools.cache
def launcher() -> Launcher:
    """The most isolated way this machine can start a sandboxed interpreter (see the module docstring)."""
    root = os.geteuid() == 0
    tools = shutil.which("unshare") is not None and (not root or shutil.which("setpriv") is not None)
    modes: list[Mode] = (["namespaces"] if root else ["user-namespaces"]) if tools else []
    for mode in [*modes, "plain"]:
        for interpreter in _interpreters():
            trial = Launcher(interpreter, mode, root)
            uid = trial.new_uid()
            # the same interpreter as another user must see the same installation: setpriv execs with root's
            # access still in force, so a binary under a private home can start and then miss its own stdlib
            seen = _probe(trial.command([interpreter, "-I", "-c", _IDENTITY], uid), trial.popen_options(uid))
            if seen is not None and seen == _probe([interpreter, "-I", "-c", _IDENTITY], {}):
                return Launcher(interpreter, mode, root, _note(mode, root))
    return Launcher(sys.executable, "plain", False,
                    "no Python interpreter here can be started as another user, so sandboxed code keeps this "
                    "process's file permissions and network; install a system python3 (and util-linux) or run "
                    "the evaluation in a container")


def _note(mode: Mode, root: bool) -> str:
    if mode == "namespaces":
        return ""
    if mode == "user-namespaces":
        return ("sandboxed code runs in its own PID, network and mount namespaces but keeps this user's file "
                "permissions (not root, so it cannot switch users); evaluate untrusted models in a container")
    what = "its own user id" if root else "this user's file permissions"
    return (f"sandboxed code runs with {what} but shares this machine's network and process table (no usable "
            "'unshare' here: install util-linux, or allow user namespaces); evaluate untrusted models in a container")
