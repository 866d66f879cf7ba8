"""Several models in one `hanlin eval`: scores per model in the table and DIR, and DIR/scores.png comparing them."""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from hanlin.plugins.evaluators import chart as chart_module
from hanlin.plugins.evaluators.chart import panels, write_chart
from hanlin.plugins.evaluators.report import write_chart as write_dir_chart
from tests.conftest import requires_llama, requires_smollm2, smollm2_path

DATA = Path(__file__).parent / "data" / "eval"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
requires_matplotlib = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                                         reason="matplotlib missing: pip install 'hanlin[eval]'")


def _score(value: float, stderr: float | None = 0.05, n: int = 20) -> dict:
    return {"value": value, "stderr": stderr, "n": n}


SCORES = {"models": {
    "small": {"datasets": {
        "gsm8k": {"metrics": {"accuracy": _score(0.3)}},
        "tooluse@react": {"metrics": {"accuracy": _score(0.2), "valid_calls": _score(0.9), "steps": _score(3.5, 0.4)}},
    }},
    "tuned": {"datasets": {
        "gsm8k": {"metrics": {"accuracy": _score(0.45)}},
        "mmlu@circular": {"metrics": {"circular": _score(0.1, None, 1), "rot0": _score(float("nan"), None, 0)}},
    }},
}}


def _png_size(path: Path) -> tuple[int, int]:
    """Width and height from the IHDR chunk, after checking the PNG signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR", "not a PNG file"
    return struct.unpack(">II", data[16:24])


def test_panels_are_every_dataset_and_metric_any_model_has() -> None:
    found = {(d, m): set(v) for d, m, v in panels(SCORES)}
    assert found == {("gsm8k", "accuracy"): {"small", "tuned"}, ("tooluse@react", "accuracy"): {"small"},
                     ("tooluse@react", "valid_calls"): {"small"}, ("tooluse@react", "steps"): {"small"},
                     ("mmlu@circular", "circular"): {"tuned"}}  # a nan score (nothing asked) is not drawn


@requires_matplotlib
def test_the_chart_is_a_valid_png(tmp_path: Path) -> None:
    path = write_chart(tmp_path / "scores.png", SCORES)
    width, height = _png_size(path)
    assert (width, height) == (4 * 340, 2 * 280 + 90)  # 5 panels: 4 columns, 2 rows at 100 dpi
    assert path.stat().st_size > 10_000  # bars, labels and a legend, not an empty canvas
    with pytest.raises(ValueError, match="no scores to chart"):
        write_chart(tmp_path / "empty.png", {"models": {"a": {"datasets": {}}}})


def test_without_matplotlib_the_scores_stay_and_the_note_says_how_to_install(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "scores.json").write_text(json.dumps(SCORES))
    monkeypatch.setattr(chart_module, "chart_unavailable", lambda: "the scores chart needs matplotlib, which is not "
                        f"installed: {chart_module.INSTALL}")
    png, note = write_dir_chart(tmp_path)
    assert png is None and "pip install matplotlib" in note and "scores.json and scores.csv were written" in note
    assert json.loads((tmp_path / "scores.json").read_text())["models"].keys() == {"small", "tuned"}
    (tmp_path / "scores.json").write_text(json.dumps({"models": {"small": SCORES["models"]["small"]}}))
    assert write_dir_chart(tmp_path) == (None, None)  # one model: nothing to compare


@requires_matplotlib
@requires_llama
@requires_smollm2
def test_hanlin_eval_with_two_models_writes_each_and_a_chart(tmp_path: Path) -> None:
    env = {**os.environ, "HANLIN_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "out"
    gguf = str(smollm2_path())  # the same weights by path: a second model name without a second download
    command = [sys.executable, "-m", "hanlin.cli", "eval", "-m", "smollm2-135m-instruct", "-m", gguf,
               "-d", str(DATA / "capitals.jsonl"), "--limit", "2", "--max-tokens", "8", "--out", str(out)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr
    models = json.loads((out / "scores.json").read_text())["models"]
    assert len(models) == 2 and "smollm2-135m-instruct" in models
    for name, entry in models.items():
        record = entry["datasets"]["capitals"]
        assert record["metrics"]["accuracy"]["n"] == 2 and (out / record["predictions"]).is_file()
        assert f"{name[:20]}" in run.stdout  # each model has its rows in the summary table
    rows = (out / "scores.csv").read_text().splitlines()
    assert len([r for r in rows if ",capitals,,accuracy," in r]) == 2
    width, height = _png_size(out / "scores.png")
    assert width > 100 and height > 100 and f"wrote {out / 'scores.png'}" in run.stderr
