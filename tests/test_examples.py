"""Every example runs as documented (CI runs them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_example(name: str, *args: str) -> str:
    out = subprocess.run([sys.executable, str(ROOT / "examples" / name), *args], capture_output=True, text=True, timeout=300)
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
