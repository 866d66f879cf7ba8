"""DIR/scores.png: a bar chart comparing the models of a results folder, one panel per dataset and metric.

Each panel has its own y axis (accuracy lives in [0, 1], mean steps does not) and shows every model as a bar with
its standard error as an error bar, so a difference inside the error bars reads as what it is. Drawn with
matplotlib's object API on the Agg canvas (no pyplot, no display, no global backend switch), so it works on a
headless machine and inside a process that uses matplotlib otherwise. matplotlib is optional (the ``eval`` extra):
without it the scores are still written and the caller says how to get the chart.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

INSTALL = "pip install matplotlib (or pip install 'hanlin[eval]')"
MAX_PANELS = 36  # beyond this a PNG is unreadable; the rest are listed in the chart's footnote
COLUMNS = 4


def chart_unavailable() -> str | None:
    """None when the chart can be drawn here, else what to install."""
    if importlib.util.find_spec("matplotlib") is None:
        return f"the scores chart needs matplotlib, which is not installed: {INSTALL}"
    return None


def panels(scores: dict[str, Any]) -> list[tuple[str, str, dict[str, tuple[float, float | None]]]]:
    """(dataset, metric, {model: (value, stderr)}) for every dataset/metric any model has, in first-seen order."""
    table: dict[tuple[str, str], dict[str, tuple[float, float | None]]] = {}
    for model, entry in scores.get("models", {}).items():
        for dataset, record in entry.get("datasets", {}).items():
            for metric, score in record.get("metrics", {}).items():
                value = score.get("value")
                if value is None or (isinstance(value, float) and math.isnan(value)):
                    continue
                table.setdefault((dataset, metric), {})[model] = (float(value), score.get("stderr"))
    return [(d, m, v) for (d, m), v in table.items()]


def write_chart(path: Path, scores: dict[str, Any]) -> Path:
    """Draw the models of ``scores`` (the scores.json layout) into a PNG at ``path``; returns the path.

    Raises RuntimeError naming the package to install when matplotlib is missing, ValueError when there is
    nothing to draw.
    """
    problem = chart_unavailable()
    if problem:
        raise RuntimeError(problem)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    found = panels(scores)
    if not found:
        raise ValueError("no scores to chart: the scores have no dataset with a metric")
    shown, left_out = found[:MAX_PANELS], found[MAX_PANELS:]
    models = list(scores.get("models", {}))
    ncols = min(COLUMNS, len(shown))
    nrows = math.ceil(len(shown) / ncols)
    figure = Figure(figsize=(3.4 * ncols, 2.8 * nrows + 0.9), dpi=100)
    FigureCanvasAgg(figure)
    colors = [f"C{i % 10}" for i in range(len(models))]
    axes = figure.subplots(nrows, ncols, squeeze=False)
    for ax, (dataset, metric, values) in zip(axes.flat, shown):
        top = 0.0
        for x, model in enumerate(models):
            if model not in values:  # not run on this dataset: an empty, labelled slot, not a zero score
                ax.text(x, 0.0, "n/a", ha="center", va="bottom", fontsize=7, color="0.5")
                continue
            height, stderr = values[model]
            ax.bar([x], [height], yerr=[stderr] if stderr else None, color=colors[x], capsize=3,
                   error_kw={"elinewidth": 1})
            ax.text(x, height + (stderr or 0.0), f"{height:.2f}", ha="center", va="bottom", fontsize=7)
            top = max(top, height + (stderr or 0.0))
        ax.set_title(f"{dataset}\n{metric}", fontsize=9)
        ax.set_xticks([])
        ax.set_xlim(-0.6, len(models) - 0.4)
        ax.set_ylim(0, 1.1 if top <= 1.0 else top * 1.15)
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(shown):]:
        ax.set_visible(False)
    handles = [_swatch(c) for c in colors]
    figure.legend(handles, models, loc="upper center", ncol=min(len(models), 4), fontsize=8, frameon=False)
    footer = "bars: score; error bars: one standard error"
    if left_out:
        footer += f"; {len(left_out)} more dataset/metric panels are in scores.json"
    figure.text(0.5, 0.005, footer, ha="center", va="bottom", fontsize=7)
    figure.tight_layout(rect=(0, 0.03, 1, 1 - 0.35 / (2.8 * nrows + 0.9)))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def _swatch(color: str) -> Any:
    from matplotlib.patches import Patch

    return Patch(color=color)
