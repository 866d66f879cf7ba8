"""The one JSON summary of tests/gpu_check.sh, from what its steps left in its work folder.

``python tests/gpu_check_summary.py WORK SUMMARY START``: WORK holds steps.tsv (name, exit status, seconds per
step), NAME.log / NAME.err (each step's stdout / stderr) and NAME.xml (pytest's junit report of a test step); the
benchmark steps printed their tables as JSON on stdout. Exit status 0 only when every step and every test passed
(a target not met is reported, not a failure: the numbers are the point of the run).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

TEST_STEPS = ("kernel_tests", "engine_tests", "finetune_tests")
TARGETS = {  # summary name -> (bench step, words starting its table's title)
    "throughput >= 10x transformers generate (256 requests)": ("bench_throughput", "throughput:"),
    "batch-1 decode >= 50% of the bandwidth bound": ("bench_throughput", "batch-1 decode:"),
    "every kernel correct and at its speed target": ("bench_kernels", "kernels:"),
}
QUANT_TARGETS = {  # `hanlin bench quant-gpu` (issue 21), reported beside the engine's targets
    "W4A16 batch-1 decode >= 2x bf16": ("bench_quant", "W4A16 batch-1 decode:"),
    "KV int8 throughput >= 1.3x bf16 cache (256 requests)": ("bench_quant", "KV int8 throughput:"),
    "dequant-GEMM faster than bf16 matmul at M = 1": ("bench_quant", "dequant-GEMM:"),
}


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.is_file() else ""


def junit_counts(xml: Path) -> dict[str, Any] | None:
    """passed / failures / errors / skipped and each failure's test and message, from a junit report."""
    if not xml.is_file():
        return None
    root = ET.parse(xml).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    count: dict[str, Any] = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors",
                                                                                  "skipped")}
    count["passed"] = count["tests"] - count["failures"] - count["errors"] - count["skipped"]
    count["failed"] = [{"test": f"{case.get('classname')}::{case.get('name')}",
                        "message": (bad.get("message") or "")[:500]}
                       for case in root.iter("testcase") for bad in [*case.findall("failure"), *case.findall("error")]]
    return count


def bench_tables(stdout: str) -> list[dict[str, Any]] | None:
    """The JSON list of tables `hanlin bench ... --json` printed, whatever else reached stdout before it."""
    for match in re.finditer(r"^\[", stdout, flags=re.MULTILINE):
        try:
            return json.JSONDecoder().raw_decode(stdout[match.start():])[0]
        except json.JSONDecodeError:
            continue
    return None


def summarize(work: Path, start: float) -> dict[str, Any]:
    steps: dict[str, dict[str, Any]] = {}
    for line in _read(work / "steps.tsv").splitlines():
        name, rc, seconds = line.split("\t")
        steps[name] = {"rc": int(rc), "seconds": int(seconds), "timed_out": int(rc) in (124, 137)}
        if int(rc):
            steps[name]["stdout_tail"] = _read(work / f"{name}.log")[-3000:]
            steps[name]["stderr_tail"] = _read(work / f"{name}.err")[-3000:]
    tests = {name: junit_counts(work / f"{name}.xml") for name in TEST_STEPS}
    bench = {name: bench_tables(_read(work / f"{name}.log")) for name in ("bench_kernels", "bench_throughput",
                                                                          "bench_quant")}
    targets, quant_targets = {}, {}
    for found, wanted in ((targets, TARGETS), (quant_targets, QUANT_TARGETS)):
        for target, (step, title) in wanted.items():
            table = next((t for t in bench[step] or [] if t.get("title", "").startswith(title)), None)
            found[target] = None if table is None else table.get("met")
    ok = bool(steps) and all(s["rc"] == 0 for s in steps.values()) and all(
        t is not None and not t["failures"] and not t["errors"] for t in tests.values())
    return {"ok": ok, "device": _device(), "seconds": round(time.time() - start), "steps": steps, "tests": tests,
            "targets": targets, "quant_targets": quant_targets, "bench": bench}


def _device() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:  # the summary is still written
        return f"nvidia-smi failed: {exc}"


def main(argv: list[str]) -> int:
    work, path, start = Path(argv[1]), Path(argv[2]), float(argv[3])
    summary = summarize(work, start)
    path.write_text(json.dumps(summary, indent=2, default=str))
    brief = {k: summary[k] for k in ("ok", "seconds", "targets", "quant_targets")}
    brief["steps"] = {k: v["rc"] for k, v in summary["steps"].items()}
    print(json.dumps(brief, indent=2))
    print(f"gpu_check: summary in {path}", file=sys.stderr)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
