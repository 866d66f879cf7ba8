"""The code sandbox against code written to escape it: each test is one escape, tried with real processes, real
files and real sockets, and checked from the evaluator's side.

These tests need root, because only root can give each run a user id of its own, and the network test needs the
namespaces of util-linux's ``unshare``. CI runs the suite as root on a machine where ``unshare`` works, so they
run there; with ``CI`` set they fail rather than skip, so a CI that lost either cannot pass them silently. Run as
an ordinary user they skip, saying why.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from hanlin.plugins.evaluators import sandbox
from hanlin.plugins.evaluators.isolation import Launcher, launcher
from hanlin.plugins.evaluators.sandbox import Limits, run_python


def _missing(reason: str) -> None:
    """Skip, saying why; under CI (``CI`` set) fail instead: CI runs as root with util-linux, so these must run."""
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the sandbox's escape tests: {reason}")
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _root_isolation() -> None:
    if os.geteuid() != 0:
        _missing("the sandbox isolates its code fully only as root (CI runs as root, so this runs there)")


@pytest.fixture
def namespaces() -> None:
    if launcher().mode != "namespaces":
        _missing(f"as root the sandbox runs in namespaces where 'unshare' works; here it fell back: {launcher().note}")


@pytest.fixture
def drop_box():
    """A world-writable folder (under /tmp, outside the sandbox) where escaped code would leave its mark."""
    path = Path(tempfile.mkdtemp(prefix="hanlin-escape-"))
    path.chmod(0o1777)
    yield path
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


def test_output_files_cannot_be_swapped_for_links_to_the_evaluators_secrets(tmp_path: Path) -> None:
    """The child links every name the evaluator might read its output from to a root-only file, then fails, so
    the evaluator reads stderr into the prediction's detail."""
    secret = tmp_path / "shadow"
    secret.write_text("TOPSECRET-7f3a\n")
    secret.chmod(0o600)
    attack = textwrap.dedent(f"""\
        import os
        for folder in (".", ".."):
            for name in (".stdout", ".stderr", "stdout", "stderr"):
                path = os.path.join(folder, name)
                try:
                    os.remove(path)
                except OSError:
                    pass
                try:
                    os.symlink({str(secret)!r}, path)
                except OSError:
                    pass
        raise SystemExit(1)
    """)
    result = run_python(attack, Limits(timeout_s=10))
    assert result.status == "failed"
    assert "TOPSECRET" not in result.detail and "TOPSECRET" not in result.stdout, result


def test_sandboxed_code_cannot_touch_files_outside_its_directory(tmp_path: Path) -> None:
    keep = tmp_path / "results.json"
    keep.write_text("precious")
    outside = Path.cwd() / "sandbox-was-here.txt"
    vandal = textwrap.dedent(f"""\
        import os, shutil
        outcomes = []
        for action in (lambda: os.remove({str(keep)!r}), lambda: open({str(keep)!r}, "w").write("gone"),
                       lambda: shutil.rmtree({str(tmp_path)!r}), lambda: open({str(outside)!r}, "w").write("x")):
            try:
                action()
                outcomes.append("done")
            except OSError as exc:
                outcomes.append(type(exc).__name__)
        open("inside.txt", "w").write("fine")  # its own directory is writable
        print(outcomes)
    """)
    result = run_python(vandal)
    assert result.passed, result
    assert result.stdout == "['PermissionError', 'PermissionError', 'PermissionError', 'PermissionError']"
    assert keep.read_text() == "precious" and not outside.exists()


def test_the_child_cannot_write_the_scripts_the_evaluator_gave_it() -> None:
    probe = textwrap.dedent("""\
        import os, sys
        here = os.path.dirname(os.path.abspath(sys.argv[0]))
        outcomes = []
        for action in (lambda: open(os.path.join(here, "bootstrap.py"), "a").write("#"),
                       lambda: os.remove(os.path.join(here, "program.py")),
                       lambda: open(os.path.join(here, "new.txt"), "w").write("x"),
                       lambda: open("mine.txt", "w").write("x")):
            try:
                action()
                outcomes.append("done")
            except OSError as exc:
                outcomes.append(type(exc).__name__)
        print(outcomes)
    """)
    result = run_python(probe, Limits(timeout_s=10))
    assert result.passed, result
    assert result.stdout == "['PermissionError', 'PermissionError', 'PermissionError', 'done']"


@pytest.mark.parametrize("mode", ["namespaces", "user-namespaces", "plain"])
@pytest.mark.parametrize("main", ["pass", "while True:\n    pass"], ids=["program-returns", "program-times-out"])
def test_a_detached_grandchild_dies_with_the_run(drop_box: Path, main: str, mode: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A child that leaves the process group (setsid) and outlives the program would keep running code after the
    verdict. It writes a file 2.5 s in if it is still alive (after the 1.5 s timeout); the test waits for 3.5 s.
    Every way of launching is tried: the fallbacks (a user namespace; a sweep by user id) must hold too."""
    chosen = launcher()
    if mode != "plain" and chosen.mode != "namespaces":
        _missing(f"no usable 'unshare' here: {chosen.note}")
    monkeypatch.setattr(sandbox, "launcher", lambda: Launcher(chosen.interpreter, mode, True))
    mark = drop_box / "survived"
    attack = textwrap.dedent(f"""\
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(2.5)
                open({str(mark)!r}, "w").write("alive")
            os._exit(0)
        time.sleep(0.3)
    """) + main + "\n"
    result = sandbox.run_python(attack, Limits(timeout_s=1.5))
    assert result.status == ("passed" if main == "pass" else "timeout"), result
    time.sleep(3.5 - result.duration_s)
    assert not mark.exists(), "a setsid grandchild outlived the sandbox"


def test_the_network_is_cut_even_to_this_machine(namespaces: None) -> None:
    """A server on the evaluator's loopback: the sandboxed code must not reach it (nor anything further away)."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    server.settimeout(8)
    accepted: list[object] = []

    def serve() -> None:
        try:
            conn, _ = server.accept()
            accepted.append(conn)
            conn.close()
        except OSError:
            pass

    thread = threading.Thread(target=serve)
    thread.start()
    attack = textwrap.dedent(f"""\
        import socket
        try:
            socket.create_connection(("127.0.0.1", {port}), timeout=3).close()
            print("connected")
        except OSError as exc:
            print(type(exc).__name__)
    """)
    try:
        result = run_python(attack, Limits(timeout_s=10))
    finally:
        server.close()
        thread.join()
    assert result.passed, result
    assert result.stdout != "connected" and not accepted


def test_the_process_limit_counts_this_sandbox_alone() -> None:
    """RLIMIT_NPROC is counted per user id. Processes of another run (or anything else running as 'nobody')
    must not use up this run's allowance: each run gets a user id of its own."""
    import pwd

    try:
        nobody = pwd.getpwnam("nobody").pw_uid
    except KeyError:
        nobody = 65534
    squatters = [subprocess.Popen(["sleep", "30"], user=nobody, group=nobody, extra_groups=[]) for _ in range(8)]
    probe = textwrap.dedent("""\
        import os
        started = 0
        for _ in range(3):
            try:
                pid = os.fork()
            except OSError:
                break
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)
            started += 1
        print(started)
    """)
    try:
        result = run_python(probe, Limits(timeout_s=10, max_processes=6))
    finally:
        for p in squatters:
            p.kill()
            p.wait()
    assert result.passed, result
    assert result.stdout == "3"


def test_the_process_limit_still_stops_a_fork_bomb() -> None:
    bomb = textwrap.dedent("""\
        import os
        made = 0
        try:
            while made < 200:
                if os.fork() == 0:
                    import time
                    time.sleep(30)
                    os._exit(0)
                made += 1
        except OSError:
            pass
        print(made)
    """)
    result = run_python(bomb, Limits(timeout_s=10, max_processes=8))
    assert result.passed, result
    assert int(result.stdout) < 8
