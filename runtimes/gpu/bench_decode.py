"""Batch-1 decode of the gpu engine against the memory-bandwidth bound.

One request alone is memory-bound: each token reads every weight once plus the KV cache so far, so the measured
device bandwidth divided by those bytes is the fastest it could go. The table prints the engine's decode tokens/s
beside that bound.
"""

from __future__ import annotations

import random
import time
from typing import Any

from hanlin import ConfigurationError
from hanlin.bench import BenchTable
from hanlin.runtimes.gpu.bench import _hf_folder, _release


def weight_bytes_per_token(engine: Any) -> int:
    """Bytes of weights one decode token reads: every tensor the forward uses, once. A tied LM head shares the
    embedding's storage and is counted once, as the LM head read; an untied embedding table is only indexed, so it
    costs one row."""
    from hanlin.runtimes.gpu.quant_linear import Int4Weight

    w = engine.model.w
    seen: dict[tuple[int, int], int] = {}
    for name, t in w.items():
        if isinstance(t, Int4Weight):  # a W4A16 linear: its packed codes, scales and zero points
            seen[(id(t), 0)] = t.nbytes()
        elif name != "embed":
            seen.setdefault((t.data_ptr(), t.nbytes), t.nbytes)
    embed = w["embed"]
    tied = (embed.data_ptr(), embed.nbytes) in seen
    return sum(seen.values()) + (0 if tied else embed[0].nbytes)


def kv_bytes_per_token(config: Any, context: float, itemsize: int) -> float:
    """Bytes of KV cache one decode token reads at ``context`` tokens: keys and values of every layer, a
    sliding-window layer only its window."""
    per_position = 2 * config.num_kv_heads * config.head_dim * itemsize
    return sum(per_position * (min(context, config.sliding_window) if sliding and config.sliding_window else context)
               for sliding in config.sliding_layers)


def measure_decode(engine: Any, prompt: list[int], new_tokens: int) -> float:
    """Decode tokens/s of one request alone: from its first token (the prefill's) to its last."""
    from hanlin.runtimes.gpu.sequence import SamplingParams

    seq = engine.add(prompt, SamplingParams(max_tokens=new_tokens, ignore_eos=True))
    stamps = []
    while engine.has_work():
        for o in engine.step():  # the sampled token is read on the host: each stamp is after the step finished
            if o.seq_id == seq and o.token is not None:
                stamps.append(time.perf_counter())
    if len(stamps) < 2:
        raise ConfigurationError(f"decode needs at least 2 new tokens to time, got {new_tokens}")
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def bench_decode(model: str = "smollm2-135m-instruct", cache_dir: str | None = None, context: int | None = None,
                 new_tokens: int | None = None, seed: int = 0, **_: Any) -> BenchTable:
    """Batch-1 decode of the engine as a fraction of the bandwidth bound (weights + KV per token / bandwidth)."""
    import torch

    from hanlin.runtimes.gpu.bench_kernels import copy_bandwidth
    from hanlin.runtimes.gpu.engine import Engine

    on_gpu = torch.cuda.is_available()
    context = context or (1024 if on_gpu else 64)
    new_tokens = new_tokens or (256 if on_gpu else 32)
    spec, folder = _hf_folder(model, cache_dir)
    bs = 16
    # a cache just large enough (+ the CUDA-graph scratch block), graphs only for the one batch size used
    # and the decode grid sized for this request (and the 16 + 8 tokens of the warm-up), not the model's context
    longest = max(context + new_tokens, 16 + 8)
    engine = Engine(folder, num_blocks=-(-longest // bs) + 2, block_size=bs, max_seqs=1, max_model_len=longest)
    rng = random.Random(seed)
    vocab = engine.config.vocab_size
    engine.generate([[rng.randrange(10, vocab - 10) for _ in range(16)]], _greedy(8))  # warm up every code path
    tok_s = measure_decode(engine, [rng.randrange(10, vocab - 10) for _ in range(context)], new_tokens)
    mean_context = context + new_tokens / 2  # the step making token j (2..new) attends to context + j - 1 tokens
    weights = weight_bytes_per_token(engine)
    kv = kv_bytes_per_token(engine.config, mean_context, engine.dtype.itemsize)
    bandwidth = copy_bandwidth(engine.device)
    bound = bandwidth / (weights + kv)
    kernels = "Triton kernels" if engine.model.ops.triton else "torch reference kernels"
    graphs = engine.graphs is not None and engine.graphs.captured
    table = BenchTable(
        title=f"batch-1 decode: hanlin gpu engine, {spec.name}, {str(engine.dtype).removeprefix('torch.')}, "
              f"{context} prompt + {new_tokens} new tokens; {torch.cuda.get_device_name() if on_gpu else 'CPU'}",
        columns=["mean context", "weights MB/tok", "KV MB/tok", "device GB/s", "bound tok/s", "decode tok/s",
                 "% of bound"],
        target=">= 50% of the memory-bandwidth bound (bytes of weights + KV read per token / measured bandwidth), "
               "on an H100",
    )
    table.rows.append([mean_context, weights / 1e6, kv / 1e6, bandwidth / 1e9, bound, tok_s, 100 * tok_s / bound])
    table.met = (tok_s / bound >= 0.5) if on_gpu else None
    table.notes.append(f"engine: {kernels}, CUDA graphs {'on' if graphs else 'off'}; bandwidth = a "
                       f"{'1 GiB' if on_gpu else '256 MiB'} copy on the device (read + write counted)")
    table.notes.append("weights: every tensor the forward reads, once (a tied embedding counted once, as the LM "
                       "head; an untied one as one row); KV at the mean context over the decode steps")
    if not on_gpu:
        table.notes.append("no GPU: CPU numbers (fp32, torch reference kernels); the H100 target is unmeasured")
    del engine
    _release()
    return table


def _greedy(n: int) -> Any:
    from hanlin.runtimes.gpu.sequence import SamplingParams

    return SamplingParams(max_tokens=n, ignore_eos=True)
