"""The python tool as a sandbox, on real Jupyter kernels: session folders, one session's files hidden from
another's kernel, limits installed and verified, a cell that ignores SIGINT, and nothing left after close()."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import threading
import time
from pathlib import Path

import pytest

from hanlin import ConfigurationError, load_tool, tool_session

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("jupyter_client") is None or importlib.util.find_spec("ipykernel") is None,
    reason="pip install 'hanlin[tools]'",
)
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="kernels get users of their own only when hanlin runs as root")

HOSTILE_IDS = ["..", "/", "user/a", "user_a", "x" * 200 + "1", "x" * 200 + "2"]


def run(tool, code: str, session: str | None = None):
    with tool_session(session):
        return tool.invoke({"code": code})


@pytest.fixture(scope="module")
def python(tmp_path_factory):
    tool = load_tool("python", workdir=tmp_path_factory.mktemp("work"), timeout=5, max_kernels=6, memory_mb=1024,
                     cpu_seconds=60)
    yield tool
    tool.toolkit.close()


def cwd(tool, session: str) -> Path:
    return Path(run(tool, "import os\nopen('mine.txt', 'w').write('x')\nos.getcwd()", session).content.strip("'"))


def test_session_folders_are_distinct_folders_inside_the_workdir(python) -> None:
    workdir = Path(python.toolkit._workdir)
    folders = {key: cwd(python, key) for key in ("..", "/", "user/a", "user_a")}
    assert len(set(folders.values())) == 4  # 'user/a' and 'user_a' do not share one
    for key, folder in folders.items():
        assert folder.parent == workdir and (folder / "mine.txt").exists(), key
    assert not (workdir.parent / "mine.txt").exists() and not (workdir / "mine.txt").exists()


def test_session_folders_are_named_by_a_hash(python) -> None:
    kit = python.toolkit
    folders = [kit.folder(key) for key in HOSTILE_IDS]
    assert len(set(folders)) == len(HOSTILE_IDS)  # long ids that differ only at the end too
    for folder in folders:
        assert folder.parent == kit._workdir and re.fullmatch(r"session-[0-9a-f]{32}", folder.name)
    assert kit.folder("user/a") == cwd(python, "user/a")


@as_root
def test_a_session_cannot_read_another_sessions_folder(python) -> None:
    folder = cwd(python, "user/a")
    assert not run(python, "open('secret.txt', 'w').write('ada')", "user/a").is_error
    stolen = run(python, f"open({str(folder / 'secret.txt')!r}).read()", "user_a")
    assert stolen.is_error and "PermissionError" in stolen.content and "ada" not in stolen.content
    listed = run(python, "import os\nos.listdir('..')", "user_a")
    assert listed.is_error and "PermissionError" in listed.content


def test_limits_are_installed_and_cannot_be_raised(python) -> None:
    report = run(python, "import json, os, resource\n"
                         "print(json.dumps([os.getuid(), resource.getrlimit(resource.RLIMIT_AS), "
                         "resource.getrlimit(resource.RLIMIT_CPU)]))")
    uid, memory, cpu = json.loads(report.content)
    assert memory == [1024 * 1024 * 1024] * 2
    assert cpu[0] == cpu[1] and 60 <= cpu[1] <= 70  # cpu_seconds plus the kernel's start-up time
    if os.geteuid() == 0:
        assert uid != 0
    raised = run(python, "import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))")
    assert raised.is_error and "not allowed to raise maximum limit" in raised.content
    too_big = run(python, "block = bytearray(1536 * 1024 ** 2)")  # lazily mapped zeros: fine without the limit
    assert too_big.is_error and "MemoryError" in too_big.content
    assert run(python, "1 + 1").content == "2"


def test_the_agents_environment_is_not_inherited(python, monkeypatch) -> None:
    monkeypatch.setenv("HANLIN_TEST_SECRET", "s3cret")
    result = run(python, "import os\nos.environ.get('HANLIN_TEST_SECRET', 'absent')", "fresh-env")
    assert result.content == "'absent'"


def test_limit_reports_with_problems_are_refused() -> None:
    from hanlin.plugins.tools.python_limits import problems, wanted

    limits = wanted(1024, 10, own_user=True)
    good = {"uid": 59000, "euid": 59000, "spent": 2, "errors": {},
            "limits": {"RLIMIT_CORE": [0, 0], "RLIMIT_AS": [2 ** 30] * 2, "RLIMIT_CPU": [12, 12],
                       "RLIMIT_NPROC": [256, 256]}}
    assert problems(json.dumps(good), limits, 59000) == []
    unlimited = {**good, "limits": {**good["limits"], "RLIMIT_AS": [-1, -1]}, "errors": {"RLIMIT_AS": "boom"}}
    found = problems(json.dumps(unlimited), limits, 59000)
    assert any("RLIMIT_AS is (soft unlimited" in p for p in found) and any("boom" in p for p in found)
    assert problems(json.dumps({**good, "uid": 0, "euid": 0}), limits, None) == [
        "it runs as root, so its code could raise its own limits"]
    assert "printed no report" in problems("Traceback ...", limits, None)[0]


def test_cpu_seconds_stops_a_busy_loop(tmp_path) -> None:
    tool = load_tool("python", workdir=tmp_path, timeout=60, cpu_seconds=2)
    try:
        assert run(tool, "x = 1").content == "(no output; x = 1)"
        started = time.monotonic()
        result = run(tool, "while True:\n    pass")
        assert time.monotonic() - started < 30  # the CPU limit, not the 60 s timeout, ended it
        assert result.is_error and "CPU time limit (cpu_seconds=2)" in result.content
        assert "variables and imports are gone" in result.content
        assert "NameError" in run(tool, "x").content and run(tool, "2 * 21").content == "42"
    finally:
        tool.toolkit.close()


def test_a_cell_ignoring_sigint_after_the_timeout_gets_a_fresh_kernel(tmp_path) -> None:
    tool = load_tool("python", workdir=tmp_path, timeout=1)
    try:
        run(tool, "kept = 'no'")
        result = run(tool, "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                           "while True:\n    time.sleep(0.01)")
        assert result.is_error and "did not stop when interrupted" in result.content
        assert "restarted: all variables and imports are gone" in result.content
        assert "NameError" in run(tool, "kept").content  # a fresh kernel, not the stuck one
        assert run(tool, "6 * 7").content == "42"
    finally:
        tool.toolkit.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie not yet reaped is dead too
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_close_leaves_no_kernel_or_folder_under_concurrent_sessions() -> None:
    tool = load_tool("python", timeout=10, max_kernels=2)  # more sessions than kernels: evictions race with calls
    kit = tool.toolkit
    seen: list[dict] = []
    errors: list[str] = []

    def work(key: str) -> None:
        for _ in range(2):
            result = run(tool, "import json, os, subprocess, sys, time\n"
                               "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], "
                               "start_new_session=True)\n"  # left behind, outside the kernel's process group
                               "time.sleep(0.2)\n"
                               "print(json.dumps({'pid': os.getpid(), 'child': child.pid, 'tmp': os.environ.get('TMPDIR')}))",
                         key)
            if result.is_error:
                errors.append(result.content)
            else:
                seen.append(json.loads(result.content.splitlines()[-1]))

    threads = [threading.Thread(target=work, args=(f"s{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    workdir = kit._workdir
    kit.close()
    assert not errors and len(seen) == 8
    assert workdir is not None and not workdir.exists()  # the temporary workdir, with every session's folder
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(s["pid"]) for s in seen):
        time.sleep(0.1)
    assert not [s["pid"] for s in seen if _alive(s["pid"])]
    assert not [s["tmp"] for s in seen if s["tmp"] and s["tmp"] != "/tmp" and os.path.exists(s["tmp"])]
    if os.geteuid() == 0:  # a process that left the kernel's group dies with the kernel's user
        assert not [s["child"] for s in seen if _alive(s["child"])]


def test_a_leased_session_is_never_evicted(tmp_path) -> None:
    """The pool race: a session handed out, not yet running its code, must not be evicted by another session."""
    kit = load_tool("python", workdir=tmp_path, max_kernels=1).toolkit
    try:
        first, _ = kit._lease("a")
        second, _ = kit._lease("b")  # the pool is full and 'a' is in use: 'b' goes over the cap instead
        assert kit.sessions() == ["a", "b"]
        with tool_session("a"):
            assert kit.run_code("1 + 1").content == "2"
        kit._release(first)
        kit._release(second)
        kit._lease("c")  # now 'a' and 'b' are idle and may go
        assert kit.sessions() == ["c"]
        assert first.kernel_uid is None and first._km is None  # evicted: its kernel is shut down
    finally:
        kit.close()


@as_root
def test_a_workdir_kernels_cannot_pass_through_is_reported(tmp_path, caplog) -> None:
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    kit = load_tool("python", workdir=closed / "work").toolkit
    try:
        with caplog.at_level("WARNING"):
            kit._release(kit._lease("a")[0])
        assert f"cannot pass through {closed}" in caplog.text
    finally:
        kit.close()


def test_closing_a_session_while_its_code_runs_leaves_no_kernel(tmp_path) -> None:
    tool = load_tool("python", workdir=tmp_path, timeout=30)
    kit = tool.toolkit
    pid = int(run(tool, "import os\nos.getpid()", "busy").content)
    results = []
    worker = threading.Thread(target=lambda: results.append(run(tool, "import time\ntime.sleep(20)", "busy")))
    worker.start()
    time.sleep(0.5)
    started = time.monotonic()
    kit.close()
    worker.join(timeout=10)
    assert not worker.is_alive() and time.monotonic() - started < 10
    assert results[0].is_error and "session was ended" in results[0].content
    assert not _alive(pid) and kit.sessions() == []


def test_unknown_options_are_named_with_the_valid_ones(tmp_path) -> None:
    with pytest.raises(ConfigurationError, match=r"no option 'memroy_mb'.*valid options: workdir, timeout, memory_mb"):
        load_tool("python", workdir=tmp_path, memroy_mb=512)
    with pytest.raises(ConfigurationError, match="memory_mb=16 is too small"):
        load_tool("python", memory_mb=16)
