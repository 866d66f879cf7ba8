"""`hanlin eval compare DIR1 DIR2`: score differences between two result folders, with their standard errors.

Each folder's scores.json may hold several models; every (model in DIR1, model in DIR2) pair is compared on the
dataset/metric rows both have. The two runs are independent samples, so the difference's standard error is
sqrt(se1² + se2²); |diff| / se > 2 is flagged as a difference unlikely to be noise.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from hanlin.errors import ConfigurationError


def load_scores(folder: Path) -> dict[str, Any]:
    path = folder / "scores.json" if folder.is_dir() else folder
    if not path.is_file():
        raise ConfigurationError(f"{str(path)!r} has no scores.json: give a folder written by `hanlin eval --out`")
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("models", {})
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigurationError(f"{str(path)!r} is not a readable scores.json ({exc})") from None


def compare(first: dict[str, Any], second: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for m1, e1 in first.items():
        for m2, e2 in second.items():
            for dataset in sorted(set(e1.get("datasets", {})) & set(e2.get("datasets", {}))):
                a, b = e1["datasets"][dataset]["metrics"], e2["datasets"][dataset]["metrics"]
                for metric in sorted(set(a) & set(b)):
                    v1, v2 = a[metric]["value"], b[metric]["value"]
                    s1, s2 = a[metric].get("stderr"), b[metric].get("stderr")
                    se = math.sqrt(s1**2 + s2**2) if s1 is not None and s2 is not None else None
                    diff = v2 - v1
                    rows.append({"dataset": dataset, "metric": metric, "model_1": m1, "value_1": v1, "model_2": m2,
                                 "value_2": v2, "diff": diff, "stderr": se,
                                 "significant": bool(se) and abs(diff) > 2 * se})
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no dataset/metric in common between the two folders"
    header = f"{'dataset':18} {'metric':12} {'model 1':28} {'score':>7} {'model 2':28} {'score':>7} {'diff ± se':>16}"
    lines = [header, "-" * len(header)]
    for r in rows:
        se = "n/a" if r["stderr"] is None else f"{r['stderr']:.3f}"
        mark = " *" if r["significant"] else ""
        lines.append(f"{r['dataset'][:18]:18} {r['metric'][:12]:12} {r['model_1'][:28]:28} {r['value_1']:7.3f} "
                     f"{r['model_2'][:28]:28} {r['value_2']:7.3f} {r['diff']:+8.3f} ± {se}{mark}")
    lines.append("* |diff| > 2 standard errors")
    return "\n".join(lines)
