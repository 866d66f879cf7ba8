"""``hanlin bench quantize``: f16 GGUF vs llama.cpp's quantized types of the same model, measured in one run.

Columns: size on disk, CPU decode tokens/s on llama.cpp (batch 1, greedy, after a short prompt), and perplexity
on held-out text through llama.cpp (perplexity.py), each with its ratio to f16. The f16 file is exported from the
HF folder by gguf_export.py and every type is quantized from it by hanlin's GGUF quantizer, so the rows differ
only in the quantization. Decode speed is measured round-robin (every model once per round, best round kept) so
that a neighbour stealing the CPU for a while does not land on one row only. With ``calib``, each type is also
quantized with an importance matrix from that file (the "+imatrix" rows).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from hanlin.errors import ConfigurationError


def bench_quantize(model: str, types: list[str], *, tokens: int = 64, eval_chars: int = 6000, threads: int = 2,
                   rounds: int = 3, calib: Path | None = None) -> list[Any]:
    from hanlin.bench import BenchTable
    from hanlin.plugins.finetuners.gguf_export import export_gguf
    from hanlin.plugins.quantizers.calibration import held_out_text
    from hanlin.plugins.quantizers.gguf import FTYPES, GGUFQuantizer
    from hanlin.plugins.quantizers.perplexity import gguf_perplexity

    unknown = [t for t in types if t not in FTYPES or t == "f16"]
    if unknown or not types:
        raise ConfigurationError(f"--types: {', '.join(unknown) or '(none)'} not GGUF types to compare with f16; "
                                 f"pick from {', '.join(t for t in FTYPES if t != 'f16')}")
    folder, source_gguf = _hf_folder(model)
    label, text = held_out_text(eval_chars)
    with tempfile.TemporaryDirectory(prefix="hanlin-bench-quantize-") as tmp:
        files = {"f16": export_gguf(folder, Path(tmp) / "f16.gguf", outtype="f16", source_gguf=source_gguf)}
        notes: dict[str, str] = {}
        for name in types:
            for weighted in ([False, True] if calib else [False]):
                row = f"{name}+imatrix" if weighted else name
                options: dict[str, Any] = {"check": False, "threads": threads}
                if weighted:
                    options.update(imatrix=calib, imatrix_folder=folder)
                report = GGUFQuantizer(name).quantize(files["f16"], Path(tmp) / f"{row}.gguf", calib=None,
                                                      options=options)
                files[row] = Path(report.out)
                notes[row] = ", ".join(f"{k} {v}" for k, v in report.details["tensor_types"].items())
        speeds = _decode_speeds(files, tokens=tokens, threads=threads, rounds=rounds)
        ppl = {row: gguf_perplexity(path, text, threads=threads) for row, path in files.items()}
        sizes = {row: path.stat().st_size for row, path in files.items()}
    base = "f16"
    rows = [[row, f"{sizes[row] / 1e6:.1f}", f"{sizes[row] / sizes[base]:.2f}x", f"{speeds[row]:.1f}",
             f"{speeds[row] / speeds[base]:.2f}x", f"{ppl[row].value:.3f}", f"{ppl[row].value / ppl[base].value:.3f}x"]
            for row in files]
    table = BenchTable(
        title=f"GGUF types of {model} on llama.cpp ({threads} threads): vs f16, same run",
        columns=["type", "MB", "size vs f16", "decode tok/s", "speed vs f16", "perplexity", "ppl vs f16"],
        rows=rows,
        notes=[f"perplexity on {label}: {ppl[base].tokens} tokens, windows of 512",
               f"decode: {tokens} tokens after a short prompt, best of {rounds} round-robin rounds"]
              + [f"{row}: {types_}" for row, types_ in notes.items()],
    )
    return [table]


def _hf_folder(model: str) -> tuple[Path, Path | None]:
    """The HF folder to export f16 from, and the GGUF to copy the tokenizer from when the model came as one."""
    from hanlin.plugins.quantizers.cli import source_path

    path = source_path(model)
    if path.is_dir():
        return path, None
    from hanlin.runtimes.gguf_convert import convert_gguf

    return convert_gguf(path), path


def _decode_speeds(files: dict[str, Path], *, tokens: int, threads: int, rounds: int) -> dict[str, float]:
    import llama_cpp

    models = {row: llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=threads, verbose=False, seed=0)
              for row, path in files.items()}
    best = dict.fromkeys(files, 0.0)
    try:
        prompt = models["f16"].tokenize(b"The history of the printing press begins", add_bos=True)
        for _ in range(rounds):
            for row, llm in models.items():
                llm.reset()
                made, started = 0, 0.0
                for _token in llm.generate(prompt, temp=0.0, top_k=1):
                    if made == 0:
                        started = time.perf_counter()  # after the prompt and the first token
                    made += 1
                    if made > tokens:
                        break
                best[row] = max(best[row], tokens / (time.perf_counter() - started))
    finally:
        for llm in models.values():
            llm.close()
    return best
