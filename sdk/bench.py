"""Benchmark results as tables: hanlin beside its baseline, measured in the same run.

Benchmarks live with the plugin that owns the thing measured (each adds its
`hanlin bench` sub-command through ``register_commands``, see ``cli_bench``);
this module only gives them a common result shape and a plain-text renderer,
so `hanlin bench` prints every table the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class BenchTable:
    """One comparison: rows of measurements, a target stated in words, and whether it was met."""

    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    target: str = ""
    met: bool | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "columns": self.columns,
            "rows": self.rows,
            "target": self.target,
            "met": self.met,
            "notes": self.notes,
        }


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def render_table(table: BenchTable) -> str:
    cells = [table.columns, *[[_cell(v) for v in row] for row in table.rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(table.columns))]
    lines = [table.title, "-" * len(table.title)]
    for n, row in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if n and i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    if table.target:
        verdict = {True: "MET", False: "NOT MET", None: "n/a"}[table.met]
        lines.append(f"target: {table.target} -> {verdict}")
    lines.extend(f"note: {n}" for n in table.notes)
    return "\n".join(lines)
