"""The python tool on a real Jupyter kernel: state, errors, timeouts, crashes, limits, images."""

from __future__ import annotations

import base64
import importlib.util
import os
import struct
import zlib

import pytest

from hanlin import Agent, ScriptedModel, load_tool

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("jupyter_client") is None or importlib.util.find_spec("ipykernel") is None,
    reason="pip install 'hanlin[tools]'",
)


@pytest.fixture(scope="module")
def python(tmp_path_factory):
    tool = load_tool("python", workdir=tmp_path_factory.mktemp("work"), timeout=3, max_output_chars=500)
    yield tool
    tool.toolkit.close()


def run(tool, code: str):
    return tool.invoke({"code": code})


def test_state_persists_and_output_is_returned(python) -> None:
    first = run(python, "x = 37 * 91 + 5\nprint('computed')\nx")
    assert not first.is_error and first.content == "computed\n3372"
    assert run(python, "x + 1").content == "3373"


def test_errors_are_trimmed_tracebacks(python) -> None:
    result = run(python, "def f():\n    return 1 / 0\nf()")
    assert result.is_error and "ZeroDivisionError: division by zero" in result.content
    assert result.content.count("\n") <= 8


def test_timeout_interrupts_and_keeps_state(python) -> None:
    result = run(python, "kept = 'yes'\nimport time\nwhile True:\n    time.sleep(0.05)")
    assert result.is_error and "timed out after 3 s" in result.content
    assert run(python, "kept").content == "'yes'"


def test_input_fails_fast(python) -> None:
    result = run(python, "input('your name? ')")
    assert result.is_error and "input() is not available" in result.content


def test_long_output_is_cut_with_a_note(python) -> None:
    result = run(python, "print('a' * 5000)")
    assert "characters cut" in result.content and len(result.content) < 700


def test_memory_limit(python) -> None:
    result = run(python, "block = bytearray(8 * 1024 ** 3)")
    assert result.is_error and "MemoryError" in result.content
    assert run(python, "1 + 1").content == "2"  # the kernel survived


def _png() -> bytes:
    raw = b"\x00\xff\x00\x00"  # one red pixel
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def test_images_are_saved_as_files(python) -> None:
    code = f"import base64\nfrom IPython.display import Image, display\ndisplay(Image(data=base64.b64decode({base64.b64encode(_png())!r})))"
    result = run(python, code)
    assert not result.is_error and result.artifacts
    assert open(result.artifacts[0], "rb").read() == _png()
    assert f"[image saved to {result.artifacts[0]}]" in result.content


def test_working_directory(python) -> None:
    result = run(python, "import os\nopen('note.txt', 'w').write('hi')\nos.getcwd()")
    workdir = result.content.strip("'")
    assert os.path.isfile(os.path.join(workdir, "note.txt"))


def test_a_dead_kernel_is_restarted_and_the_model_is_told(python) -> None:
    run(python, "before = 1")
    died = run(python, "import os\nos._exit(1)")
    assert died.is_error and "restarted" in died.content and "variables and imports are gone" in died.content
    assert "NameError" in run(python, "before").content
    assert run(python, "2 * 21").content == "42"


def test_agent_uses_the_python_tool(tmp_path) -> None:
    (tool,) = [load_tool("python", workdir=tmp_path)]
    model = ScriptedModel([
        'Thought: compute\nAction: python\nAction Input: {"code": "sum(range(101))"}',
        "Thought: done\nFinal Answer: 5050",
    ])
    agent = Agent(model, [tool])
    try:
        result = agent.run("Sum 0..100")
        assert result.status == "answered" and result.messages[2].content == "5050"
    finally:
        agent.close()
    assert tool.toolkit.session._km is None  # closed: no kernel left behind
