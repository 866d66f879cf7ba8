"""`hanlin bench quant-gpu`: what W4A16 and the int8 KV cache buy, each beside its baseline measured in the same run.

- ``w4a16``: batch-1 decode tok/s of the engine on int4 weights (round-to-nearest, group 128: the speed does not
  depend on how the scales were chosen) vs the same model in the engine's dtype. Decode at batch 1 reads every
  weight per token, so 4-bit weights can approach 4x fewer bytes (LMDeploy reports 2.4x over fp16).
- ``kv-int8``: throughput of many requests with ``kv_cache_dtype="int8"`` vs the float cache, both given the same
  cache memory (``--cache-memory``; a cache too small for the whole workload is what makes the cache's capacity
  the limit, as on a busy server).
- ``gemm``: the dequant-GEMM kernel vs ``torch.matmul`` on the float weight at decode shapes (M = 1 and 16).
- ``quality``: perplexity on held-out text (CPU, any machine): full precision vs KV int8 vs W4A16 RTN vs a given
  AWQ folder (``--awq DIR``).
"""

from __future__ import annotations

import random
import sys
import tempfile
from pathlib import Path
from typing import Any

from hanlin import ConfigurationError
from hanlin.bench import BenchTable
from hanlin.runtimes.gpu.bench import _hf_folder, _release, run_engine, workload

WHAT = ("w4a16", "kv-int8", "gemm", "quality")
GEMM_SHAPES = [(896, 4864), (4864, 896), (4096, 4096), (4096, 11008), (11008, 4096)]  # (K, N): Qwen2.5-0.5B, Llama-7B


def rtn_int4_folder(folder: Path, out: Path, group_size: int = 128) -> Path:
    """``folder`` with every decoder linear round-to-nearest int4 (the gpu runtime's W4A16 format)."""
    from safetensors.torch import load_file

    from hanlin.runtimes.gpu.model import _weight_files
    from hanlin.runtimes.gpu.quant_linear import pack_linears, write_int4_folder

    state: dict[str, Any] = {}
    for f in _weight_files(folder):
        state.update(load_file(str(f), device="cuda" if _cuda() else "cpu"))
    write_int4_folder(folder, out, pack_linears(state, group_size), group_size, hanlin={"method": "rtn"})
    return out


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def bench_w4a16(model: str, cache_dir: str | None = None, new_tokens: int | None = None, **_: Any) -> BenchTable:
    from hanlin.runtimes.gpu.bench_decode import measure_decode
    from hanlin.runtimes.gpu.engine import Engine
    from hanlin.runtimes.gpu.sequence import SamplingParams

    on_gpu = _cuda()
    new_tokens = new_tokens or (256 if on_gpu else 16)
    context = 512 if on_gpu else 32
    spec, folder = _hf_folder(model, cache_dir)
    rows, rates = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        w4 = rtn_int4_folder(folder, Path(tmp) / "w4")
        for label, path in (("bf16 weights" if on_gpu else "fp32 weights", folder), ("W4A16 (int4, group 128)", w4)):
            longest = context + new_tokens
            engine = Engine(path, num_blocks=-(-longest // 16) + 2, block_size=16, max_seqs=1, max_model_len=longest)
            rng = random.Random(0)
            vocab = engine.config.vocab_size
            engine.generate([[rng.randrange(10, vocab - 10) for _ in range(16)]],
                            SamplingParams(max_tokens=8, ignore_eos=True))  # warm-up: compile every kernel
            tok_s = measure_decode(engine, [rng.randrange(10, vocab - 10) for _ in range(context)], new_tokens)
            weights = _weight_bytes(engine.model.w)
            rows.append([label, weights / 1e6, tok_s])
            rates[label] = tok_s
            del engine
            _release()
    ratio = rows[1][2] / rows[0][2]
    table = BenchTable(
        title=f"W4A16 batch-1 decode: hanlin gpu engine, {spec.name}, {context} prompt + {new_tokens} new tokens; "
              f"{_device_name()}",
        columns=["weights", "weights MB in memory", "decode tok/s"], rows=rows,
        target=">= 2x the bf16 engine's batch-1 decode tok/s (LMDeploy reports 2.4x), on a GPU",
    )
    table.notes.append(f"ratio W4A16 / {rows[0][0]}: {ratio:.2f}")
    table.met = ratio >= 2 if on_gpu else None
    if not on_gpu:
        table.notes.append("no GPU: torch reference kernels on CPU dequantize every weight each step; the target is "
                           "for the GPU's fused kernel and is unmeasured here")
    return table


def _weight_bytes(w: dict[str, Any]) -> int:
    """Bytes the engine holds for weights: int4 linears' packed tensors, float tensors once (a tied head shares)."""
    from hanlin.runtimes.gpu.quant_linear import Int4Weight

    floats = {t.data_ptr(): t.nbytes for t in w.values() if not isinstance(t, Int4Weight)}
    return sum(floats.values()) + sum(t.nbytes() for t in w.values() if isinstance(t, Int4Weight))


def bench_kv_int8(model: str, cache_dir: str | None = None, requests: int | None = None,
                  cache_memory: str | None = None, **_: Any) -> BenchTable:
    from hanlin.runtimes.gpu.engine import Engine

    on_gpu = _cuda()
    n = requests or (256 if on_gpu else 8)
    memory = cache_memory or ("2GiB" if on_gpu else "16MiB")
    prompts, outputs = ((100, 512), (100, 512)) if on_gpu else ((16, 48), (8, 16))
    spec, folder = _hf_folder(model, cache_dir)
    rows, tok_s = [], []
    for kv in ("auto", "int8"):
        engine = Engine(folder, cache_memory=memory, kv_cache_dtype=kv, max_model_len=prompts[1] + outputs[1],
                        max_seqs=min(n, 256))
        jobs = workload(n, prompts, outputs, engine.config.vocab_size - 10, 0)
        stats = run_engine(engine, jobs)
        label = f"KV {str(engine.dtype).removeprefix('torch.')}" if kv == "auto" else "KV int8"
        rows.append([label, engine.blocks.num_blocks * engine.blocks.block_size, engine.scheduler.preemptions,
                     stats["requests/s"], stats["output tok/s"]])
        tok_s.append(stats["output tok/s"])
        del engine
        _release()
    ratio = tok_s[1] / tok_s[0]
    table = BenchTable(
        title=f"KV int8 throughput: hanlin gpu engine, {spec.name}, {n} requests at once, prompts "
              f"{prompts[0]}-{prompts[1]}, outputs {outputs[0]}-{outputs[1]} tokens, {memory} of KV cache; "
              f"{_device_name()}",
        columns=["cache", "tokens the cache holds", "preemptions", "requests/s", "output tok/s"], rows=rows,
        target=">= 1.3x the float cache's output tok/s at the same cache memory (LMDeploy: 1.3-1.4x), on a GPU",
    )
    table.notes.append(f"ratio KV int8 / {rows[0][0]} (output tok/s): {ratio:.2f}")
    table.met = ratio >= 1.3 if on_gpu else None
    if not on_gpu:
        table.notes.append("no GPU: CPU numbers with the torch reference kernels; the target is unmeasured")
    return table


def bench_dequant_gemm(smoke: bool = False, **_: Any) -> BenchTable:
    import torch

    device = torch.device("cuda" if _cuda() else "cpu")
    if device.type == "cpu" and not smoke:
        raise ConfigurationError("bench quant-gpu --what gemm needs a GPU (or --smoke: tiny shapes under the Triton "
                                 "interpreter, where the timings mean nothing)")
    if device.type == "cpu":
        import os

        if os.environ.get("TRITON_INTERPRET") != "1" and "hanlin.kernels.dequant_gemm" in sys.modules:
            raise ConfigurationError("the dequant-GEMM kernel was imported before TRITON_INTERPRET=1 was set; set it "
                                     "in the environment before starting Python")
        os.environ["TRITON_INTERPRET"] = "1"
    from hanlin.kernels import TOLERANCES
    from hanlin.kernels.dequant_gemm import dequant_gemm, dequant_gemm_ref, dequantize_int4, quantize_int4
    from hanlin.runtimes.gpu.bench_kernels import median_ms

    dtype = torch.bfloat16
    shapes = [(256, 128)] if smoke else GEMM_SHAPES
    table = BenchTable(
        title=f"dequant-GEMM: int4 (group 128) x bf16 vs torch.matmul on the bf16 weight; {_device_name()}",
        columns=["M", "K", "N", "matmul ms", "dequant-GEMM ms", "speedup", "int4 GB/s"],
        target="faster than bf16 torch.matmul at batch-1 decode shapes (M = 1), on a GPU",
    )
    g = torch.Generator().manual_seed(0)
    wins = []
    for k, n in shapes:
        w = (torch.randn(n, k, generator=g) * 0.02).to(device)
        qweight, scales, zeros = quantize_int4(w, 128)
        scales = scales.to(dtype)
        wf = dequantize_int4(qweight, scales, zeros, k, 128, dtype)
        for m in (1, 16):
            x = torch.randn(m, k, generator=g).to(device=device, dtype=dtype)
            out, ref = dequant_gemm(x, qweight, scales, zeros, 128), dequant_gemm_ref(x, qweight, scales, zeros, 128)
            atol, rtol = TOLERANCES["bfloat16"]
            scale = ref.float().abs().max()
            torch.testing.assert_close(out.float() / scale, ref.float() / scale, atol=atol, rtol=rtol)
            base = median_ms(lambda: x @ wf.T, device, reps=5 if smoke else 50)
            ours = median_ms(lambda: dequant_gemm(x, qweight, scales, zeros, 128), device, reps=5 if smoke else 50)
            moved = qweight.nbytes + scales.nbytes + zeros.nbytes + x.nbytes + m * n * 2
            table.rows.append([m, k, n, base, ours, base / ours, moved / (ours / 1e3) / 1e9])
            if m == 1:
                wins.append(base / ours)
    table.notes.append(f"M = 1 speedup over matmul: min {min(wins):.2f}, max {max(wins):.2f}")
    table.met = all(r > 1 for r in wins) if device.type == "cuda" else None
    if device.type == "cpu":
        table.notes.append("no GPU: the interpreter's timings mean nothing; only the results were checked")
    return table


def bench_quality(model: str, cache_dir: str | None = None, awq: str | None = None, text: str | None = None,
                  max_tokens: int = 1536, **_: Any) -> BenchTable:
    """Perplexity on held-out text through the engine (fp32, torch reference ops): full precision, KV int8, W4A16
    round-to-nearest and, given ``awq`` (a ``hanlin quantize --to awq-w4`` folder of this model), W4A16 AWQ."""
    import importlib.metadata

    from hanlin.runtimes.gpu.perplexity import engine_perplexity

    spec, folder = _hf_folder(model, cache_dir)
    if text:
        label, body = text, Path(text).read_text()
    else:  # the quantizers' default held-out text: never calibration data unless the user chose it
        meta = importlib.metadata.metadata("pydantic")
        label, body = f"pydantic {meta['Version']} METADATA", (meta.get_payload() or "")[:6000]  # type: ignore[attr-defined]
    cpu = {"kernels": "torch", "dtype": "float32", "device": "cpu", "max_tokens": max_tokens}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = [("fp32 weights, fp32 KV", folder, {}), ("KV int8", folder, {"kv_cache_dtype": "int8"}),
                ("W4A16 RTN (group 128)", rtn_int4_folder(folder, Path(tmp) / "rtn"), {})]
        if awq:
            runs.append(("W4A16 AWQ (group 128)", Path(awq), {}))
        base = None
        for name, path, extra in runs:
            ppl, tokens = engine_perplexity(path, body, **cpu, **extra)
            base = base or ppl
            rows.append([name, tokens, ppl, ppl / base])
    return BenchTable(
        title=f"quality: perplexity through the hanlin gpu engine (CPU, fp32, torch reference ops), {spec.name}, "
              f"held-out {label}",
        columns=["configuration", "scored tokens", "perplexity", "ratio to full precision"], rows=rows,
        notes=["windows of 256 tokens, each from an empty cache; the same tokens for every row"],
    )


def _device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"


def run_quant(what: str = "w4a16,kv-int8,gemm", **options: Any) -> Any:
    names = [w.strip() for w in what.split(",") if w.strip()]
    bad = [w for w in names if w not in WHAT]
    if bad or not names:
        raise ConfigurationError(f"unknown --what {', '.join(bad) or '(none)'}; use a comma-separated list of "
                                 f"{', '.join(WHAT)}")
    for name in names:
        yield {"w4a16": bench_w4a16, "kv-int8": bench_kv_int8, "gemm": bench_dequant_gemm,
               "quality": bench_quality}[name](**options)
