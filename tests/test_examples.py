"""Every example runs as documented (CI runs them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_example(name: str, *args: str, timeout: int = 300) -> str:
    out = subprocess.run([sys.executable, str(ROOT / "examples" / name), *args], capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_custom_tool_example() -> None:
    out = run_example("custom_tool.py")
    assert "called convert_temperature({'celsius': 21.5})" in out
    assert "answered: 21.5 °C is 70.7 °F." in out


def test_embed_in_app_example(tmp_path) -> None:
    out = run_example("embed_in_app.py", "--trace", str(tmp_path / "desk.jsonl"))
    assert "[alice] order_status -> shipped on Monday" in out
    assert "[alice] calculator -> 6" in out
    assert "saved 2 runs" in out and "['answered', 'answered']" in out


def test_flywheel_example_quick(tmp_path) -> None:
    """Traces -> eval -> LoRA -> GGUF -> eval -> run, on 4 tasks, 2 steps and 1 eval item (the full loop's numbers
    are in the session notes; this proves every stage runs from the documented command)."""
    import importlib.util

    import pytest

    for module in ("peft", "gguf", "llama_cpp", "jupyter_client"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"the flywheel needs {module}: pip install 'hanlin[cpu,tune,tools]'")
    out = run_example("flywheel.py", "--out", str(tmp_path), "--quick", timeout=900)
    assert "traces: kept 4 of 4 teacher runs" in out
    assert "loss: first" in out and (tmp_path / "tuned" / "model.gguf").is_file()
    scores = _flywheel_scores(out)
    for metric in ("accuracy", "expected_tool"):  # of the 1 item: 0 or 1, before and after
        assert all(v in (0.0, 1.0) for v in scores[metric]), (metric, scores[metric])
    assert all(1 <= v <= 3 for v in scores["steps"]), scores["steps"]  # mean steps per item; --quick stops at 3
    assert all(v is None or 0.0 <= v <= 1.0 for v in scores["valid_calls"]), scores["valid_calls"]  # None: no call tried
    assert "$ hanlin run --model" in out


def test_the_flywheel_check_fails_a_run_whose_scores_are_missing() -> None:
    """What the flywheel printed before when scores.json lacked a metric: 'nan', which the old check let through."""
    import pytest

    table = "tooluse (react), before -> after:\n  accuracy           nan -> nan\n  valid_calls        nan -> nan\n" \
            "  expected_tool      nan -> nan\n  steps              nan -> nan\n"
    with pytest.raises(AssertionError):
        _flywheel_scores(table)
    good = table.replace("nan -> nan", "0.500 -> 1.000").replace("valid_calls        0.500", "valid_calls          n/a")
    assert _flywheel_scores(good)["valid_calls"] == [None, 1.0]


def _flywheel_scores(out: str) -> dict[str, list[float | None]]:
    """The 'before -> after' table the flywheel prints, as numbers; every metric must be there, and every value a
    number (only valid_calls may be 'n/a', when no item tried a call)."""
    import math

    table = {}
    lines = out.split("tooluse (react), before -> after:\n", 1)[1].splitlines()[:4]
    for line in lines:
        metric, before, arrow, after = line.split()
        assert arrow == "->", line
        values = [None if v == "n/a" and metric == "valid_calls" else float(v) for v in (before, after)]
        assert all(v is None or math.isfinite(v) for v in values), line
        table[metric] = values
    assert sorted(table) == ["accuracy", "expected_tool", "steps", "valid_calls"], out
    return table
