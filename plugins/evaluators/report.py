"""What a run leaves behind: a summary table, scores as JSON and CSV (with standard errors), every prediction and
every prompt, and a progress line per dataset while it runs.

Layout of ``--out DIR``::

    DIR/scores.json                         all models evaluated into DIR, every dataset, metric, stderr and setting
    DIR/scores.csv                          one row per model x dataset x metric (and per MMLU subject)
    DIR/<model>/<dataset>.predictions.jsonl the output, extracted answer, verdict and gold answer of each item
    DIR/<model>/<dataset>.prompts.jsonl     the exact prompt (chat turns or text) and parameters sent per item
    DIR/scores.png                          a bar chart comparing the models, once DIR holds two or more

Scores from an earlier run of another model into the same DIR are kept, so one DIR can hold a comparison; a run with
several ``--model`` writes each model's folder and one scores.json with all of them.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from hanlin.plugins.evaluators.results import DatasetResult
from hanlin.plugins.evaluators.runner import EvalSettings


def safe_name(name: str) -> str:
    """A file name for a dataset or model name ("mmlu:high_school_biology" -> "mmlu-high_school_biology")."""
    return re.sub(r"[^\w.\-]+", "-", name).strip("-.") or "unnamed"


def _fmt(score: Any) -> str:
    return "-" if score is None else str(score)


def summary_table(results: Sequence[DatasetResult]) -> str:
    """The terminal summary: one row per dataset and metric, the score with its standard error."""
    rows = [("MODEL", "DATASET", "METRIC", "SCORE", "N", "ANSWERED", "CALLS", "CACHED", "TIME")]
    for r in results:
        for metric, score in r.metrics.items():
            rows.append((r.model, r.dataset, metric, _fmt(score), str(score.n), f"{r.answered:.0%}", str(r.model_calls),
                         str(r.cached), f"{r.elapsed_s:.1f}s"))
        if r.info.get("show_groups"):  # a few named categories (function_calling), each with its own score
            for group, score in r.groups.items():
                rows.append((r.model, r.dataset, f"  {group}", _fmt(score), str(score.n), "", "", "", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    for r in results:
        lines += [f"note ({r.dataset}): {note}" for note in r.notes]
        if r.errors:
            first = next(p.error for p in r.predictions if p.error)
            lines.append(f"note ({r.dataset}): {r.errors} item(s) failed in the model and count as wrong, e.g. {first}")
    return "\n".join(lines)


def _dataset_record(r: DatasetResult, folder: str, settings: EvalSettings) -> dict[str, Any]:
    stem = f"{folder}/{safe_name(r.dataset)}"
    return {
        "kind": r.kind,
        "settings": settings.as_dict(),
        "metrics": {m: s.as_dict() for m, s in r.metrics.items()},
        "groups": {g: s.as_dict() for g, s in r.groups.items()},
        "items": len({p.id for p in r.predictions}),
        "shots": r.shots,
        "answered": r.answered,
        "errors": r.errors,
        "model_calls": r.model_calls,
        "cached": r.cached,
        "elapsed_s": round(r.elapsed_s, 3),
        "source": r.info.get("source", ""),
        "fewshot_source": r.info.get("fewshot_source", ""),
        "dropped": r.info.get("dropped", []),
        "group_metric": r.info.get("group_metric", "accuracy"),
        **{k: r.info[k] for k in ("circular", "base_dataset", "protocol", "agent") if k in r.info},
        "notes": r.notes,
        "predictions": f"{stem}.predictions.jsonl",
        "prompts": f"{stem}.prompts.jsonl",
    }


def _write_jsonl(path: Path, records: Sequence[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def write_outputs(out: Path, results: Sequence[DatasetResult], settings: EvalSettings, *, model: str,
                  runtime: str | None = None) -> list[Path]:
    """Write (or update) DIR's scores and this model's predictions and prompts; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    folder = safe_name(model)
    (out / folder).mkdir(exist_ok=True)
    written = []
    for r in results:
        stem = out / folder / safe_name(r.dataset)
        _write_jsonl(Path(f"{stem}.predictions.jsonl"), [p.as_dict() for p in r.predictions])
        _write_jsonl(Path(f"{stem}.prompts.jsonl"), r.prompts)
        written += [Path(f"{stem}.predictions.jsonl"), Path(f"{stem}.prompts.jsonl")]
    scores_path = out / "scores.json"
    scores: dict[str, Any] = {}
    if scores_path.is_file():
        try:
            scores = json.loads(scores_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            scores = {}  # an unreadable old file is replaced, not merged
    from hanlin import __version__

    scores.update(hanlin_version=__version__, updated=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    entry = scores.setdefault("models", {}).setdefault(model, {"datasets": {}})
    entry["runtime"] = runtime
    for r in results:  # settings live per dataset: datasets added by separate runs may differ
        entry["datasets"][r.dataset] = _dataset_record(r, folder, settings)
    scores_path.write_text(json.dumps(scores, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "scores.csv").write_text(scores_csv(scores), encoding="utf-8")
    return [scores_path, out / "scores.csv", *written]


def write_chart(out: Path) -> tuple[Path | None, str | None]:
    """DIR/scores.png comparing the models in DIR/scores.json, once it holds two or more. Returns (the PNG or None,
    a note for the user or None): a missing matplotlib is a note saying how to install it, never a failed run."""
    from hanlin.plugins.evaluators.chart import chart_unavailable, write_chart as draw

    try:
        scores = json.loads((out / "scores.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None, None
    if len(scores.get("models", {})) < 2:
        return None, None
    if (problem := chart_unavailable()) is not None:
        return None, f"{problem}; scores.json and scores.csv were written"
    try:
        return draw(out / "scores.png", scores), None
    except ValueError as exc:
        return None, f"no chart: {exc}"


def scores_csv(scores: dict[str, Any]) -> str:
    """model, dataset, group, metric, value, stderr, n: the overall rows have an empty group."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", "dataset", "group", "metric", "value", "stderr", "n"])
    for model, entry in scores.get("models", {}).items():
        for dataset, record in entry.get("datasets", {}).items():
            for metric, s in record["metrics"].items():
                writer.writerow([model, dataset, "", metric, s["value"], "" if s["stderr"] is None else s["stderr"], s["n"]])
            for group, s in record.get("groups", {}).items():
                writer.writerow([model, dataset, group, record.get("group_metric", "accuracy"), s["value"],
                                 "" if s["stderr"] is None else s["stderr"], s["n"]])
    return buffer.getvalue()


class StderrProgress:
    """``gsm8k  40/100  (12 cached)  1.3 items/s  eta 46s`` on stderr: redrawn in place on a terminal, a line per
    10% otherwise (logs and CI stay readable)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._start: dict[str, float] = {}
        self._shown: dict[str, int] = {}

    def __call__(self, dataset: str, done: int, total: int, cached: int) -> None:
        now = time.perf_counter()
        start = self._start.setdefault(dataset, now)
        fresh = done - cached
        rate = fresh / (now - start) if now > start and fresh else 0.0
        eta = f"  eta {math.ceil((total - done) / rate)}s" if rate and done < total else ""
        line = f"{dataset}  {done}/{total}  ({cached} cached)" + (f"  {rate:.2f} items/s" if rate else "") + eta
        if self.tty:
            self.stream.write("\r\033[K" + line + ("\n" if done == total else ""))
        else:
            step = max(1, total // 10)
            if done == total or done // step > self._shown.get(dataset, -1):
                self._shown[dataset] = done // step
                self.stream.write(line + "\n")
        self.stream.flush()
