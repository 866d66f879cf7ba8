"""Open files and folders inside one workspace folder, and never outside it, even while the folder changes.

Why not ``realpath`` and then ``open``: the check and the use see the disk at two moments. Code the python tool
runs shares the workspace, so it can swap a checked folder for a symbolic link to ``/`` between the two, and the
open then lands outside. Here nothing is checked first and used later. A path is walked one component at a time
from a descriptor of the workspace folder, each step an ``openat(folder, name, O_NOFOLLOW)``: the kernel never
follows a link on our behalf. A link met on the way is read (``readlinkat``) and its target walked by this same
code, so an absolute target must name the workspace and ``..`` can never climb above it; ``..`` steps back along
the names already walked, not through the disk's own ``..``.

Hard links cannot be told apart from the file they share (there is no "target" to check), so a regular file with
more than one name is refused: its other name may be outside. A mount point inside the workspace is not detected;
only root can make one.

Linux and other POSIX systems only (``dir_fd`` and ``O_NOFOLLOW``).
"""

from __future__ import annotations

import errno
import os
import stat
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from hanlin import ToolInputError

MAX_PATH_CHARS = 4096  # the usual PATH_MAX; a longer path is a mistake or an attack
MAX_LINKS = 40  # symbolic links followed in one path, as Linux allows
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = os.O_NOFOLLOW
_FOLDER = os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW | _CLOEXEC
_LINK_ERRORS = {errno.ELOOP, errno.EMLINK, errno.ENOTDIR}  # what O_NOFOLLOW says about a link (EMLINK: BSD)
_OUTSIDE = "it leads outside the workspace (through '..' or a symbolic link)"


class WorkspaceError(ToolInputError):
    """A path the workspace will not serve; the message names the path and says what to do instead."""


class OutsideWorkspace(WorkspaceError):
    """The path, followed honestly, leaves the workspace."""


class NotFound(WorkspaceError):
    """Nothing exists at the path (callers reword this for their own verb)."""


class IsAFolder(WorkspaceError):
    """A file was wanted and the path names a folder."""


class NotAFolder(WorkspaceError):
    """A folder was wanted and the path names a file."""


@dataclass(slots=True)
class Opened:
    """A descriptor opened inside the workspace, the path it was reached by (relative, '/'-separated, '.' for the
    workspace itself) and its ``fstat``. The caller owns ``fd``."""

    fd: int
    shown: str
    st: os.stat_result

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.st.st_mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.st.st_mode)


@dataclass(slots=True)
class Entry:
    """One row of a listing: the name relative to the listed folder, its kind and size, and for a link whether it
    stays inside the workspace."""

    rel: str
    kind: str  # "dir", "file", "link" or "other"
    size: int = 0
    link_inside: bool = False


class Workspace:
    """Confined access to the folder ``root`` (which must exist); every method takes the model's path as given."""

    def __init__(self, root: str | Path) -> None:
        self.given = Path(os.path.abspath(Path(root).expanduser()))
        self.root = Path(os.path.realpath(self.given))

    # ---- opening -----------------------------------------------------------------------------------
    def open_file(self, path: str, *, write: bool = False, append: bool = False) -> Opened:
        """A regular file for reading, or for writing (created with its missing folders; never truncated here).

        Refuses folders (WorkspaceError), devices, sockets and pipes (opened non-blocking, so a pipe cannot hang
        the call) and hard-linked files.
        """
        if write:
            flags = os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | (os.O_APPEND if append else 0)
        else:
            flags = os.O_RDONLY | os.O_NONBLOCK
        opened = self._open(path, flags, create_folders=write)
        try:
            if opened.is_dir:
                raise IsAFolder(f"{path!r} is a folder, not a file")
            if not opened.is_file:
                raise WorkspaceError(f"{path!r} is not a regular file (a device, socket or pipe) and cannot be used")
            if opened.st.st_nlink > 1:
                raise WorkspaceError(
                    f"{path!r} is refused: it is a hard link (the same file has {opened.st.st_nlink} names, and "
                    "another one may be outside the workspace). Use a file that has only this name, e.g. a copy")
        except BaseException:
            os.close(opened.fd)
            raise
        return opened

    def open_folder(self, path: str) -> Opened:
        """A folder, for listing."""
        return self._open(path, _FOLDER, create_folders=False)

    def stays_inside(self, path: str) -> bool:
        """Whether ``path`` (e.g. a link found by a listing) leads to a place inside the workspace; a dangling
        link that points inside counts as inside, like ``realpath`` would say."""
        try:
            os.close(self._open(path, os.O_RDONLY | os.O_NONBLOCK, create_folders=False).fd)
        except OutsideWorkspace:
            return False
        except WorkspaceError:  # missing, unreadable, ...: still a place inside
            return True
        return True

    # ---- listing -----------------------------------------------------------------------------------
    def entries(self, folder: Opened, recursive: bool) -> Iterator[Entry]:
        """The folder's entries sorted by name; with ``recursive``, each sub-folder's after its parent's, depth
        first (the order of ``os.walk``). Sub-folders are entered with ``O_NOFOLLOW``: one swapped for a link
        meanwhile is skipped, never followed."""
        yield from self._entries(folder.fd, "" if folder.shown == "." else folder.shown, "", recursive)

    def _entries(self, fd: int, base: str, prefix: str, recursive: bool) -> Iterator[Entry]:
        with os.scandir(fd) as it:  # scandir works on a duplicate: fd stays ours
            found = sorted(it, key=lambda e: e.name)
        folders = []
        for item in found:
            rel = prefix + item.name
            try:
                if item.is_symlink():
                    yield Entry(rel, "link", link_inside=self.stays_inside(f"{base}/{rel}" if base else rel))
                elif item.is_dir(follow_symlinks=False):
                    folders.append(item.name)
                    yield Entry(rel, "dir")
                elif item.is_file(follow_symlinks=False):
                    yield Entry(rel, "file", item.stat(follow_symlinks=False).st_size)
                else:
                    yield Entry(rel, "other")
            except OSError:  # removed while listed
                continue
        if not recursive:
            return
        for name in folders:
            try:
                sub = os.open(name, _FOLDER, dir_fd=fd)
            except OSError:  # removed, or swapped for a link, meanwhile
                continue
            try:
                yield from self._entries(sub, base, f"{prefix}{name}/", recursive)
            finally:
                os.close(sub)

    # ---- the walk ----------------------------------------------------------------------------------
    def _parts(self, path: str) -> list[str]:
        """The model's path as components below the workspace; an absolute one must name the workspace."""
        if not isinstance(path, str) or not path.strip() or "\x00" in path:
            raise WorkspaceError(f"invalid path {path!r}: give a file path relative to the workspace, "
                                 "e.g. 'notes.txt'")
        if len(path) > MAX_PATH_CHARS:
            raise WorkspaceError(f"the path is {len(path):,} characters long; the limit is {MAX_PATH_CHARS:,}. "
                                 "Give a shorter path relative to the workspace")
        parts = self._below_root(path)
        if parts is None:
            raise OutsideWorkspace(f"access to {path!r} is refused: absolute paths outside it are refused. Only "
                                   "files inside the workspace can be used; give a relative path such as "
                                   "'notes/todo.txt'")
        return parts

    def _below_root(self, path: str) -> list[str] | None:
        """Components of ``path`` below the workspace (absolute: only if it starts with the workspace's path)."""
        pure = PurePosixPath(path)
        if not pure.is_absolute():
            return [p for p in path.split("/") if p] + (["."] if path.endswith("/") else [])
        for root in (self.root, self.given):
            if pure.parts[: len(root.parts)] == root.parts:
                return list(pure.parts[len(root.parts):]) + (["."] if path.endswith("/") else [])
        return None

    def _open(self, path: str, flags: int, *, create_folders: bool) -> Opened:
        """Walk ``path`` from the workspace and open its last component with ``flags`` (plus O_NOFOLLOW)."""
        todo = deque(self._parts(path))
        names: list[str] = []  # the folders walked so far, below the workspace
        here = _Cursor(self._open_root())
        links = steps = 0
        try:
            while True:
                steps += 1
                if steps > 4 * MAX_PATH_CHARS:  # a folder created and removed again and again under us
                    raise WorkspaceError(f"{path!r} keeps changing while it is opened; try again")
                if not todo:  # the path names a folder already walked
                    try:
                        return _finish(os.open(".", flags | _NOFOLLOW | _CLOEXEC, 0o644, dir_fd=here.fd), names)
                    except OSError as exc:
                        raise _explain(exc, path, ".", True) from None
                name = todo.popleft()
                if name in ("", "."):
                    continue
                if name == "..":
                    if not names:
                        raise self._outside(path)
                    names.pop()
                    self._walk_again(here, names)
                    continue
                last = not todo
                try:
                    if last:
                        opened = os.open(name, flags | _NOFOLLOW | _CLOEXEC, 0o644, dir_fd=here.fd)
                        return _finish(opened, [*names, name])
                    here.enter(os.open(name, _FOLDER, dir_fd=here.fd))
                    names.append(name)
                except OSError as exc:
                    target = _read_link(name, here.fd) if exc.errno in _LINK_ERRORS else None
                    if target is not None:
                        links += 1
                        if links > MAX_LINKS:
                            raise WorkspaceError(f"{path!r} goes through more than {MAX_LINKS} symbolic links "
                                                 "(a loop?); give the file's own path") from None
                        todo = self._follow(path, target, here, names, todo)
                    elif exc.errno == errno.ENOENT and not last and ".." in todo:
                        todo = _collapse([name, *todo])  # a missing folder holds nothing: '..' after it is text
                    elif exc.errno == errno.ENOENT and not last and create_folders:
                        _make_folder(name, here.fd, path)
                        todo.appendleft(name)  # and open it, O_NOFOLLOW as always
                    else:
                        raise _explain(exc, path, name, last) from None
        finally:
            here.close()

    def _outside(self, path: str) -> OutsideWorkspace:
        return OutsideWorkspace(f"access to {path!r} is refused: {_OUTSIDE}. Only files inside the workspace can "
                                "be used; give a relative path such as 'notes/todo.txt'")

    def _open_root(self) -> int:
        try:
            return os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
        except OSError as exc:
            raise WorkspaceError(f"the workspace folder cannot be opened ({exc.strerror}); it was removed or "
                                 "its permissions changed") from None

    def _walk_again(self, here: _Cursor, names: list[str]) -> None:
        """Stand in ``names`` again from the top (after a '..'), with O_NOFOLLOW at every step."""
        here.enter(self._open_root())
        for name in names:
            try:
                here.enter(os.open(name, _FOLDER, dir_fd=here.fd))
            except OSError as exc:
                raise WorkspaceError(f"the folder {'/'.join(names)!r} changed while it was opened "
                                     f"({exc.strerror}); try again") from None

    def _follow(self, path: str, target: str, here: _Cursor, names: list[str], todo: deque[str]) -> deque[str]:
        """Continue the walk through a link's ``target``: relative from the link's folder, absolute from the top."""
        if not target.startswith("/"):
            return deque([*target.split("/"), *todo])
        below = self._below_root(target.rstrip("/") or "/")
        if below is None:
            raise self._outside(path)
        here.enter(self._open_root())
        names.clear()
        return deque([*below, *todo])


class _Cursor:
    """The folder a walk stands in: one descriptor held at a time, each closed exactly once."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def enter(self, fd: int) -> None:
        old, self.fd = self.fd, fd
        os.close(old)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _finish(fd: int, names: list[str]) -> Opened:
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    return Opened(fd, "/".join(names) or ".", st)


def _read_link(name: str, fd: int) -> str | None:
    """The target of the link ``name`` in folder ``fd``, or None if it is not a link."""
    try:
        return os.readlink(name, dir_fd=fd)
    except OSError:
        return None


def _collapse(parts: list[str]) -> deque[str]:
    """``a/b/../c`` as ``a/c`` (leading '..' kept): exact for components that do not exist."""
    out: list[str] = []
    for part in parts:
        if part == "..":
            if out and out[-1] != "..":
                out.pop()
            else:
                out.append("..")
        elif part != ".":
            out.append(part)
    return deque(out)


def _make_folder(name: str, fd: int, path: str) -> None:
    try:
        os.mkdir(name, 0o777, dir_fd=fd)
    except FileExistsError:
        pass  # made meanwhile: the next step opens it, O_NOFOLLOW as always
    except OSError as exc:
        raise _explain(exc, path, name, False) from None


def _explain(exc: OSError, path: str, name: str, last: bool) -> WorkspaceError:
    """An OSError met while walking ``path`` as a message for the model (never a traceback)."""
    code = exc.errno
    if code == errno.ENOENT:
        return NotFound(f"there is nothing at {path!r} in the workspace")
    if code == errno.ENOTDIR and last:
        return NotAFolder(f"{path!r} is a file, not a folder")
    if code == errno.ENAMETOOLONG:
        shown = name if len(name) <= 40 else f"{name[:40]}..."
        return WorkspaceError(f"the name {shown!r} in {path[:80]!r} is longer than the file system allows "
                              f"({len(name.encode())} bytes; usually at most 255); use a shorter name")
    if code == errno.ENOTDIR:
        return WorkspaceError(f"{path!r} cannot be opened: {name!r} in it is a file, not a folder")
    if code == errno.EISDIR:
        return IsAFolder(f"{path!r} is a folder, not a file")
    if code in (errno.ENXIO, errno.EOPNOTSUPP):
        return WorkspaceError(f"{path!r} is not a regular file (a device, socket or pipe) and cannot be used")
    if code in (errno.EACCES, errno.EPERM):
        return WorkspaceError(f"{path!r} cannot be opened: permission denied")
    return WorkspaceError(f"{path!r} cannot be opened: {exc.strerror or exc}")
