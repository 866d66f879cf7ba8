"""An importance matrix for llama.cpp's quantizer, computed from a local calibration file.

What llama.cpp wants: for each weight matrix, the mean over calibration tokens of the squared input activation of
each input column (``llama_model_imatrix_data``: tensor name, one float per column). Its quantizer then weighs
each column's rounding error by that importance. llama-cpp-python exposes the quantizer's ``imatrix`` field but
not llama.cpp's ``imatrix`` tool (it would need the ggml tensor layout from inside an eval callback), so the
statistics are collected here with torch forward hooks on the HF model's linear layers: the same quantity, from
the same weights (a GGUF source is converted to an HF folder once, runtimes/gguf_convert.py). Like llama.cpp's
tool, the output head is left out by default.

Guard rail: a NaN or inf in a layer's statistics (a broken fine-tune, an overflow) is reported by the layer's name
and that layer gets no importance (plain quantization) instead of poisoning the file.
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hanlin.plugins.quantizers.base import LayerNote
from hanlin.plugins.quantizers.calibration import load_calibration


@dataclass(slots=True)
class ImportanceMatrix:
    """Per GGUF tensor name: mean squared input activation per input column; plus how it was made."""

    values: dict[str, list[float]]
    tokens: int
    samples: int
    notes: list[LayerNote] = field(default_factory=list)

    def as_ctypes(self) -> tuple[Any, list[Any]]:
        """A NULL-terminated ``llama_model_imatrix_data`` array, and the buffers that must outlive the call."""
        import llama_cpp

        keep: list[Any] = []
        entries = (llama_cpp.llama_model_imatrix_data * (len(self.values) + 1))()
        for i, (name, column) in enumerate(sorted(self.values.items())):
            data = (ctypes.c_float * len(column))(*column)
            raw = name.encode()
            keep += [data, raw]
            entries[i].name = raw
            entries[i].data = ctypes.cast(data, ctypes.POINTER(ctypes.c_float))
            entries[i].size = len(column)
        entries[len(self.values)].name = None  # terminator
        keep.append(entries)
        return entries, keep


def compute_imatrix(hf_folder: Path, calibration: Path, *, max_samples: int = 128, max_length: int = 512,
                    threads: int | None = None, include_output: bool = False) -> ImportanceMatrix:
    """Run the calibration samples through the HF model and collect each linear layer's input statistics.

    Remembered for the life of the process per (folder, calibration file and its mtime, settings): quantizing one
    model to several types computes the matrix once."""
    stamp = [(p, p.stat().st_mtime_ns) for p in (Path(calibration), *sorted(Path(hf_folder).glob("*.safetensors")))]
    key = (str(Path(hf_folder).resolve()), tuple(stamp), max_samples, max_length, include_output)
    if key not in _MEMO:
        _MEMO[key] = _compute(Path(hf_folder), Path(calibration), max_samples, max_length, threads, include_output)
    return _MEMO[key]


_MEMO: dict[tuple[object, ...], ImportanceMatrix] = {}


def _compute(hf_folder: Path, calibration: Path, max_samples: int, max_length: int, threads: int | None,
             include_output: bool) -> ImportanceMatrix:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hanlin.plugins.finetuners.gguf_export import gguf_tensor_name

    samples = load_calibration(calibration, limit=max_samples)
    if threads:
        torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(str(hf_folder), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(hf_folder), dtype=torch.float32, local_files_only=True)
    model.eval()
    sums: dict[str, Any] = {}
    counts: dict[str, int] = {}
    handles = []
    for module_name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        name = gguf_tensor_name(f"{module_name}.weight")
        if name is None or (name == "output.weight" and not include_output):
            continue
        handles.append(module.register_forward_hook(_collector(name, sums, counts)))
    tokens = 0
    try:
        with torch.no_grad():
            for sample in samples:
                ids = _ids(tokenizer, sample, max_length)
                if len(ids) < 2:
                    continue
                model(input_ids=torch.tensor([ids]))
                tokens += len(ids)
    finally:
        for handle in handles:
            handle.remove()
    values, notes = {}, []
    for name, total in sums.items():
        column = (total / max(counts[name], 1)).tolist()
        bad = sum(1 for v in column if not math.isfinite(v))
        if bad:
            notes.append(LayerNote(layer=name, level="warning", message=(
                f"{bad} of {len(column)} importance values are NaN/inf (its inputs overflowed on the calibration "
                "text); this tensor was quantized without an importance matrix")))
            continue
        values[name] = column
    return ImportanceMatrix(values, tokens, len(samples), notes)


def _collector(name: str, sums: dict[str, Any], counts: dict[str, int]) -> Any:
    def hook(_module: Any, inputs: tuple[Any, ...], _output: Any) -> None:
        x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
        squared = (x * x).sum(dim=0)
        sums[name] = squared if name not in sums else sums[name] + squared
        counts[name] = counts.get(name, 0) + x.shape[0]

    return hook


def _ids(tokenizer: Any, sample: Any, max_length: int) -> list[int]:
    if sample.messages and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(list(sample.messages), tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(sample.text)["input_ids"]
    return list(ids)[:max_length]
