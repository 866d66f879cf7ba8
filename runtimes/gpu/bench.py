"""`hanlin bench throughput` and `hanlin bench kernels`: the engine and its kernels beside their baselines.

Throughput: a synthetic ShareGPT-like workload (prompt and output lengths from a fixed-seed log-normal, clipped),
all requests submitted at once (or at a Poisson rate), run through hanlin's engine and through transformers'
batched ``generate`` (left-padded batches, every request decoding to the batch's longest output, which is what a
plain framework loop pays; only each request's own tokens are counted). Kernels: each Triton kernel beside its
torch reference on the device, with achieved GB/s against the device's measured copy bandwidth.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hanlin.bench import BenchTable


def workload(n: int, prompt_range: tuple[int, int], output_range: tuple[int, int], vocab: int,
             seed: int = 0) -> list[tuple[list[int], int]]:
    """(prompt tokens, output length) pairs; lengths log-normal between the bounds, like chat traffic."""
    rng = random.Random(seed)

    def draw(lo: int, hi: int) -> int:
        mu, sigma = math.log(math.sqrt(lo * hi)), math.log(hi / lo) / 4
        return int(min(max(rng.lognormvariate(mu, sigma), lo), hi))

    return [([rng.randrange(10, vocab - 10) for _ in range(draw(*prompt_range))], draw(*output_range)) for _ in range(n)]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)] if ordered else float("nan")


def run_engine(engine: Any, jobs: list[tuple[list[int], int]], rate: float | None = None, seed: int = 0) -> dict[str, float]:
    from hanlin.runtimes.gpu.sequence import SamplingParams

    rng = random.Random(seed)
    arrivals, t = [], 0.0
    for _ in jobs:
        arrivals.append(t)
        t += rng.expovariate(rate) if rate else 0.0
    start = time.perf_counter()
    pending = list(range(len(jobs)))
    ids: dict[int, int] = {}
    first: dict[int, float] = {}
    done: dict[int, float] = {}
    counts: dict[int, int] = {}
    while pending or engine.has_work():
        now = time.perf_counter() - start
        while pending and arrivals[pending[0]] <= now:
            i = pending.pop(0)
            prompt, out = jobs[i]
            ids[engine.add(prompt, SamplingParams(max_tokens=out, ignore_eos=True))] = i
        if not engine.has_work():
            time.sleep(max(arrivals[pending[0]] - now, 0)) if pending else None
            continue
        for o in engine.step():
            i = ids.get(o.seq_id)
            if i is None or o.token is None:
                continue
            stamp = time.perf_counter() - start
            first.setdefault(i, stamp - arrivals[i])
            counts[i] = counts.get(i, 0) + 1
            if o.finished:
                done[i] = stamp - arrivals[i]
    wall = time.perf_counter() - start
    tpot = [(done[i] - first[i]) / max(counts[i] - 1, 1) for i in done]
    return {"wall": wall, "requests/s": len(done) / wall, "output tok/s": sum(counts.values()) / wall,
            "ttft p50": _pct(list(first.values()), 0.5), "ttft p99": _pct(list(first.values()), 0.99),
            "tpot p50": _pct(tpot, 0.5), "tpot p99": _pct(tpot, 0.99)}


def run_transformers(folder: Path, jobs: list[tuple[list[int], int]], device: str, dtype: Any, batch: int) -> dict[str, float]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype).to(device).eval()
    pad = 0
    start = time.perf_counter()
    for at in range(0, len(jobs), batch):
        group = jobs[at : at + batch]
        width = max(len(p) for p, _ in group)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p, _ in group], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p, _ in group], device=device)
        longest = max(o for _, o in group)
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=longest, min_new_tokens=longest,
                           do_sample=False, pad_token_id=pad)
    wall = time.perf_counter() - start
    useful = sum(o for _, o in jobs)
    return {"wall": wall, "requests/s": len(jobs) / wall, "output tok/s": useful / wall}


def bench_throughput(model: str = "smollm2-135m-instruct", requests: int | None = None, rate: float | None = None,
                     cache_dir: str | None = None, **_: Any) -> BenchTable:
    import torch

    from hanlin import resolve_model
    from hanlin.runtimes.gpu.engine import Engine
    from hanlin.runtimes.transformers.convert import convert_gguf

    on_gpu = torch.cuda.is_available()
    spec = resolve_model(model)
    path = spec.locate()
    folder = convert_gguf(Path(path), Path(cache_dir) if cache_dir else None) if str(path).endswith(".gguf") else Path(path)
    n = requests or (256 if on_gpu else 8)
    prompt_range, output_range = ((100, 1024), (100, 1024)) if on_gpu else ((16, 96), (8, 32))
    engine = Engine(folder)
    jobs = workload(n, prompt_range, output_range, engine.config.vocab_size)
    ours = run_engine(engine, jobs, rate)
    device, dtype = ("cuda", engine.dtype) if on_gpu else ("cpu", torch.float32)
    base = run_transformers(folder, jobs, device, dtype, batch=min(n, 64 if on_gpu else 8))
    table = BenchTable(
        title=f"throughput: {spec.name}, {n} requests {'at once' if not rate else f'at {rate}/s'}, prompts "
              f"{prompt_range[0]}-{prompt_range[1]}, outputs {output_range[0]}-{output_range[1]} tokens, "
              f"{torch.cuda.get_device_name() if on_gpu else 'CPU (torch reference kernels)'}",
        columns=["runtime", "requests/s", "output tok/s", "ttft p50 s", "ttft p99 s", "tpot p50 s", "tpot p99 s"],
        target=">= 10 x the transformers baseline on 256 concurrent requests with a ~0.5B model (on an H100)",
    )
    table.rows.append(["hanlin gpu engine", ours["requests/s"], ours["output tok/s"], ours["ttft p50"],
                       ours["ttft p99"], ours["tpot p50"], ours["tpot p99"]])
    table.rows.append(["transformers generate", base["requests/s"], base["output tok/s"], "-", "-", "-", "-"])
    ratio = ours["output tok/s"] / base["output tok/s"]
    table.notes.append(f"ratio hanlin / transformers (output tok/s): {ratio:.2f}; preemptions: {engine.scheduler.preemptions}")
    table.met = (ratio >= 10) if on_gpu and n >= 256 else None
    return table


def bench_kernels(**_: Any) -> BenchTable:
    import torch

    table = BenchTable(title="kernels: Triton vs torch reference", columns=["kernel", "shape", "triton ms", "torch ms",
                       "speedup", "triton GB/s", "% of copy bandwidth"])
    if not torch.cuda.is_available():
        table.notes.append("needs a CUDA GPU: on CPU the kernels run only under the Triton interpreter, whose "
                           "timings mean nothing (tests/test_kernels.py checks their results there)")
        return table
    from hanlin.kernels.add_rmsnorm import add_rmsnorm, add_rmsnorm_ref
    from hanlin.kernels.rope import rope_, rope_cache, rope_ref
    from hanlin.kernels.silu_mul import silu_mul, silu_mul_ref

    dev, dt = "cuda", torch.bfloat16

    def timed(fn: Any) -> float:
        fn()
        torch.cuda.synchronize()
        reps, start = 50, time.perf_counter()
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - start) / reps * 1e3

    big = torch.empty(1 << 28, dtype=torch.uint8, device=dev)
    copy_gbs = 2 * big.numel() / timed(lambda: big.clone()) / 1e6
    t, h = 4096, 4096
    x, r, w = torch.randn(t, h, device=dev, dtype=dt), torch.randn(t, h, device=dev, dtype=dt), torch.randn(h, device=dev, dtype=dt)
    cases = [
        ("add_rmsnorm", f"{t}x{h}", lambda: add_rmsnorm(x, w, r), lambda: add_rmsnorm_ref(x, w, r), 4 * t * h * 2),
        ("silu_mul", f"{t}x{2 * 11008}", None, None, 0),
        ("rope", f"{t}x32x128", None, None, 0),
    ]
    gate = torch.randn(t, 2 * 11008, device=dev, dtype=dt)
    cases[1] = ("silu_mul", cases[1][1], lambda: silu_mul(gate), lambda: silu_mul_ref(gate), 3 * t * 11008 * 2)
    q, k = torch.randn(t, 32, 128, device=dev, dtype=dt), torch.randn(t, 8, 128, device=dev, dtype=dt)
    cs, pos = rope_cache(t, 128, device=dev), torch.arange(t, device=dev)
    cases[2] = ("rope", cases[2][1], lambda: rope_(q, k, pos, cs), lambda: rope_ref(q, k, pos, cs), 2 * (q.numel() + k.numel()) * 2)
    for name, shape, ours, ref, nbytes in cases:
        a, b = timed(ours), timed(ref)
        gbs = nbytes / a / 1e6
        table.rows.append([name, shape, a, b, b / a, gbs, 100 * gbs / copy_gbs])
    table.notes.append(f"device {torch.cuda.get_device_name()}, measured copy bandwidth {copy_gbs:.0f} GB/s")
    return table


def run_all(suite: str = "throughput", **options: Any) -> Iterator[BenchTable]:
    if suite == "kernels":
        yield bench_kernels(**options)
    else:
        yield bench_throughput(**options)
