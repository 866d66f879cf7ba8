"""`hanlin eval compare DIR1 DIR2`: score differences between two result folders, with their standard errors.

Each folder's scores.json may hold several models; every (model in DIR1, model in DIR2) pair is compared on the
dataset/metric rows both have. The two runs are independent samples, so the difference's standard error is
sqrt(se1² + se2²); |diff| / se > 2 is flagged as a difference unlikely to be noise.

``--paired`` compares the two runs item by item instead, from their predictions files: on the same questions the
per-item differences have a much smaller spread than two independent scores (most items go the same way in both),
so a change of a few items out of 63 can be told from noise, and the items that turned right or wrong are named.
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


def matched(first: dict[str, Any], second: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(label, dataset in first, dataset in second): the same names, then the same dataset run through different
    agent protocols ("tooluse@react" against "tooluse@code") when each side ran it through one."""
    same = sorted(set(first) & set(second))

    def by_base(names: set[str]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for n in sorted(names):
            out.setdefault(n.split("@")[0], []).append(n)
        return out

    rest1, rest2 = by_base(set(first) - set(same)), by_base(set(second) - set(same))
    across = [(f"{rest1[k][0]} vs {rest2[k][0]}", rest1[k][0], rest2[k][0]) for k in sorted(set(rest1) & set(rest2))
              if len(rest1[k]) == len(rest2[k]) == 1 and "@" in rest1[k][0]]
    return [(d, d, d) for d in same] + across


def compare(first: dict[str, Any], second: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for m1, e1 in first.items():
        for m2, e2 in second.items():
            for dataset, d1, d2 in matched(e1.get("datasets", {}), e2.get("datasets", {})):
                a, b = e1["datasets"][d1]["metrics"], e2["datasets"][d2]["metrics"]
                for metric in sorted(set(a) & set(b)):
                    v1, v2 = a[metric]["value"], b[metric]["value"]
                    s1, s2 = a[metric].get("stderr"), b[metric].get("stderr")
                    se = math.sqrt(s1**2 + s2**2) if s1 is not None and s2 is not None else None
                    diff = v2 - v1
                    rows.append({"dataset": dataset, "metric": metric, "model_1": m1, "value_1": v1, "model_2": m2,
                                 "value_2": v2, "diff": diff, "stderr": se,
                                 "significant": bool(se) and abs(diff) > 2 * se})
    return rows


def _verdicts(folder: Path, record: dict[str, Any]) -> dict[tuple[str, int], tuple[bool, str]]:
    """(item id, sample) -> (correct, group) from a dataset's predictions file, named relative to ``folder``."""
    path = (folder if folder.is_dir() else folder.parent) / record.get("predictions", "")
    if not record.get("predictions") or not path.is_file():
        raise ConfigurationError(f"{str(path)!r} is missing: --paired needs the predictions files that "
                                 "`hanlin eval --out` writes beside scores.json")
    out = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            p = json.loads(line)
            out[(str(p["id"]), int(p.get("sample", 0)))] = (bool(p["correct"]), str(p.get("group") or ""))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ConfigurationError(f"{str(path)!r} line {number} is not a prediction record ({exc})") from None
    return out


def paired(first: Path, second: Path, max_named: int = 12) -> list[dict[str, Any]]:
    """Per dataset and model pair, and per group: the items both runs answered, scored by both, with the mean
    per-item difference and its standard error, and the items that changed."""
    one, two = load_scores(first), load_scores(second)
    read: dict[tuple[int, str, str], dict[tuple[str, int], tuple[bool, str]]] = {}  # each file once, whatever the pairs

    def verdicts(side: int, model: str, dataset: str) -> dict[tuple[str, int], tuple[bool, str]]:
        if (side, model, dataset) not in read:
            folder, scores = (first, one) if side == 1 else (second, two)
            read[side, model, dataset] = _verdicts(folder, scores[model]["datasets"][dataset])
        return read[side, model, dataset]

    rows = []
    for m1, e1 in one.items():
        for m2, e2 in two.items():
            for dataset, d1, d2 in matched(e1.get("datasets", {}), e2.get("datasets", {})):
                a, b = verdicts(1, m1, d1), verdicts(2, m2, d2)
                shared = [k for k in a if k in b]
                groups = sorted({a[k][1] for k in shared} - {""})
                for group in ["", *groups] if len(groups) > 1 else [""]:
                    keys = [k for k in shared if not group or a[k][1] == group]
                    if keys:
                        rows.append(_paired_row(dataset, group, m1, m2, keys, a, b, max_named))
    return rows


def _paired_row(dataset: str, group: str, m1: str, m2: str, keys: list[tuple[str, int]],
                a: dict[tuple[str, int], tuple[bool, str]], b: dict[tuple[str, int], tuple[bool, str]],
                max_named: int) -> dict[str, Any]:
    diffs = [int(b[k][0]) - int(a[k][0]) for k in keys]
    n, mean = len(diffs), sum(diffs) / len(diffs)
    se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1) / n) if n > 1 else None
    name = lambda k: k[0] if k[1] == 0 else f"{k[0]}#{k[1]}"  # noqa: E731
    better = [name(k) for k, d in zip(keys, diffs) if d > 0]
    worse = [name(k) for k, d in zip(keys, diffs) if d < 0]
    return {"dataset": dataset, "group": group, "metric": "correct (paired)", "n": n, "model_1": m1,
            "value_1": sum(a[k][0] for k in keys) / n, "model_2": m2, "value_2": sum(b[k][0] for k in keys) / n,
            "diff": mean, "stderr": se, "significant": se is not None and mean != 0 and abs(mean) > 2 * se,
            "better": len(better), "worse": len(worse), "better_items": better[:max_named],
            "worse_items": worse[:max_named]}


def render_paired(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no dataset in common between the two folders"
    wd = min(max(len(r["dataset"]) for r in rows), 40)
    wg = min(max(len(r["group"] or "all") for r in rows), 32)
    wm = min(max(len(r[k]) for r in rows for k in ("model_1", "model_2")), 32)
    header = (f"{'dataset':{wd}} {'group':{wg}} {'n':>4} {'model 1':{wm}} {'score':>6} {'model 2':{wm}} {'score':>6} "
              f"{'diff ± se':>16} {'better':>6} {'worse':>5}")
    lines = [header, "-" * len(header)]
    for r in rows:
        se = "n/a" if r["stderr"] is None else f"{r['stderr']:.3f}"
        lines.append(f"{r['dataset'][:wd]:{wd}} {(r['group'] or 'all')[:wg]:{wg}} {r['n']:4d} {r['model_1'][:wm]:{wm}} "
                     f"{r['value_1']:6.3f} {r['model_2'][:wm]:{wm}} {r['value_2']:6.3f} {r['diff']:+8.3f} ± {se}"
                     f"{' *' if r['significant'] else '  '} {r['better']:6d} {r['worse']:5d}")
    for r in rows:
        if not r["group"] and (r["better_items"] or r["worse_items"]):
            more = lambda k: f" and {r[k]} in all" if r[k] > len(r[k + '_items']) else ""  # noqa: E731
            lines.append(f"{r['dataset']}: better {', '.join(r['better_items']) or '-'}{more('better')}; "
                         f"worse {', '.join(r['worse_items']) or '-'}{more('worse')}")
    lines.append("* |diff| > 2 standard errors of the per-item differences")
    return "\n".join(lines)


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
