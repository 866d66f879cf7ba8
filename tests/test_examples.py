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
    """Traces -> eval -> LoRA -> GGUF -> eval -> run, on 4 tasks and 2 steps (the full loop's numbers are in the
    session notes; this proves every stage runs from the documented command)."""
    import importlib.util

    import pytest

    for module in ("peft", "gguf", "llama_cpp", "jupyter_client"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"the flywheel needs {module}: pip install 'hanlin[cpu,tune,tools]'")
    out = run_example("flywheel.py", "--out", str(tmp_path), "--quick", timeout=900)
    assert "traces: kept 4 of 4 teacher runs" in out
    assert "loss: first" in out and (tmp_path / "tuned" / "model.gguf").is_file()
    assert "accuracy" in out and "valid_calls" in out and "->" in out
    assert "$ hanlin run --model" in out
