"""The `files` tools: read, write and list files inside one workspace folder, and nowhere else.

An agent's file access is confined to its workspace because a model's path is untrusted input: ``../``, an
absolute path or a symlink planted inside the workspace must never reach the rest of the disk. Every path is
resolved to its real location (symlinks followed; a file that does not exist yet is judged by its resolved
parent) and refused unless that location is inside the workspace's own real path. Opening uses ``O_NOFOLLOW``
on the checked path, so a link swapped in after the check is refused rather than followed.

Reads and writes are capped (a model's context is small and a runaway loop must not fill the disk); a cut read
says where to continue. Binary files are described, never dumped into the transcript.
"""

from __future__ import annotations

import fnmatch
import mimetypes
import os
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from hanlin import ConfigurationError, Tool, ToolInputError, ToolSpec, Toolkit, hookimpl, tool

MAX_WRITE_CHARS = 4096  # per call: the longest string a constrained-decoding grammar expands; longer files: append
SNIFF_BYTES = 8192


def _is_binary(head: bytes) -> bool:
    """NUL bytes, or bytes that are not UTF-8 and hold many control characters, mean binary.

    Text in a legacy 8-bit encoding (Latin-1, cp1252) has almost no control characters, so it is still shown
    (undecodable bytes become U+FFFD) rather than called binary.
    """
    if b"\x00" in head:
        return True
    try:
        head.decode("utf-8")
        return False
    except UnicodeDecodeError as exc:
        if exc.start >= len(head) - 3 and len(head) == SNIFF_BYTES:  # a multi-byte character cut by the sniff
            return False
    control = sum(1 for b in head if b < 32 and b not in b"\t\n\r\f\b")
    return control > len(head) * 0.05


class FilesToolkit(Toolkit):
    """read_file, write_file and list_files confined to ``workspace``.

    ``workspace=None`` makes a fresh temporary folder, which ``close()`` deletes: the safe default is a scratch
    space that holds nothing of the user's. Pass an explicit folder (it must exist) to work on real files; it is
    never deleted. Caps: ``max_read_chars`` per read (the rest is announced with the offset to continue from),
    ``max_file_bytes`` for any file written, ``max_entries`` per listing.
    """

    def __init__(self, workspace: str | Path | None = None, max_read_chars: int = 20_000,
                 max_file_bytes: int = 1_000_000, max_entries: int = 500) -> None:
        if workspace is None:
            self._owned: Path | None = Path(tempfile.mkdtemp(prefix="hanlin-files-"))
            workspace = self._owned
        else:
            self._owned = None
        root = Path(workspace).expanduser()
        if not root.is_dir():
            raise ConfigurationError(f"files workspace {str(workspace)!r} does not exist or is not a folder; "
                                     "create it first, or pass workspace=None for a fresh temporary folder")
        if min(max_read_chars, max_file_bytes, max_entries) < 1:
            raise ConfigurationError("max_read_chars, max_file_bytes and max_entries must be at least 1")
        self.workspace = Path(os.path.realpath(root))
        self.max_read_chars, self.max_file_bytes, self.max_entries = max_read_chars, max_file_bytes, max_entries

    # ---- confinement -----------------------------------------------------------------------------
    def resolve(self, path: str) -> Path:
        """The real path ``path`` names inside the workspace, or ToolInputError if it would leave it."""
        if not path.strip() or "\x00" in path:
            raise ToolInputError(f"invalid path {path!r}: give a file path relative to the workspace, e.g. 'notes.txt'")
        candidate = Path(path)
        real = Path(os.path.realpath(candidate if candidate.is_absolute() else self.workspace / candidate))
        if real != self.workspace and not real.is_relative_to(self.workspace):
            why = ("absolute paths outside it are refused" if candidate.is_absolute()
                   else "it leads outside the workspace (through '..' or a symbolic link)")
            raise ToolInputError(f"access to {path!r} is refused: {why}. Only files inside the workspace can be "
                                 "used; give a relative path such as 'notes/todo.txt'")
        return real

    def _show(self, real: Path) -> str:
        rel = real.relative_to(self.workspace).as_posix()
        return "." if rel == "." else rel

    # ---- tools ---------------------------------------------------------------------------------------
    @tool
    def read_file(self, path: str, offset: Annotated[int, Field(ge=0)] = 0,
                  limit: Annotated[int | None, Field(ge=1)] = None) -> str:
        """Read a text file from the workspace. Long files are cut; the note at the end says how to read on.

        Args:
            path: file path relative to the workspace, e.g. "notes/todo.txt".
            offset: number of lines to skip from the start (0 reads from the first line).
            limit: at most this many lines (default: as many as fit the size cap).
        """
        real = self.resolve(path)
        if real.is_dir():
            raise ToolInputError(f"{path!r} is a folder; use list_files to see what it holds")
        if not real.exists():
            raise ToolInputError(f"there is no file {path!r} in the workspace; use list_files to see what exists")
        if not real.is_file():
            raise ToolInputError(f"{path!r} is not a regular file (a device, socket or pipe) and cannot be read")
        size = real.stat().st_size
        with self._open(real, os.O_RDONLY) as handle:
            head = handle.read(SNIFF_BYTES)
            if _is_binary(head):
                kind = mimetypes.guess_type(real.name)[0] or "unknown type"
                return f"{path!r} is a binary file ({size:,} bytes, {kind}); its contents are not shown"
            handle.seek(0)
            return self._read_lines(handle, path, offset, limit)

    def _read_lines(self, handle: Any, path: str, offset: int, limit: int | None) -> str:
        lines: list[str] = []
        used, number, cut = 0, 0, None
        for number, raw in enumerate(handle, 1):
            if number <= offset:
                continue
            if limit is not None and len(lines) >= limit:
                end = offset + limit
                cut = f"[{limit} lines shown (lines {offset + 1}-{end}); read on with offset={end}]"
                break
            line = raw.decode("utf-8", errors="replace")
            if used + len(line) > self.max_read_chars:
                if not lines:  # a single line longer than the cap: show its start
                    lines.append(line[: self.max_read_chars])
                    cut = (f"[line {number} is longer than {self.max_read_chars:,} characters and was cut; "
                           f"read on with offset={number}]")
                else:
                    cut = (f"[cut at {self.max_read_chars:,} characters: lines {offset + 1}-{number - 1} shown; "
                           f"read on with offset={number - 1}]")
                break
            lines.append(line)
            used += len(line)
        if not lines and cut is None:
            if offset:
                return f"{path!r} has only {number} lines; offset={offset} is past its end"
            return f"{path!r} is empty"
        text = "".join(lines)
        if cut is None:
            return text
        return text + ("" if text.endswith("\n") else "\n") + cut

    @tool
    def write_file(self, path: str, content: Annotated[str, Field(max_length=MAX_WRITE_CHARS)],
                   append: bool = False) -> str:
        """Write text to a file in the workspace, creating missing folders. Replaces the file unless append is true.

        Args:
            path: file path relative to the workspace, e.g. "out/report.md".
            content: the text to write (at most 4096 characters per call; write longer files in parts with append=true).
            append: add to the end of the file instead of replacing it.
        """
        real = self.resolve(path)
        if real == self.workspace or real.is_dir() or path.endswith(("/", os.sep)):
            example = f"{path.rstrip('/')}/notes.txt"
            raise ToolInputError(f"{path!r} names a folder, not a file; give a file name inside it, e.g. {example!r}")
        data = content.encode("utf-8")
        before = real.stat().st_size if append and real.exists() else 0
        if before + len(data) > self.max_file_bytes:
            raise ToolInputError(f"writing {path!r} would make it {before + len(data):,} bytes; the limit is "
                                 f"{self.max_file_bytes:,} bytes per file")
        try:
            real.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ToolInputError(f"cannot create the folder for {path!r}: {exc.strerror or exc}") from None
        if not real.parent.resolve().is_relative_to(self.workspace):  # a folder swapped for a link meanwhile
            raise ToolInputError(f"access to {path!r} is refused: it leads outside the workspace")
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
        with self._open(real, flags, "ab" if append else "wb") as handle:
            handle.write(data)
        verb = "appended" if append else "wrote"
        total = f" (now {before + len(data):,} bytes)" if append else ""
        return f"{verb} {len(data):,} bytes to {self._show(real)}{total}"

    @tool
    def list_files(self, path: str = ".", recursive: bool = False, pattern: str | None = None) -> str:
        """List files in a workspace folder: folders end with '/', files show their size.

        Args:
            path: folder relative to the workspace ("." is the workspace itself).
            recursive: also list everything in sub-folders.
            pattern: only names matching this glob, e.g. "*.py".
        """
        real = self.resolve(path)
        if not real.is_dir():
            missing = "" if real.exists() else " (it does not exist)"
            raise ToolInputError(f"{path!r} is not a folder in the workspace{missing}")
        rows: list[str] = []
        total = 0
        for folder, dirs, names in os.walk(real):  # never follows links to folders
            dirs.sort()
            entries = sorted([(d, True) for d in dirs] + [(n, False) for n in names])
            for name, is_dir in entries:
                full = Path(folder, name)
                rel = full.relative_to(real).as_posix()
                if pattern and not (fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(rel, pattern)):
                    continue
                total += 1
                if len(rows) < self.max_entries:
                    rows.append(_entry(full, rel, is_dir, self.workspace))
            if not recursive:
                break
        if not rows:
            return f"no files in {self._show(real)}" + (f" matching {pattern!r}" if pattern else "")
        if total > len(rows):
            rows.append(f"[{total - len(rows):,} more entries not shown; narrow the listing with a path or pattern]")
        return "\n".join(rows)

    # ---- helpers -------------------------------------------------------------------------------------
    def _open(self, real: Path, flags: int, mode: str = "rb") -> Any:
        try:
            fd = os.open(real, flags | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as exc:
            raise ToolInputError(f"cannot open {self._show(real)!r}: {exc.strerror}") from None
        return os.fdopen(fd, mode)

    def close(self) -> None:
        if self._owned is not None:
            shutil.rmtree(self._owned, ignore_errors=True)
            self._owned = None


def _entry(full: Path, rel: str, is_dir: bool, workspace: Path) -> str:
    if full.is_symlink():
        inside = Path(os.path.realpath(full)).is_relative_to(workspace)
        return f"{rel}@ (link{'' if inside else ' to outside the workspace, not usable'})"
    if is_dir:
        return f"{rel}/"
    try:
        return f"{rel}  {full.stat().st_size:,} bytes"
    except OSError:
        return rel


OPTIONS = ("workspace", "max_read_chars", "max_file_bytes", "max_entries")


def make_files(**config: Any) -> list[Tool]:
    unknown = sorted(set(config) - set(OPTIONS))
    if unknown:
        raise ConfigurationError(f"the files tool does not take {unknown}; its options are {list(OPTIONS)}")
    return FilesToolkit(**config).tools()


@hookimpl
def register_tools(register: Any) -> None:
    register(ToolSpec(
        name="files", factory=make_files, default=False,
        description="Read, write and list files inside one workspace folder (a fresh temporary one by default); "
                    "paths leading outside it are refused.",
    ))
