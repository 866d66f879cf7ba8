"""Who a python-tool kernel runs as, with which interpreter, environment and folders.

The model's code must not act with the agent's rights. Run as root (containers, CI), each kernel gets a user id of
its own, taken from ``KERNEL_UIDS`` and held (by a lock file, so two hanlin processes never share one) for the
kernel's life: a session's folder is ``0700`` and owned by that id, so no other session's kernel can read it, the
kernel cannot raise the hard rlimits it is given, cannot read the agent's files under ``/root`` and cannot signal
the agent; when the kernel ends, every process still running under its id is killed (code that forked and left the
kernel's process group goes too). Run as an ordinary user nothing can be switched: kernels keep that user's rights,
so sessions are separated by their folder names only (see the python tool's notes).

A kernel never inherits the agent's environment (API keys live there): it gets ``PATH``, a locale, and a ``HOME``
and ``TMPDIR`` of its own.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hanlin.errors import ToolError

# Ids no account uses (checked against passwd and running processes as well). Below 65536, so that a container whose
# user namespace maps only 65536 ids can still switch to them.
KERNEL_UIDS = range(59000, 60000)

# Started as the kernel's user: the interpreter must run, see the agent's packages and import ipykernel.
_PROBE = "import sys, site\n[site.addsitedir(d) for d in sys.argv[1:]]\nimport ipykernel.kernelapp\nprint(sys.version_info[:2])"

# The kernel's launch command: the agent's package folders on the path (a system interpreter of the same version does
# not know them), then ipykernel as ``python -m ipykernel_launcher -f <connection file>`` would start it.
_BOOTSTRAP = """\
import json, site, sys
[site.addsitedir(d) for d in json.loads(sys.argv[2])]
sys.argv = ["ipykernel_launcher", "-f", sys.argv[1]]
from ipykernel import kernelapp
kernelapp.launch_new_instance()
"""


def running_as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


@dataclass(frozen=True, slots=True)
class KernelUser:
    """The id a kernel runs as; ``uid`` None: the agent's own (not root, so nothing to drop)."""

    uid: int | None
    lock_fd: int | None = None

    def popen_args(self) -> dict[str, object]:
        if self.uid is None:
            return {}
        return {"user": self.uid, "group": self.uid, "extra_groups": []}

    def own(self, path: Path) -> None:
        """Give ``path`` (a folder) and everything in it to this user, ``0700``: readable by nobody else."""
        if self.uid is not None:
            _chown_tree(path, self.uid)
        os.chmod(path, 0o700)

    def kill_all(self) -> None:
        """Kill every process running under this id (fork bombs and daemons the code started included)."""
        if self.uid is None:
            return
        for _ in range(5):  # a process forking in a loop may add one between rounds
            pids = _pids_of(self.uid)
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def release(self) -> None:
        """Kill what runs under the id, then let other kernels take it."""
        self.kill_all()
        if self.lock_fd is not None:
            os.close(self.lock_fd)  # drops the flock


def _chown_tree(top: Path, uid: int) -> None:
    """chown without ever following a symbolic link: the tree was written by untrusted code (fwalk walks by folder
    descriptors, so a folder swapped for a link meanwhile is not entered)."""
    os.chown(top, uid, uid, follow_symlinks=False)
    for _folder, dirs, files, fd in os.fwalk(top, follow_symlinks=False):
        for name in dirs + files:
            try:
                os.chown(name, uid, uid, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                pass


def _pids_of(uid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status", encoding="ascii", errors="replace") as f:
                uids = next((line.split()[1:] for line in f if line.startswith("Uid:")), [])
        except OSError:
            continue
        if str(uid) in uids:
            found.append(int(entry))
    return found


def _lock_folder() -> Path:
    """A folder only root can write, holding one lock file per kernel id in use."""
    folder = Path(tempfile.gettempdir()) / "hanlin-kernel-users"
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        pass
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o022:
        raise ToolError(f"{folder} is not a folder owned by root and writable only by it; remove it so hanlin can "
                        "make it again (it holds the locks of the python tool's kernel user ids)")
    return folder


def _id_is_free(uid: int) -> bool:
    import grp
    import pwd

    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(uid)
            return False  # an account of this machine
        except KeyError:
            pass
    return not _pids_of(uid)


def take_user() -> KernelUser:
    """An id for one kernel: its own when we are root, else the agent's (uid None)."""
    if not running_as_root():
        return KernelUser(None)
    folder = _lock_folder()
    for uid in KERNEL_UIDS:
        fd = os.open(folder / str(uid), os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                continue  # another kernel holds it
            raise
        if _id_is_free(uid):
            return KernelUser(uid, fd)
        os.close(fd)
    raise ToolError(f"all {len(KERNEL_UIDS)} kernel user ids ({KERNEL_UIDS.start}-{KERNEL_UIDS.stop - 1}) are in use; "
                    "end idle sessions (agent.reset) or lower max_kernels")


def closed_ancestors(folder: Path) -> list[Path]:
    """Folders above ``folder`` that other users cannot pass through (no ``o+x``). A kernel with its own user still
    works in its folder by relative paths, but an absolute path into it (``os.path.abspath``, which many libraries
    use) fails with PermissionError."""
    if not running_as_root():
        return []
    closed = []
    for parent in Path(os.path.abspath(folder)).parents:
        try:
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                closed.append(parent)
        except OSError:
            pass
    return closed


def _site_folders() -> list[str]:
    return [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and os.path.isdir(p)]


def _probe(interpreter: str, user: KernelUser) -> bool:
    try:
        done = subprocess.run([interpreter, "-I", "-c", _PROBE, *_site_folders()], cwd="/", env=_base_env(),
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
                              **user.popen_args())  # type: ignore[call-overload]
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0 and done.stdout.strip() == str(tuple(sys.version_info[:2]))


@functools.cache
def _interpreter_for(dropped: bool) -> str | None:
    """The first interpreter a kernel user can start with ipykernel, of this Python's version (the agent's compiled
    packages must load): the agent's own, unless it lives where others cannot read (pyenv under /root)."""
    if not dropped:
        return sys.executable
    version = "python%d.%d" % sys.version_info[:2]
    candidates = dict.fromkeys(c for c in (sys.executable, os.path.realpath(sys.executable), shutil.which(version),
                                           f"/usr/bin/{version}", f"/usr/local/bin/{version}") if c)
    probe_user = take_user()
    try:
        return next((c for c in candidates if _probe(c, probe_user)), None)
    finally:
        probe_user.release()


def interpreter(user: KernelUser) -> str:
    found = _interpreter_for(user.uid is not None)
    if found is None:
        raise ToolError(
            "running as root, and no Python %d.%d with ipykernel here can be started by an unprivileged user, so "
            "the python tool refuses to run model code as root. Install the agent's Python where other users can "
            "read it (not under /root, e.g. a venv from the system python3), or run hanlin as an ordinary user"
            % sys.version_info[:2]
        )
    return found


def launch_command(user: KernelUser) -> list[str]:
    """The kernel's argv; ``{connection_file}`` is filled in by jupyter_client."""
    return [interpreter(user), "-I", "-c", _BOOTSTRAP, "{connection_file}", json.dumps(_site_folders())]


def _base_env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}


def kernel_env(home: Path, private: Path) -> dict[str, str]:
    """The kernel's whole environment: nothing of the agent's but PATH."""
    return {**_base_env(), "HOME": str(home), "TMPDIR": str(private), "IPYTHONDIR": str(private / "ipython"),
            "MPLCONFIGDIR": str(private / "matplotlib"), "PYDEVD_DISABLE_FILE_VALIDATION": "1",
            "MALLOC_ARENA_MAX": "2"}  # glibc reserves 64 MB of address space per thread arena: RLIMIT_AS counts it


def remove_tree(path: Path) -> None:
    """Remove a folder the model's code wrote into. Root removes anything; an ordinary user may first have to give
    itself back the permissions the code took away (``chmod 000`` on a subfolder)."""
    shutil.rmtree(path, ignore_errors=True)
    if not path.exists():
        return
    os.chmod(path, stat.S_IRWXU)
    for _folder, dirs, _files, fd in os.fwalk(path, follow_symlinks=False):
        for name in dirs:  # before fwalk enters them (top-down)
            try:
                os.chmod(name, stat.S_IRWXU, dir_fd=fd)
            except OSError:
                pass
    shutil.rmtree(path, ignore_errors=True)
