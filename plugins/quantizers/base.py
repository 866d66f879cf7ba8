"""What every quantization method shares: the report it returns and the interface ``hanlin quantize`` calls.

A method is registered as a ``ComponentSpec`` in the ``quantizers`` kind (plugin.py); its factory takes no
arguments and returns an object with a ``quantize`` method (the ``Quantizer`` protocol). The command resolves the
model, calls ``quantize``, prints the report and decides the exit status from it, so a third-party method gets the
CLI, the JSON output and the ``--strict`` guard rail for free by filling a ``QuantizeReport``.

Guard rail contract: a method that can measure quality compares the quantized model with its source on text the
user gave (or a held-out default) and records it as a ``QualityCheck``; ``flagged`` is true when a check failed or
a layer warning was raised (a NaN in calibration statistics, say). The command exits non-zero on a flagged report
only under ``--strict``; without it the warnings are printed and the file is kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field


class LayerNote(BaseModel):
    """One remark about one tensor or layer (by its name in the output file), e.g. a NaN found in its statistics."""

    model_config = ConfigDict(extra="forbid")

    layer: str
    level: Literal["info", "warning"] = "info"
    message: str


class QualityCheck(BaseModel):
    """Quantized vs source on the same text: a metric where lower is better (perplexity, mean NLL)."""

    model_config = ConfigDict(extra="forbid")

    metric: str  # "perplexity", "nll"...
    text: str  # where the text came from (a file path, or "held-out: <what>")
    tokens: int
    source: float
    quantized: float
    max_increase: float  # allowed relative increase, e.g. 0.05 = +5%
    engine: str = ""  # what measured it ("llama.cpp", "torch")

    @property
    def increase(self) -> float:
        """Relative change of the metric, quantized vs source (+0.02 = 2% worse)."""
        return self.quantized / self.source - 1.0 if self.source else float("inf")

    @property
    def passed(self) -> bool:
        return self.quantized == self.quantized and self.increase <= self.max_increase  # NaN never passes

    def line(self) -> str:
        verdict = "ok" if self.passed else f"DEGRADED beyond +{self.max_increase:.0%}"
        return (f"{self.metric} on {self.text} ({self.tokens} tokens, {self.engine}): source {self.source:.3f}, "
                f"quantized {self.quantized:.3f} ({self.increase:+.1%}) {verdict}")


class QuantizeReport(BaseModel):
    """What one ``quantize`` call did; printed by the CLI and returned as JSON by ``hanlin quantize --json``."""

    model_config = ConfigDict(extra="forbid")

    method: str  # the registered name: q4_k_m, awq-w4...
    source: str  # the model that was read (file or folder)
    out: str  # what was written (a .gguf file or a folder)
    size_bytes_in: int
    size_bytes_out: int
    seconds: float
    calibration: str | None = None  # the calibration file, when one was used
    notes: list[str] = Field(default_factory=list)  # steps taken ("exported f16 GGUF first", "imatrix from ...")
    warnings: list[str] = Field(default_factory=list)  # anything the user must know (not per layer)
    layers: list[LayerNote] = Field(default_factory=list)
    checks: list[QualityCheck] = Field(default_factory=list)
    details: dict[str, Any] = Field(default_factory=dict)  # method-specific facts (group size, tensor type counts)

    @property
    def flagged(self) -> bool:
        """True when a quality check failed or a warning was raised: ``--strict`` turns this into exit status 1."""
        return bool(self.warnings) or any(not c.passed for c in self.checks) or any(
            n.level == "warning" for n in self.layers)

    @property
    def size_ratio(self) -> float:
        return self.size_bytes_out / self.size_bytes_in if self.size_bytes_in else float("nan")

    def summary(self) -> str:
        lines = [f"{self.method}: {self.source} -> {self.out}",
                 f"  size {_mb(self.size_bytes_in)} -> {_mb(self.size_bytes_out)} ({self.size_ratio:.2f}x) "
                 f"in {self.seconds:.1f} s"]
        lines += [f"  {note}" for note in self.notes]
        lines += [f"  check: {check.line()}" for check in self.checks]
        lines += [f"  warning: {w}" for w in self.warnings]
        lines += [f"  warning: {n.layer}: {n.message}" for n in self.layers if n.level == "warning"]
        return "\n".join(lines)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


@runtime_checkable
class Quantizer(Protocol):
    """One quantization method. ``source`` is a resolved path (a .gguf file or an HF folder), ``out`` the file or
    folder to write. ``calib``: a local calibration file (calibration.py reads it), or None when the method is
    data-free or the user gave none. ``options``: the command's other settings by name (e.g. ``imatrix``,
    ``threads``, ``check``, ``max_increase``, ``eval_text``); a method rejects an option it cannot honour with a
    ConfigurationError rather than ignoring it."""

    def quantize(self, source: Path, out: Path, *, calib: Path | None, options: dict[str, Any]) -> QuantizeReport:
        ...


def size_on_disk(path: Path) -> int:
    """Bytes of a file, or of every file under a folder."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
