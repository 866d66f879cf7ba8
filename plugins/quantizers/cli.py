"""``hanlin quantize MODEL --to TYPE --out OUT``: one offline command for every registered quantization method.

The command only resolves names and paths, calls the method, prints its report and sets the exit status; what a
method does lives in its own module. ``quantize()`` is the same path as a function, for ``hanlin tune --quant``
and for scripts.

Exit status: 0 when done (warnings are printed), 1 when the report is flagged and ``--strict`` was given (the file
is kept so it can be inspected), 2 for bad input (unknown type, missing file, unsupported model).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hanlin.errors import ConfigurationError
from hanlin.plugins.quantizers.base import QuantizeReport, Quantizer


def source_path(model: str | Path) -> Path:
    """A model name, .gguf file, HF folder, or a ``hanlin tune`` output folder (its full-precision ``merged/``
    folder when there is one, else its ``model.gguf``) as the path a quantizer reads."""
    path = Path(model).expanduser()
    if path.is_dir() and (path / "merged" / "config.json").is_file():
        return path / "merged"
    from hanlin.loading import resolve_model

    return Path(resolve_model(str(model)).locate())


def quantizer(method: str) -> Quantizer:
    """The registered method by name; an unknown name is a ConfigurationError listing every known one."""
    from hanlin.plugin_manager import plugins

    spec = plugins().get("quantizers", method)
    made = spec.factory()
    if not isinstance(made, Quantizer):
        raise ConfigurationError(f"quantizer '{method}' (from plugin {plugins().owner('quantizers', method)}) "
                                 "returned an object without a quantize(source, out, *, calib, options) method")
    return made


def quantize(model: str | Path, to: str, out: str | Path, *, calib: str | Path | None = None,
             **options: Any) -> QuantizeReport:
    """Quantize ``model`` with the method ``to`` into ``out``; ``options`` go to the method (None values dropped)."""
    method = quantizer(to)
    source = source_path(model)
    given = {k: v for k, v in options.items() if v is not None}
    tuned_gguf = source.parent / "model.gguf"
    if source.name == "merged" and tuned_gguf.is_file() and _writes_gguf(method):
        # a tuning run's folder: its GGUF export holds the exact tokenizer block (copied from the base's GGUF)
        given.setdefault("tokenizer_gguf", tuned_gguf)
    return method.quantize(source, Path(out).expanduser(), calib=Path(calib).expanduser() if calib else None,
                           options=given)


def _writes_gguf(method: Quantizer) -> bool:
    from hanlin.plugins.quantizers.gguf import GGUFQuantizer

    return isinstance(method, GGUFQuantizer)


def gguf_method(method: str) -> Quantizer:
    """A registered method that writes GGUF (what ``hanlin tune --quant`` accepts), or a ConfigurationError."""
    from hanlin.plugins.quantizers.plugin import GGUF_TYPES

    made = quantizer(method)
    if not _writes_gguf(made):
        raise ConfigurationError(f"'{method}' does not write GGUF; the GGUF export quantizes to one of "
                                 f"{', '.join(GGUF_TYPES)} (use `hanlin quantize --to {method}` on the merged folder)")
    return made


def quantize_in_place(gguf_file: Path, method: str, **options: Any) -> QuantizeReport:
    """Quantize an exported GGUF and put the result under the same name (a tuning run's ``model.gguf``); the input
    is replaced only once the quantized file is complete."""
    import os

    gguf_file = Path(gguf_file)
    staged = gguf_file.with_name(f".{gguf_file.stem}-{method}.gguf")
    given = {k: v for k, v in options.items() if v is not None}
    report = gguf_method(method).quantize(gguf_file, staged, calib=None, options=given)
    os.replace(staged, gguf_file)
    report.out = str(gguf_file)
    return report


def add_commands(cli: Any) -> None:
    import typer

    @cli.command("quantize")
    def quantize_cmd(
        model: str = typer.Argument(..., help="Model name, .gguf file, HF folder, or a `hanlin tune` output folder."),
        to: str = typer.Option(..., "--to", "-t", help="Method: q4_k_m, q5_k_m, q6_k, q8_0, q4_0 (GGUF) or another "
                                                      "registered one (`hanlin plugins`)."),
        out: Path = typer.Option(..., "--out", "-o", help="Output file (.gguf) or folder, per method."),
        calib: Path | None = typer.Option(None, "--calib", help="Local calibration file (.jsonl with text/messages "
                                                               "or .txt); never downloaded."),
        imatrix: Path | None = typer.Option(None, "--imatrix", help="GGUF: importance matrix computed from this "
                                                                   "calibration file (.jsonl/.txt; default: "
                                                                   "--calib). llama.cpp's imatrix files are not "
                                                                   "read."),
        eval_text: Path | None = typer.Option(None, "--eval-text", help="Text for the quality check (default: a "
                                                                       "held-out package description)."),
        check: bool = typer.Option(True, "--check/--no-check", help="Compare quantized vs source after."),
        max_increase: float | None = typer.Option(None, "--max-increase", help="Allowed relative degradation of "
                                                                            "the check's metric, per method (GGUF: "
                                                                            "q8_0 0.02 ... q4_k_m 0.20, q4_0 0.40)."),
        strict: bool = typer.Option(False, "--strict", help="Exit 1 when the check fails or a warning is raised."),
        threads: int | None = typer.Option(None, "--threads", help="CPU threads (default: up to 4)."),
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    ) -> None:
        """Quantize a model (or a tuned one) offline: GGUF types through llama.cpp's own quantizer, and any other
        registered method."""
        from hanlin.cli import fail
        from hanlin.errors import HanlinError

        try:
            report = quantize(model, to, out, calib=calib, imatrix=imatrix, eval_text=eval_text, check=check,
                              max_increase=max_increase, threads=threads)
        except HanlinError as exc:
            fail(str(exc))
        typer.echo(json.dumps(report.model_dump(), indent=2) if as_json else report.summary())
        if strict and report.flagged:
            typer.echo("error: the quantized model was flagged (see the warnings above); the file is kept at "
                       f"{report.out} for inspection", err=True)
            raise typer.Exit(1)

    from hanlin.cli_bench import bench_group

    bench = bench_group(cli)
    if bench is not None:
        _add_bench(bench, typer)


def _add_bench(bench: Any, typer: Any) -> None:
    from hanlin.cli_bench import print_tables

    @bench.command("quantize")
    def bench_quantize_cmd(
        model: str = typer.Option("smollm2", "--model", "-m", help="Model (HF folder, .gguf or name); a GGUF "
                                                                   "name is converted to an HF folder once."),
        types: str = typer.Option("q8_0,q4_k_m", "--types", help="Comma-separated GGUF types to compare with f16."),
        tokens: int = typer.Option(64, "--tokens", help="Decode tokens per speed run."),
        eval_chars: int = typer.Option(6000, "--eval-chars", help="Characters of held-out text for perplexity."),
        threads: int = typer.Option(2, "--threads"),
        rounds: int = typer.Option(3, "--rounds", help="Round-robin decode rounds (best kept)."),
        calib: Path | None = typer.Option(None, "--calib", help="Also quantize each type with an importance "
                                                               "matrix from this local file (+imatrix rows)."),
        as_json: bool = typer.Option(False, "--json", help="Print the table as JSON."),
    ) -> None:
        """GGUF f16 vs each type: size on disk, llama.cpp decode tok/s, perplexity on held-out text (same run)."""
        from hanlin.plugins.quantizers.bench import bench_quantize

        print_tables(lambda: bench_quantize(model, [t.strip() for t in types.split(",") if t.strip()],
                                            tokens=tokens, eval_chars=eval_chars, threads=threads, rounds=rounds,
                                            calib=calib), as_json)
