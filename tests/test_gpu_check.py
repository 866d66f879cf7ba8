"""tests/gpu_check.sh, checked where there is no GPU: its syntax, that its pytest selections collect, that it
refuses to run without CUDA, and its summary on the outputs a run leaves."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "gpu_check.sh"


def _pytest_selections() -> list[list[str]]:
    """The test files and -k expressions of each pytest step of the script."""
    text = SCRIPT.read_text().replace("\\\n", " ")
    runs = []
    for line in text.splitlines():
        if line.startswith("step ") and "\"${PYTEST[@]}\"" in line:
            words = shlex.split(line.split("\"${PYTEST[@]}\"", 1)[1])
            runs.append([w for w in words if not w.startswith("--junitxml")])
    return runs


def test_the_script_parses() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0


def test_its_pytest_selections_collect_here() -> None:
    runs = _pytest_selections()
    assert len(runs) == 3 and any("tests/test_kernels.py" in r for r in runs) and any("tests/test_gpu_cuda.py" in r
                                                                                          for r in runs)
    # side by side: each is mostly imports (torch, triton), one after another they took ~50 s of the suite
    procs = [subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only",
                               *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
             for args in runs]
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stdout[-2000:] + stderr[-2000:]
        assert re.search(r"\d+(/\d+)? tests? collected", stdout), stdout[-500:]


def test_it_refuses_a_machine_without_cuda(tmp_path) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the script would run for real")
    out = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "s.json")], capture_output=True, text=True, cwd=ROOT,
                         env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "HOME": str(tmp_path)}, timeout=120)
    assert out.returncode == 2 and "no CUDA device" in out.stderr


def test_the_summary_of_a_run(tmp_path) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        import gpu_check_summary as summary
    finally:
        sys.path.pop(0)
    (tmp_path / "steps.tsv").write_text("kernel_tests\t0\t80\nengine_tests\t1\t150\nfinetune_tests\t0\t20\n"
                                        "bench_kernels\t0\t40\nconvert\t0\t0\nbench_throughput\t124\t300\n")
    (tmp_path / "finetune_tests.xml").write_text('<testsuite tests="1" failures="0" errors="0" skipped="0"/>')
    (tmp_path / "kernel_tests.xml").write_text(
        '<testsuites><testsuite tests="3" failures="0" errors="0" skipped="1">'
        '<testcase classname="tests.test_kernels" name="test_a"/></testsuite></testsuites>')
    (tmp_path / "engine_tests.xml").write_text(
        '<testsuites><testsuite tests="2" failures="1" errors="0" skipped="0">'
        '<testcase classname="tests.test_gpu_cuda" name="test_graphs"><failure message="tokens differ"/></testcase>'
        '</testsuite></testsuites>')
    (tmp_path / "engine_tests.err").write_text("a traceback")
    kernels = [{"title": "kernels: Triton vs torch, shapes, bfloat16, H200", "columns": [], "rows": [], "target": "",
                "met": True, "notes": []}]
    (tmp_path / "bench_kernels.log").write_text("a warning on stdout\n" + json.dumps(kernels, indent=2) + "\n")
    result = summary.summarize(tmp_path, start=0)
    assert result["ok"] is False
    assert result["tests"]["kernel_tests"]["passed"] == 2 and result["tests"]["kernel_tests"]["skipped"] == 1
    assert result["tests"]["engine_tests"]["failed"] == [{"test": "tests.test_gpu_cuda::test_graphs",
                                                          "message": "tokens differ"}]
    assert result["steps"]["engine_tests"]["stderr_tail"] == "a traceback"
    assert result["steps"]["bench_throughput"]["timed_out"] and result["bench"]["bench_throughput"] is None
    assert result["targets"] == {"throughput >= 10x transformers generate (256 requests)": None,
                                 "batch-1 decode >= 50% of the bandwidth bound": None,
                                 "every kernel correct and at its speed target": True}
    assert summary.main(["x", str(tmp_path), str(tmp_path / "out.json"), "0"]) == 1
    assert json.loads((tmp_path / "out.json").read_text())["bench"]["bench_kernels"] == kernels
