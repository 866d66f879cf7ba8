"""GGUF quantization through llama.cpp's own quantizer (``llama_model_quantize`` over ctypes, no separate binary).

Steps, each recorded in the report:
1. Source. An HF folder (a downloaded model, or the ``merged/`` folder a tuning run writes) is exported as an f16
   GGUF first (finetuners/gguf_export.py); a GGUF file is read as it is. A source whose weights are already
   quantized (the shipped Q4_1/Q4_K_M models) can be requantized, with a warning: the errors of both steps add
   up, so quantize from full precision when you have it.
2. Importance matrix (optional): from a local calibration file (imatrix.py), handed to the quantizer.
3. Quantize. llama.cpp's log is captured, not printed: tensors that fell back to another type (k-quants need rows
   that are multiples of 256; SmolLM2's 576 are not) become per-layer notes and one summary line.
4. Guard rail: perplexity of source and output on held-out text (or ``eval_text``) through llama.cpp; a rise
   beyond ``max_increase`` fails the check (flagged report; ``--strict`` exits 1).

The output is written under a temporary name beside ``out`` and renamed only when complete.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import struct
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hanlin.errors import ConfigurationError, ModelError
from hanlin.plugins.quantizers.base import LayerNote, QualityCheck, QuantizeReport, size_on_disk

# hanlin's name -> llama.cpp's llama_ftype constant (the quantizer picks per-tensor types from it)
FTYPES = {
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "f16": "LLAMA_FTYPE_MOSTLY_F16",  # not registered as a method: the benchmark's baseline
}
# Allowed relative perplexity rise per type on the default check (512 tokens of held-out text). Set from
# SmolLM2-135M, the smallest model here and the one that degrades most (`hanlin bench quantize`, 2163 tokens):
# q8_0 +0.6%, q4_k_m +7.3% (+3.4% with an imatrix), q4_0 +31.5% (+12.4%); on the check's first 512 tokens
# q4_k_m measured +15.8%. The limits flag a file that is broken or far worse than its type should be, not the
# ordinary cost of 4 bits; pass --max-increase for a stricter gate.
MAX_INCREASE = {"q8_0": 0.02, "q6_k": 0.05, "q5_k_m": 0.10, "q4_k_m": 0.20, "q4_0": 0.40, "f16": 0.01}
# imatrix_folder: the HF folder to run the calibration text through when the source is a GGUF file exported from
# it (the benchmark, a tuning run), instead of converting the GGUF back to an HF folder
OPTIONS = ("imatrix", "imatrix_folder", "eval_text", "check", "max_increase", "threads", "check_tokens",
           "tokenizer_gguf")
_FLOAT_TYPES = {"F32", "F16", "BF16"}
_FALLBACK = re.compile(r"^warning: (\S+)\s+- ncols\s+(\d+) not divisible by (\d+) \(required for type\s+(\w+)\)"
                       r" -> falling back to\s+(\w+)")


class GGUFQuantizer:
    """One llama.cpp type (``q4_k_m``...), as the ``Quantizer`` protocol of base.py."""

    def __init__(self, name: str) -> None:
        if name not in FTYPES:
            raise ConfigurationError(f"unknown GGUF type {name!r}; known: {', '.join(FTYPES)}")
        self.name = name

    def quantize(self, source: Path, out: Path, *, calib: Path | None, options: dict[str, Any]) -> QuantizeReport:
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise ConfigurationError(f"GGUF quantization takes no option {', '.join(map(repr, unknown))}; its "
                                     f"options are {', '.join(OPTIONS)}")
        source, out = Path(source), _out_path(Path(out), Path(source), self.name)
        started = time.perf_counter()
        threads = options.get("threads") or min(4, os.cpu_count() or 1)
        report = QuantizeReport(method=self.name, source=str(source), out=str(out), size_bytes_in=size_on_disk(source),
                                size_bytes_out=0, seconds=0.0)
        imatrix_file = options.get("imatrix") or calib
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
            base = self._base_gguf(source, Path(tmp), options.get("tokenizer_gguf"), report)
            imatrix = None
            if imatrix_file is not None:
                imatrix = self._imatrix(Path(options.get("imatrix_folder") or source), Path(imatrix_file), threads,
                                        report)
            partial = Path(tmp) / out.name
            self._run(base, partial, threads, imatrix, report)
            if options.get("check", True):
                report.checks.append(self._check(base, partial, options, threads))
            os.replace(partial, out)
        report.size_bytes_out = out.stat().st_size
        report.details["tensor_types"] = tensor_types(out)
        report.seconds = round(time.perf_counter() - started, 2)
        return report

    # ---- steps ----------------------------------------------------------------------------------------
    def _base_gguf(self, source: Path, tmp: Path, tokenizer_gguf: Any, report: QuantizeReport) -> Path:
        if source.is_dir():
            from hanlin.plugins.finetuners.gguf_export import export_gguf

            base = export_gguf(source, tmp / "f16.gguf", outtype="f16", source_gguf=tokenizer_gguf)
            report.notes.append("exported the HF folder as an f16 GGUF first (the quantizer's input)")
            return base
        if source.suffix != ".gguf" or not _is_gguf(source):
            raise ConfigurationError(f"{source} is not a GGUF file or an HF folder; pass a .gguf file, an HF "
                                     "folder with config.json, or a `hanlin tune` output folder")
        kinds = tensor_types(source)
        quantized = sorted(k for k in kinds if k not in _FLOAT_TYPES)
        if quantized:
            report.warnings.append(
                f"the source is already quantized ({', '.join(quantized)}): requantizing adds a second rounding "
                "error on top of the first; quantize from the HF folder or an f16/f32 GGUF when you have one")
        return source

    def _imatrix(self, source: Path, calib: Path, threads: int, report: QuantizeReport) -> Any:
        from hanlin.plugins.quantizers.imatrix import compute_imatrix

        if calib.suffix in (".gguf", ".dat"):
            raise ConfigurationError(
                f"{calib}: reading an importance matrix made by llama.cpp's imatrix tool is not supported; pass "
                "the calibration text itself (.jsonl or .txt) and hanlin computes the matrix")
        folder = source
        if not source.is_dir():
            from hanlin.runtimes.gguf_convert import convert_gguf

            folder = convert_gguf(source)
            report.notes.append(f"converted the GGUF to an HF folder for calibration ({folder})")
        matrix = compute_imatrix(folder, calib, threads=threads)
        report.calibration = str(calib)
        report.layers.extend(matrix.notes)
        report.notes.append(f"importance matrix from {calib}: {matrix.samples} samples, {matrix.tokens} tokens, "
                            f"{len(matrix.values)} tensors")
        return matrix

    def _run(self, base: Path, partial: Path, threads: int, imatrix: Any, report: QuantizeReport) -> None:
        import llama_cpp

        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, FTYPES[self.name])
        params.nthread = threads
        params.allow_requantize = any(w.startswith("the source is already quantized") for w in report.warnings)
        keep: list[Any] = []
        if imatrix is not None:
            entries, keep = imatrix.as_ctypes()
            params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
        with captured_log() as lines:
            status = llama_cpp.llama_model_quantize(str(base).encode(), str(partial).encode(), ctypes.byref(params))
        del keep
        if status != 0 or not partial.is_file():
            tail = " | ".join(line.strip() for line in lines[-5:] if line.strip())
            raise ModelError(f"llama.cpp's quantizer failed on {base} (status {status}): {tail or 'no log'}")
        fallbacks = Counter()
        for line in lines:
            if match := _FALLBACK.match(line.strip()):
                name, cols, multiple, wanted, used = match.groups()
                fallbacks[(wanted, used, cols, multiple)] += 1
                report.layers.append(LayerNote(layer=name, message=(
                    f"{cols} columns are not a multiple of {multiple}: {used} instead of {wanted}")))
        for (wanted, used, cols, multiple), n in sorted(fallbacks.items()):
            report.notes.append(f"{n} tensors use {used} instead of {wanted} (rows of {cols} are not a multiple of "
                                f"{multiple}, as {wanted} needs)")
        if imatrix is not None:
            used = sum(1 for line in lines if "using custom imatrix" in line.lower() or "imatrix" in line.lower())
            report.details["imatrix_log_lines"] = used

    def _check(self, base: Path, quantized: Path, options: dict[str, Any], threads: int) -> QualityCheck:
        from hanlin.plugins.quantizers.calibration import calibration_text, held_out_text
        from hanlin.plugins.quantizers.perplexity import gguf_perplexity

        if options.get("eval_text"):
            label, text = str(options["eval_text"]), calibration_text(options["eval_text"])
        else:
            label, text = held_out_text()
        max_tokens = int(options.get("check_tokens") or 512)
        before = gguf_perplexity(base, text, threads=threads, max_tokens=max_tokens)
        after = gguf_perplexity(quantized, text, threads=threads, max_tokens=max_tokens)
        limit = options.get("max_increase")
        return QualityCheck(metric="perplexity", text=label, tokens=after.tokens, source=round(before.value, 4),
                            quantized=round(after.value, 4), engine="llama.cpp",
                            max_increase=float(limit if limit is not None else MAX_INCREASE[self.name]))


# ---- helpers ----------------------------------------------------------------------------------------------
def _out_path(out: Path, source: Path, name: str) -> Path:
    if out.is_dir():
        out = out / f"{(source.stem if source.is_file() else source.name)}-{name}.gguf"
    elif out.suffix != ".gguf":
        raise ConfigurationError(f"--out {out}: a GGUF type writes one file; name it *.gguf or pass a folder")
    if out.resolve() == source.resolve():
        raise ConfigurationError(f"--out {out} is the source model itself; write the quantized file elsewhere")
    return out


def _is_gguf(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(4) == b"GGUF"


def tensor_types(path: Path) -> dict[str, int]:
    """How many tensors of each ggml type a GGUF file holds (``{"Q5_0": 150, "F32": 61, ...}``).

    Reads the header only, skipping metadata values unparsed: gguf.GGUFReader decodes every field, which costs
    seconds on a 49k-token vocabulary."""
    import gguf

    with path.open("rb") as fh:
        magic, _version, n_tensors, n_kv = struct.unpack("<4sIQQ", fh.read(24))
        if magic != b"GGUF":
            raise ConfigurationError(f"{path} is not a GGUF file (it starts with {magic!r})")
        for _ in range(n_kv):
            _skip_string(fh)
            (kind,) = struct.unpack("<I", fh.read(4))
            _skip_value(fh, kind)
        counts: Counter[str] = Counter()
        for _ in range(n_tensors):
            _skip_string(fh)
            (dims,) = struct.unpack("<I", fh.read(4))
            fh.seek(8 * dims, 1)
            (kind,) = struct.unpack("<I", fh.read(4))
            fh.seek(8, 1)  # data offset
            counts[gguf.GGMLQuantizationType(kind).name] += 1
    return dict(sorted(counts.items()))


# GGUF metadata value types -> fixed byte sizes (8: string and 9: array are variable)
_VALUE_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def _skip_string(fh: Any) -> None:
    (length,) = struct.unpack("<Q", fh.read(8))
    fh.seek(length, 1)


def _skip_value(fh: Any, kind: int) -> None:
    if kind == 8:
        _skip_string(fh)
    elif kind == 9:
        item, count = struct.unpack("<IQ", fh.read(12))
        if item in _VALUE_SIZES:
            fh.seek(_VALUE_SIZES[item] * count, 1)
        else:
            for _ in range(count):
                _skip_value(fh, item)
    elif kind in _VALUE_SIZES:
        fh.seek(_VALUE_SIZES[kind], 1)
    else:
        raise ConfigurationError(f"unknown GGUF metadata value type {kind}: the file is damaged or newer than hanlin")


@contextlib.contextmanager
def captured_log() -> Iterator[list[str]]:
    """llama.cpp's log lines while the block runs, instead of on stderr (the quantizer logs every tensor)."""
    import llama_cpp

    lines: list[str] = []
    pending: list[str] = []

    @llama_cpp.llama_log_callback
    def collect(level: int, text: bytes, user_data: Any) -> None:
        pending.append(text.decode("utf-8", "replace"))
        if pending[-1].endswith("\n"):
            lines.append("".join(pending))
            pending.clear()

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        yield lines
    finally:
        from llama_cpp import _logger

        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
        if pending:
            lines.append("".join(pending))
