"""The `files` tools: read, write and list files inside one workspace folder, and nowhere else.

An agent's file access is confined to its workspace because a model's path is untrusted input: ``../``, an
absolute path or a symlink planted inside the workspace must never reach the rest of the disk, not even while
other code (the python tool shares the workspace) swaps folders for links during a call. Every open goes through
``workspace.Workspace``, which walks the path one component at a time from the workspace's own descriptor and
never lets the kernel follow a link; hard-linked files are refused.

Reads and writes are capped (a model's context is small and a runaway loop must not fill the disk); a cut read
says where to continue. Binary files are described, never dumped into the transcript.
"""

from __future__ import annotations

import fnmatch
import mimetypes
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

from pydantic import Field

from hanlin import ConfigurationError, Tool, ToolInputError, ToolSpec, Toolkit, hookimpl, tool
from hanlin.plugins.tools.workspace import Entry, IsAFolder, NotAFolder, NotFound, Workspace

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
        self._fs = Workspace(root)
        self.workspace = self._fs.root
        self.max_read_chars, self.max_file_bytes, self.max_entries = max_read_chars, max_file_bytes, max_entries

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
        try:
            opened = self._fs.open_file(path)
        except IsAFolder:
            raise ToolInputError(f"{path!r} is a folder; use list_files to see what it holds") from None
        except NotFound:
            raise ToolInputError(f"there is no file {path!r} in the workspace; use list_files to see what "
                                 "exists") from None
        with os.fdopen(opened.fd, "rb") as handle:
            head = handle.read(SNIFF_BYTES)
            if _is_binary(head):
                kind = mimetypes.guess_type(PurePosixPath(opened.shown).name)[0] or "unknown type"
                return f"{path!r} is a binary file ({opened.st.st_size:,} bytes, {kind}); its contents are not shown"
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
        example = f"{path.rstrip('/')}/notes.txt"
        folder_hint = f"{path!r} names a folder, not a file; give a file name inside it, e.g. {example!r}"
        if path.endswith(("/", os.sep)) or path.rsplit("/", 1)[-1] in (".", ".."):
            raise ToolInputError(folder_hint)
        data = content.encode("utf-8")
        if len(data) > self.max_file_bytes:
            raise ToolInputError(f"writing {path!r} would make it {len(data):,} bytes; the limit is "
                                 f"{self.max_file_bytes:,} bytes per file")
        try:
            opened = self._fs.open_file(path, write=True, append=append)
        except IsAFolder:
            raise ToolInputError(folder_hint) from None
        with os.fdopen(opened.fd, "ab" if append else "wb") as handle:  # fdopen neither truncates nor seeks
            before = opened.st.st_size if append else 0
            if before + len(data) > self.max_file_bytes:
                raise ToolInputError(f"writing {path!r} would make it {before + len(data):,} bytes; the limit is "
                                     f"{self.max_file_bytes:,} bytes per file")
            if not append:
                handle.truncate(0)  # only now: a refused file (hard link, pipe) was never emptied
            handle.write(data)
        verb = "appended" if append else "wrote"
        total = f" (now {before + len(data):,} bytes)" if append else ""
        return f"{verb} {len(data):,} bytes to {opened.shown}{total}"

    @tool
    def list_files(self, path: str = ".", recursive: bool = False, pattern: str | None = None) -> str:
        """List files in a workspace folder: folders end with '/', files show their size.

        Args:
            path: folder relative to the workspace ("." is the workspace itself).
            recursive: also list everything in sub-folders.
            pattern: only names matching this glob, e.g. "*.py".
        """
        try:
            folder = self._fs.open_folder(path)
        except (NotFound, NotAFolder) as exc:
            missing = " (it does not exist)" if isinstance(exc, NotFound) else ""
            raise ToolInputError(f"{path!r} is not a folder in the workspace{missing}") from None
        rows: list[str] = []
        total = 0
        try:
            for entry in self._fs.entries(folder, recursive):
                name = entry.rel.rsplit("/", 1)[-1]
                if pattern and not (fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(entry.rel, pattern)):
                    continue
                total += 1
                if len(rows) < self.max_entries:
                    rows.append(_row(entry))
        finally:
            os.close(folder.fd)
        if not rows:
            return f"no files in {folder.shown}" + (f" matching {pattern!r}" if pattern else "")
        if total > len(rows):
            rows.append(f"[{total - len(rows):,} more entries not shown; narrow the listing with a path or pattern]")
        return "\n".join(rows)

    def close(self) -> None:
        if self._owned is not None:
            shutil.rmtree(self._owned, ignore_errors=True)
            self._owned = None


def _row(entry: Entry) -> str:
    if entry.kind == "link":
        return f"{entry.rel}@ (link{'' if entry.link_inside else ' to outside the workspace, not usable'})"
    if entry.kind == "dir":
        return f"{entry.rel}/"
    if entry.kind == "file":
        return f"{entry.rel}  {entry.size:,} bytes"
    return entry.rel


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
