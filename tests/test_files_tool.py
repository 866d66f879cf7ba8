"""The files tools on a real folder: reading, writing, listing, and every way a path could leave the workspace."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from hanlin import Agent, ConfigurationError, ScriptedModel, ToolInputError, load_tools
from hanlin.plugins.tools.files import FilesToolkit


@pytest.fixture()
def ws(tmp_path: Path) -> Path:
    folder = tmp_path / "ws"
    folder.mkdir()
    return folder


@pytest.fixture()
def tools(ws: Path) -> dict:
    return {t.name: t for t in load_tools(["files"], workspace=ws)}


def call(tools: dict, name: str, **args):
    return tools[name].invoke(args)


def test_write_read_append_and_list(tools, ws) -> None:
    result = call(tools, "write_file", path="notes.txt", content="first line\nsecond line\n")
    assert not result.is_error and result.content == "wrote 23 bytes to notes.txt"
    assert (ws / "notes.txt").read_text() == "first line\nsecond line\n"
    assert call(tools, "read_file", path="notes.txt").content == "first line\nsecond line\n"
    result = call(tools, "write_file", path="notes.txt", content="third line\n", append=True)
    assert result.content == "appended 11 bytes to notes.txt (now 34 bytes)"
    assert call(tools, "read_file", path="notes.txt", offset=1, limit=1).content == (
        "second line\n[1 lines shown (lines 2-2); read on with offset=2]"
    )
    assert call(tools, "read_file", path="notes.txt", offset=2).content == "third line\n"
    assert "offset=9 is past its end" in call(tools, "read_file", path="notes.txt", offset=9).content
    call(tools, "write_file", path="notes.txt", content="replaced")
    assert (ws / "notes.txt").read_text() == "replaced"
    assert call(tools, "list_files").content == "notes.txt  8 bytes"


def test_write_into_a_new_subfolder_and_list_recursively(tools, ws) -> None:
    result = call(tools, "write_file", path="a/b/c.md", content="# deep")
    assert not result.is_error and (ws / "a" / "b" / "c.md").read_text() == "# deep"
    call(tools, "write_file", path="a/x.py", content="print(1)")
    assert call(tools, "list_files").content == "a/"
    assert call(tools, "list_files", recursive=True).content.splitlines() == [
        "a/", "a/b/", "a/x.py  8 bytes", "a/b/c.md  6 bytes"
    ]
    assert call(tools, "list_files", path="a", recursive=True, pattern="*.md").content == "b/c.md  6 bytes"
    assert call(tools, "list_files", pattern="*.rs", recursive=True).content == "no files in . matching '*.rs'"
    # an absolute path that stays inside the workspace is fine
    assert call(tools, "read_file", path=str(ws / "a" / "x.py")).content == "print(1)"


@pytest.mark.parametrize("path", ["../x", "a/../../x", "/etc/passwd", "/tmp"])
def test_reading_and_listing_outside_the_workspace_is_refused(tools, path) -> None:
    for name in ("read_file", "list_files"):
        result = call(tools, name, path=path)
        assert result.is_error, (name, path)
        assert result.content.startswith(f"{name}: access to {path!r} is refused"), result.content
        assert "Traceback" not in result.content


def test_writing_outside_the_workspace_is_refused(tools, ws, tmp_path) -> None:
    # Targets stay under tmp_path: a regression must never be able to overwrite a real system file.
    victim = tmp_path / "victim.txt"
    victim.write_text("original")
    for path in ("../victim.txt", "a/../../victim.txt", str(victim), "../new-outside.txt"):
        result = call(tools, "write_file", path=path, content="pwned")
        assert result.is_error and result.content.startswith(f"write_file: access to {path!r} is refused"), path
    assert victim.read_text() == "original" and not (tmp_path / "new-outside.txt").exists()
    assert "absolute paths outside it are refused" in call(tools, "write_file", path=str(victim), content="x").content


def test_symlinks_pointing_outside_are_refused(tools, ws, tmp_path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("top secret")
    os.symlink(outside / "secret.txt", ws / "link.txt")
    os.symlink(outside, ws / "linkdir")
    (ws / "real.txt").write_text("inside")
    os.symlink(ws / "real.txt", ws / "alias.txt")

    for path in ("link.txt", "linkdir/secret.txt"):
        result = call(tools, "read_file", path=path)
        assert result.is_error and "refused" in result.content and "symbolic link" in result.content
    result = call(tools, "write_file", path="linkdir/new.txt", content="escape")
    assert result.is_error and not (outside / "new.txt").exists()
    result = call(tools, "write_file", path="link.txt", content="overwrite")
    assert result.is_error and (outside / "secret.txt").read_text() == "top secret"
    assert call(tools, "list_files", path="linkdir").is_error
    # a link that stays inside works, and the listing says which links are unusable
    assert call(tools, "read_file", path="alias.txt").content == "inside"
    listing = call(tools, "list_files").content.splitlines()
    assert "link.txt@ (link to outside the workspace, not usable)" in listing
    assert "linkdir@ (link to outside the workspace, not usable)" in listing
    assert "alias.txt@ (link)" in listing


# ---- races, hard links, long paths: the walk from the workspace's own descriptor ----------------------------
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> None:
    """Swap two names in one step (renameat2 RENAME_EXCHANGE), or in three where the system lacks it."""
    libc = ctypes.CDLL(None, use_errno=True)
    if hasattr(libc, "renameat2"):
        if libc.renameat2(-100, bytes(a), -100, bytes(b), _RENAME_EXCHANGE) == 0:  # -100: AT_FDCWD
            return
        if ctypes.get_errno() not in (errno.ENOSYS, errno.EINVAL):
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    aside = a.with_name(a.name + ".aside")
    os.rename(a, aside)
    os.rename(b, a)
    os.rename(aside, b)


def _race(ws: Path, tmp_path: Path, attempt, iterations: int = 2000, seconds: float = 4.0) -> int:
    """Run ``attempt()`` while another thread keeps swapping the folder ws/d for a link to a folder outside the
    workspace; return how many attempts ran. ``attempt`` asserts that it never reached outside."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f.txt").write_text("SECRET")
    (outside / "outside-only.txt").write_text("x")
    (ws / "d").mkdir()
    (ws / "d" / "f.txt").write_text("inside")
    os.symlink(outside, ws / "d.link")  # absolute: leads outside whenever it is named d
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            try:
                _exchange(ws / "d", ws / "d.link")
            except OSError:
                pass

    swapper = threading.Thread(target=swap, daemon=True)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # hand the GIL back and forth often, so swaps land between any two steps
    swapper.start()
    done, deadline = 0, time.monotonic() + seconds
    try:
        while done < iterations and time.monotonic() < deadline:
            try:
                attempt()
            except ToolInputError:
                pass  # refused (the link was in place) or missing for a moment: both are fine
            done += 1
    finally:
        stop.set()
        swapper.join(5)
        sys.setswitchinterval(switch)
    assert (outside / "f.txt").read_text() == "SECRET" and sorted(p.name for p in outside.iterdir()) == [
        "f.txt", "outside-only.txt"]
    return done


def test_swapping_a_parent_folder_for_a_link_never_reads_outside(ws, tmp_path) -> None:
    kit = FilesToolkit(ws)

    def attempt() -> None:
        assert "SECRET" not in kit.read_file(path="d/f.txt")

    assert _race(ws, tmp_path, attempt) > 100


def test_swapping_a_parent_folder_for_a_link_never_writes_outside(ws, tmp_path) -> None:
    kit = FilesToolkit(ws)
    assert _race(ws, tmp_path, lambda: kit.write_file(path="d/f.txt", content="pwned")) > 100


def test_swapping_a_parent_folder_for_a_link_never_lists_outside(ws, tmp_path) -> None:
    kit = FilesToolkit(ws)

    def attempt() -> None:
        assert "outside-only" not in kit.list_files(path="d")

    assert _race(ws, tmp_path, attempt) > 100


def test_hard_links_are_refused(tools, ws, tmp_path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    os.link(secret, ws / "alias.txt")  # a second name for a file outside: nothing to follow, nothing to check
    read = call(tools, "read_file", path="alias.txt")
    assert read.is_error and "is a hard link" in read.content and "top secret" not in read.content
    for append in (False, True):
        written = call(tools, "write_file", path="alias.txt", content="pwned", append=append)
        assert written.is_error and "is a hard link" in written.content
    assert secret.read_text() == "top secret"  # not even truncated


@pytest.mark.parametrize("path", ["n" * 300, "a/" * 2100 + "x.txt", "sub/" + "b" * 256 + "/x.txt"])
def test_a_very_long_path_gives_a_clear_error(tools, ws, path) -> None:
    (ws / "sub").mkdir()
    for name, args in (("read_file", {}), ("write_file", {"content": "x"}), ("list_files", {})):
        result = call(tools, name, path=path, **args)
        assert result.is_error and result.content.startswith(f"{name}: "), result.content[:300]
        assert "raised" not in result.content and "Traceback" not in result.content and "Errno" not in result.content
        assert "longer than the file system allows" in result.content or "characters long; the limit is" in (
            result.content)
    assert sorted(p.name for p in ws.iterdir()) == ["sub"]


def test_links_inside_the_workspace_are_followed_by_the_walk(tools, ws, tmp_path) -> None:
    (ws / "docs").mkdir()
    (ws / "docs" / "a.txt").write_text("A")
    os.symlink("docs", ws / "rel")  # relative link to a folder
    os.symlink("../docs/a.txt", ws / "docs" / "up.txt")  # relative link that climbs, but stays inside
    os.symlink(ws / "docs" / "new.txt", ws / "dangling.txt")  # points inside, at nothing yet
    os.symlink("loop2", ws / "loop1")
    os.symlink("loop1", ws / "loop2")
    assert call(tools, "read_file", path="rel/a.txt").content == "A"
    assert call(tools, "read_file", path="rel/up.txt").content == "A"
    assert call(tools, "read_file", path="docs/../rel/./a.txt").content == "A"
    assert call(tools, "write_file", path="dangling.txt", content="made").content == "wrote 4 bytes to docs/new.txt"
    assert (ws / "docs" / "new.txt").read_text() == "made"
    loop = call(tools, "read_file", path="loop1")
    assert loop.is_error and "more than 40 symbolic links" in loop.content
    os.symlink("../../outside", ws / "docs" / "climb")
    assert "is refused" in call(tools, "read_file", path="docs/climb/x").content
    assert "is refused" in call(tools, "write_file", path="a/../../x.txt", content="x").content
    assert not (ws / "a").exists() and not (tmp_path / "x.txt").exists()  # refused before any folder was made


def test_a_pipe_is_refused_without_hanging(tools, ws) -> None:
    os.mkfifo(ws / "pipe")
    results: list = []

    def use() -> None:  # in a thread: a blocking open of a pipe with no other end would never return
        results.extend(call(tools, name, path="pipe", **args)
                       for name, args in (("read_file", {}), ("write_file", {"content": "x"})))

    worker = threading.Thread(target=use, daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "opening a pipe blocked"
    assert [r.is_error and "not a regular file" in r.content for r in results] == [True, True]


def test_read_cap_cuts_with_a_note_and_offset_continues(ws) -> None:
    tools = {t.name: t for t in FilesToolkit(ws, max_read_chars=100).tools()}
    lines = [f"line {i:03d} " + "x" * 20 + "\n" for i in range(20)]  # 29 characters each
    (ws / "big.txt").write_text("".join(lines))
    first = call(tools, "read_file", path="big.txt").content
    assert first == "".join(lines[:3]) + "[cut at 100 characters: lines 1-3 shown; read on with offset=3]"
    second = call(tools, "read_file", path="big.txt", offset=3).content
    assert second.startswith(lines[3]) and second.endswith("read on with offset=6]")
    (ws / "one-line.txt").write_text("y" * 500)
    cut = call(tools, "read_file", path="one-line.txt").content
    assert cut.startswith("y" * 100 + "\n[line 1 is longer than 100 characters") and "y" * 101 not in cut


def test_write_caps(ws) -> None:
    tools = {t.name: t for t in FilesToolkit(ws, max_file_bytes=50).tools()}
    assert not call(tools, "write_file", path="f.txt", content="a" * 40).is_error
    result = call(tools, "write_file", path="f.txt", content="b" * 20, append=True)
    assert result.is_error and "would make it 60 bytes; the limit is 50 bytes" in result.content
    assert (ws / "f.txt").read_text() == "a" * 40
    result = call(tools, "write_file", path="g.txt", content="c" * 5000)
    assert result.is_error and "content" in result.content and "4096" in result.content
    assert not (ws / "g.txt").exists()


def test_listing_cap(ws) -> None:
    tools = {t.name: t for t in FilesToolkit(ws, max_entries=3).tools()}
    for i in range(5):
        (ws / f"f{i}.txt").write_text("x")
    assert call(tools, "list_files").content.splitlines() == [
        "f0.txt  1 bytes", "f1.txt  1 bytes", "f2.txt  1 bytes",
        "[2 more entries not shown; narrow the listing with a path or pattern]",
    ]


def test_binary_files_are_described_not_dumped(tools, ws) -> None:
    (ws / "pixel.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    result = call(tools, "read_file", path="pixel.png")
    assert not result.is_error
    assert result.content == "'pixel.png' is a binary file (272 bytes, image/png); its contents are not shown"
    (ws / "latin1.txt").write_bytes("café crème".encode("latin-1"))  # not UTF-8, but text
    assert call(tools, "read_file", path="latin1.txt").content == "caf\ufffd cr\ufffdme"


def test_clear_errors_for_missing_files_and_folders(tools, ws) -> None:
    (ws / "sub").mkdir()
    assert "there is no file 'nope.txt'" in call(tools, "read_file", path="nope.txt").content
    assert "is a folder; use list_files" in call(tools, "read_file", path="sub").content
    assert "names a folder, not a file" in call(tools, "write_file", path="sub", content="x").content
    assert "names a folder, not a file" in call(tools, "write_file", path="newdir/", content="x").content
    for folder in (".", "sub/.", "newdir/.", "sub/.."):
        assert "names a folder, not a file" in call(tools, "write_file", path=folder, content="x").content
    assert not (ws / "newdir").exists()
    assert "does not exist" in call(tools, "list_files", path="nothing").content
    (ws / "empty.txt").write_text("")
    assert call(tools, "read_file", path="empty.txt").content == "'empty.txt' is empty"


def test_default_workspace_is_a_fresh_temp_folder_removed_on_close() -> None:
    kit = FilesToolkit()
    assert kit.workspace.is_dir() and kit.workspace.name.startswith("hanlin-files-")
    tools = {t.name: t for t in kit.tools()}
    call(tools, "write_file", path="x.txt", content="hi")
    kit.close()
    assert not kit.workspace.exists()


def test_configuration_errors(tmp_path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist or is not a folder"):
        load_tools(["files"], workspace=tmp_path / "missing")
    with pytest.raises(ConfigurationError, match=r"does not take \['workdir'\]"):
        load_tools(["files"], workdir=tmp_path)


def test_an_agent_writes_then_reads_a_file(ws) -> None:
    def step(action: str, args: dict) -> str:
        return f"Thought: use {action}\nAction: {action}\nAction Input: {json.dumps(args)}"

    model = ScriptedModel([
        step("write_file", {"path": "plan/todo.md", "content": "- buy tomatoes\n"}),
        step("read_file", {"path": "plan/todo.md"}),
        step("read_file", {"path": "../../etc/passwd"}),
        "Thought: done\nFinal Answer: the list says buy tomatoes",
    ])
    agent = Agent(model, load_tools(["files"], workspace=ws))
    result = agent.run("Write a todo list and read it back.")
    agent.close()
    assert result.status == "answered"
    observations = [m for m in result.messages if m.role == "tool"]
    assert [m.is_error for m in observations] == [False, False, True]
    assert observations[1].content == "- buy tomatoes\n"
    assert "refused" in observations[2].content
    assert (ws / "plan" / "todo.md").read_text() == "- buy tomatoes\n"
    assert ws.is_dir()  # an explicit workspace is never deleted by close()
