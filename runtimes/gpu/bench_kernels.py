"""`hanlin bench kernels`: each Triton kernel checked against its torch reference, then timed beside it.

Shapes are those of a ~0.5B model (Qwen2.5-0.5B: hidden 896, 14 query / 2 kv heads of 64, intermediate 4864):
the elementwise kernels and kv_store on a prefill of 4 x 1024 tokens, paged decode on 256 sequences at 1k context,
prefill attention on 4 sequences of 1024 tokens, blocks of 16. A kernel whose output does not match its reference
(``hanlin.kernels.TOLERANCES``, as in tests/test_kernels.py) is a WRONG row and none of its timings is reported.
Achieved GB/s (bytes a kernel must move) or TFLOP/s (prefill attention) are set against the device's peaks measured
in the same run: a large device-to-device copy and a large bf16 matmul.

Where the repository's reference is a Python loop over sequences (paged_decode_ref, prefill_attention_ref) or a
masked scatter (kv_store_ref), a second row times a fairer eager baseline (gathered torch SDPA, contiguous torch
SDPA, ``index_copy_``); the target is stated against the references, the extra rows say how far that is from the
best plain torch. ``tiny=True`` runs the same code on toy shapes, on CPU under the Triton interpreter: a correctness
smoke of this benchmark itself, whose timings mean nothing.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hanlin import ConfigurationError
from hanlin.bench import BenchTable
from hanlin.kernels import TOLERANCES

KERNELS = ("add_rmsnorm", "rope", "silu_mul", "kv_store", "paged_decode", "prefill_attention")
MIN_SPEEDUP = {"add_rmsnorm": 3.0, "rope": 3.0}  # the others: faster than the reference (> 1)


@dataclass(frozen=True, slots=True)
class Shapes:
    tokens: int  # prefill tokens seen by the elementwise kernels and kv_store
    hidden: int
    q_heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    decode_seqs: int
    decode_context: int
    prefill_seqs: int
    prefill_len: int
    block_size: int


QWEN_05B = Shapes(tokens=4 * 1024, hidden=896, q_heads=14, kv_heads=2, head_dim=64, intermediate=4864,
                  decode_seqs=256, decode_context=1024, prefill_seqs=4, prefill_len=1024, block_size=16)
# small enough for the interpreter, large enough for every code path (several blocks, GQA, tl.dot's 16)
TINY = Shapes(tokens=8, hidden=64, q_heads=4, kv_heads=2, head_dim=32, intermediate=96,
              decode_seqs=3, decode_context=40, prefill_seqs=2, prefill_len=24, block_size=16)


@dataclass(slots=True)
class Case:
    """One row: the Triton call, the torch call it is timed against, and the check that must pass first."""

    kernel: str
    shape: str
    baseline: str  # which torch code the torch column times
    triton: Callable[[], Any]
    torch: Callable[[], Any]
    check: Callable[[], None]  # raises AssertionError when the Triton (or baseline) output is wrong
    work: float  # bytes moved, or floating-point operations when unit is TFLOP/s
    unit: str  # "GB/s" or "TFLOP/s"
    is_reference: bool = True  # the torch column is the kernel's own ``_ref`` (what the target is stated against)


# ---- timing and device peaks -------------------------------------------------------------------------
def median_ms(fn: Callable[[], Any], device: Any, *, warmup: int = 3, reps: int = 20, flush: Any = None) -> float:
    """Median milliseconds of one call. On CUDA each call sits between two events, after the L2 cache is
    overwritten (``flush``) so a kernel is not timed on data the previous call left in cache; on CPU wall time."""
    import torch

    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
        for start, end in pairs:
            if flush is not None:
                flush.zero_()
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(device)
        return statistics.median(s.elapsed_time(e) for s, e in pairs)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def copy_bandwidth(device: Any, nbytes: int | None = None, reps: int = 10) -> float:
    """Measured memory bandwidth in bytes/s: a copy between two large buffers (read + write both counted), the
    practical peak a memory-bound kernel can reach. 1 GiB on a GPU (well past its L2), 256 MiB on CPU."""
    import torch

    device = torch.device(device)
    nbytes = nbytes or ((1 << 30) if device.type == "cuda" else (256 << 20))
    src = torch.ones(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), device, warmup=2, reps=reps)
    return 2 * nbytes / (ms / 1e3)


def matmul_peak(device: Any, dtype: Any, n: int | None = None, reps: int = 10) -> float:
    """Measured matmul throughput in FLOP/s: a square ``n``-sized matmul (8192 on a GPU), the practical compute
    peak an attention kernel's tensor-core work is set against."""
    import torch

    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 256)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    ms = median_ms(lambda: a @ b, device, warmup=2, reps=reps)
    return 2 * n**3 / (ms / 1e3)


# ---- inputs --------------------------------------------------------------------------------------------
def _rand(*shape: int, dtype: Any, device: Any, seed: int) -> Any:
    import torch

    g = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype=dtype, device=device)


def _close(actual: Any, expected: Any, dtype_name: str) -> None:
    import torch

    atol, rtol = TOLERANCES[dtype_name]
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=rtol)


def _paged(seqs: int, length: int, s: Shapes, dtype: Any, device: Any, seed: int) -> tuple[Any, Any, Any, Any]:
    """(k_cache, v_cache, block_tables, context_lens) of ``seqs`` sequences of ``length`` tokens, their blocks
    shuffled over the cache so that logical and physical order differ, as after a while of serving."""
    import torch

    per_seq = -(-length // s.block_size)
    total = seqs * per_seq + 1
    perm = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[: seqs * per_seq]
    tables = perm.reshape(seqs, per_seq).to(torch.int32).to(device)
    k = _rand(total, s.block_size, s.kv_heads, s.head_dim, dtype=dtype, device=device, seed=seed + 1)
    v = _rand(total, s.block_size, s.kv_heads, s.head_dim, dtype=dtype, device=device, seed=seed + 2)
    return k, v, tables, torch.full((seqs,), length, dtype=torch.int32, device=device)


def _sdpa(q: Any, k: Any, v: Any, **kw: Any) -> Any:
    """torch SDPA with grouped-query heads ([batch, heads, tokens, dim]); older torch lacks ``enable_gqa``."""
    import torch.nn.functional as F

    try:
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=True, **kw)
    except TypeError:
        group = q.shape[1] // k.shape[1]
        return F.scaled_dot_product_attention(q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1), **kw)


# ---- one builder per kernel ----------------------------------------------------------------------------
def _norm_cases(s: Shapes, dt: Any, dev: Any, name: str) -> list[Case]:
    from hanlin.kernels import add_rmsnorm as k

    x, r = (_rand(s.tokens, s.hidden, dtype=dt, device=dev, seed=i) for i in (1, 2))
    w = _rand(s.hidden, dtype=dt, device=dev, seed=3)

    def check() -> None:
        for got, want in zip(k.add_rmsnorm(x, w, r), k.add_rmsnorm_ref(x, w, r)):
            _close(got, want, name)

    nbytes = (4 * s.tokens * s.hidden + s.hidden) * dt.itemsize  # read x, residual, w; write out, new residual
    return [Case("add_rmsnorm", f"{s.tokens}x{s.hidden} +residual", "add_rmsnorm_ref (eager torch)",
                 lambda: k.add_rmsnorm(x, w, r), lambda: k.add_rmsnorm_ref(x, w, r), check, nbytes, "GB/s")]


def _rope_cases(s: Shapes, dt: Any, dev: Any, name: str) -> list[Case]:
    import torch

    from hanlin.kernels import rope as k

    heads = s.q_heads + 2 * s.kv_heads  # q and k are views of the qkv projection's output, as in the engine
    qkv = _rand(s.tokens, heads, s.head_dim, dtype=dt, device=dev, seed=4)
    q, kk = qkv[:, : s.q_heads], qkv[:, s.q_heads : s.q_heads + s.kv_heads]
    cache = k.rope_cache(s.prefill_len, s.head_dim, device=dev)
    pos = torch.arange(s.tokens, device=dev) % s.prefill_len

    def check() -> None:
        work = qkv.clone()
        wq, wk = work[:, : s.q_heads], work[:, s.q_heads : s.q_heads + s.kv_heads]
        want = k.rope_ref(wq.clone(), wk.clone(), pos, cache)
        k.rope_(wq, wk, pos, cache)
        _close(wq, want[0], name)
        _close(wk, want[1], name)

    elems = s.tokens * (s.q_heads + s.kv_heads) * s.head_dim
    nbytes = 2 * elems * dt.itemsize + s.tokens * (s.head_dim * 4 + 8)  # q, k read and written; cos|sin, positions
    return [Case("rope", f"{s.tokens}x({s.q_heads}+{s.kv_heads})x{s.head_dim} in place", "rope_ref (eager torch)",
                 lambda: k.rope_(q, kk, pos, cache), lambda: k.rope_ref(q, kk, pos, cache), check, nbytes, "GB/s")]


def _act_cases(s: Shapes, dt: Any, dev: Any, name: str) -> list[Case]:
    from hanlin.kernels import silu_mul as k

    x = _rand(s.tokens, 2 * s.intermediate, dtype=dt, device=dev, seed=5)
    nbytes = 3 * s.tokens * s.intermediate * dt.itemsize  # read gate and up, write the product
    return [Case("silu_mul", f"{s.tokens}x{2 * s.intermediate}", "silu_mul_ref (eager torch)",
                 lambda: k.silu_mul(x), lambda: k.silu_mul_ref(x),
                 lambda: _close(k.silu_mul(x), k.silu_mul_ref(x), name), nbytes, "GB/s")]


def _store_cases(s: Shapes, dt: Any, dev: Any, name: str) -> list[Case]:
    import torch

    from hanlin.kernels import kv_store as k

    blocks = s.decode_seqs * (-(-s.decode_context // s.block_size)) + 1  # a cache sized for the decode batch
    kc = torch.zeros(blocks, s.block_size, s.kv_heads, s.head_dim, dtype=dt, device=dev)
    vc = torch.zeros_like(kc)
    new_k, new_v = (_rand(s.tokens, s.kv_heads, s.head_dim, dtype=dt, device=dev, seed=i) for i in (6, 7))
    owned = torch.randperm(blocks, generator=torch.Generator().manual_seed(8))  # prefill fills whole blocks
    t = torch.arange(s.tokens)
    slots = (owned[t // s.block_size] * s.block_size + t % s.block_size).to(dev)
    flat_k, flat_v = kc.view(-1, s.kv_heads, s.head_dim), vc.view(-1, s.kv_heads, s.head_dim)

    def index_copy() -> None:
        flat_k.index_copy_(0, slots, new_k)
        flat_v.index_copy_(0, slots, new_v)

    def check(store: Callable[..., None]) -> Callable[[], None]:
        def run() -> None:
            got_k, got_v, want_k, want_v = (torch.zeros_like(kc) for _ in range(4))
            store(new_k, new_v, got_k, got_v, slots)
            k.kv_store_ref(new_k, new_v, want_k, want_v, slots)
            if not (torch.equal(got_k, want_k) and torch.equal(got_v, want_v)):
                raise AssertionError("the cache holds different keys/values than kv_store_ref wrote")
        return run

    def copy_store(nk: Any, nv: Any, ck: Any, cv: Any, sl: Any) -> None:
        ck.view(-1, s.kv_heads, s.head_dim).index_copy_(0, sl, nk)
        cv.view(-1, s.kv_heads, s.head_dim).index_copy_(0, sl, nv)

    shape = f"{s.tokens} tok x {s.kv_heads}x{s.head_dim} into {blocks}x{s.block_size}"
    nbytes = 4 * s.tokens * s.kv_heads * s.head_dim * dt.itemsize + 8 * s.tokens  # read k, v; write both; slots
    triton = lambda: k.kv_store(new_k, new_v, kc, vc, slots)  # noqa: E731
    return [Case("kv_store", shape, "kv_store_ref (masked index put)", triton,
                 lambda: k.kv_store_ref(new_k, new_v, kc, vc, slots), check(k.kv_store), nbytes, "GB/s"),
            Case("kv_store", shape, "torch index_copy_", triton, index_copy, check(copy_store), nbytes, "GB/s",
                 is_reference=False)]


def _decode_cases(s: Shapes, dt: Any, dev: Any, name: str) -> list[Case]:
    import torch

    from hanlin.kernels import paged_decode as k

    b, n = s.decode_seqs, s.decode_context
    kc, vc, tables, lens = _paged(b, n, s, dt, dev, seed=9)
    q = _rand(b, s.q_heads, s.head_dim, dtype=dt, device=dev, seed=12)
    width = tables.shape[1] * s.block_size
    mask = (torch.arange(width, device=dev)[None, :] < lens[:, None])[:, None, None, :]

    def gathered() -> Any:  # what eager torch does without a paged kernel: gather the blocks, then attend
        keys = kc[tables.long()].flatten(1, 2).transpose(1, 2)
        values = vc[tables.long()].flatten(1, 2).transpose(1, 2)
        return _sdpa(q[:, :, None], keys, values, attn_mask=mask)[:, :, 0]

    ref = lambda: k.paged_decode_ref(q, kc, vc, tables, lens)  # noqa: E731
    # the grid fixed by max_context, as the engine's CUDA-graph decode calls it: no host read of the lengths
    triton = lambda: k.paged_decode(q, kc, vc, tables, lens, max_context=n)  # noqa: E731
    shape = f"{b} seqs x {n} ctx, {s.q_heads}/{s.kv_heads} heads x {s.head_dim}"
    nbytes = (2 * b * n * s.kv_heads + 2 * b * s.q_heads) * s.head_dim * dt.itemsize + tables.numel() * 4
    return [Case("paged_decode", shape, "paged_decode_ref (loop over sequences)", triton, ref,
                 lambda: _close(triton(), ref(), name), nbytes, "GB/s"),
            Case("paged_decode", shape, "gather blocks + torch SDPA", triton, gathered,
                 lambda: (_close(triton(), ref(), name), _close(gathered(), ref(), name)), nbytes, "GB/s",
                 is_reference=False)]


def _prefill_cases(s: Shapes, dt: Any, dev: Any, name: str) -> list[Case]:
    import torch

    from hanlin.kernels import prefill_attention as k

    b, n = s.prefill_seqs, s.prefill_len
    kc, vc, tables, lens = _paged(b, n, s, dt, dev, seed=13)
    cu = torch.arange(0, (b + 1) * n, n, dtype=torch.int32, device=dev)
    q = _rand(b * n, s.q_heads, s.head_dim, dtype=dt, device=dev, seed=16)
    # the same keys/values laid out contiguously, once, outside the timing: the best case for torch
    keys = kc[tables.long()].flatten(1, 2)[:, :n].transpose(1, 2).contiguous()
    values = vc[tables.long()].flatten(1, 2)[:, :n].transpose(1, 2).contiguous()
    qb = q.view(b, n, s.q_heads, s.head_dim).transpose(1, 2)

    def contiguous() -> Any:
        return _sdpa(qb, keys, values, is_causal=True).transpose(1, 2).reshape(b * n, s.q_heads, s.head_dim)

    ref = lambda: k.prefill_attention_ref(q, kc, vc, tables, cu, lens)  # noqa: E731
    triton = lambda: k.prefill_attention(q, kc, vc, tables, cu, lens)  # noqa: E731
    shape = f"{b} x {n} tok causal, {s.q_heads}/{s.kv_heads} heads x {s.head_dim}"
    flops = 4 * s.head_dim * s.q_heads * b * n * (n + 1) / 2  # QK^T and PV over the causal pairs
    return [Case("prefill_attention", shape, "prefill_attention_ref (loop over sequences)", triton, ref,
                 lambda: _close(triton(), ref(), name), flops, "TFLOP/s"),
            Case("prefill_attention", shape, "torch SDPA, contiguous K/V", triton, contiguous,
                 lambda: (_close(triton(), ref(), name), _close(contiguous(), ref(), name)), flops, "TFLOP/s",
                 is_reference=False)]


BUILDERS = (_norm_cases, _rope_cases, _act_cases, _store_cases, _decode_cases, _prefill_cases)


# ---- the table -----------------------------------------------------------------------------------------
def _interpreter_ready() -> None:
    """Triton reads TRITON_INTERPRET when it is first imported and when a kernel is decorated (its module first
    imported): on CPU the interpreter must be switched on before either, or a kernel cannot touch CPU tensors."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return
    loaded = [m for m in ("triton", *(f"hanlin.kernels.{k}" for k in KERNELS)) if m in sys.modules]
    if loaded:
        raise ConfigurationError(
            f"{', '.join(loaded)} were imported before TRITON_INTERPRET=1 was set, so the kernels cannot run on CPU "
            "tensors in this process; set TRITON_INTERPRET=1 in the environment before starting Python")
    os.environ["TRITON_INTERPRET"] = "1"


def _row(case: Case, device: Any, peaks: dict[str, float], warmup: int, reps: int, flush: Any) -> list[Any]:
    """Check first; a wrong (or failing) kernel gets no timings, since a fast wrong answer means nothing."""
    head = [case.kernel, case.shape, case.baseline]
    try:
        case.check()
    except AssertionError as exc:
        return [*head, "WRONG: " + str(exc).strip().splitlines()[0][:80], *["-"] * 6]
    except Exception as exc:  # noqa: BLE001 - a kernel that raises is reported in its row, the others still run
        return [*head, f"ERROR: {type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else ''}",
                *["-"] * 6]
    ours = median_ms(case.triton, device, warmup=warmup, reps=reps, flush=flush)
    theirs = median_ms(case.torch, device, warmup=warmup, reps=reps, flush=flush)
    scale = 1e9 if case.unit == "GB/s" else 1e12
    achieved = case.work / (ours / 1e3) / scale
    return [*head, "ok", ours, theirs, theirs / ours, achieved, case.unit, 100 * achieved / peaks[case.unit]]


def bench_kernels(device: str | None = None, tiny: bool = False, dtype: str = "bfloat16", **_: Any) -> BenchTable:
    """Every inference kernel: correctness against its reference, then its time beside the torch baseline(s)."""
    import torch

    cuda = torch.cuda.is_available()
    dev = torch.device(device or ("cuda" if cuda else "cpu"))
    if dtype not in TOLERANCES:
        raise ConfigurationError(f"dtype must be one of {', '.join(TOLERANCES)}, got {dtype!r}")
    columns = ["kernel", "shape", "torch baseline", "check", "triton ms", "torch ms", "speedup", "achieved", "unit",
               "% of peak"]
    what = "correctness smoke on tiny shapes" if tiny else "Qwen2.5-0.5B shapes"
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU, Triton interpreter"
    table = BenchTable(title=f"kernels: Triton vs torch, {what}, {dtype}, {where}", columns=columns,
                       target="each kernel faster than its torch reference; add_rmsnorm and rope >= 3x (on an H100)")
    if importlib.util.find_spec("triton") is None:  # not imported here: on CPU the interpreter must come first
        raise ConfigurationError("triton is not installed: pip install 'hanlin[gpu]'")
    if dev.type != "cuda" and not tiny:
        table.notes.append("needs a CUDA GPU: the GPU targets are unmeasured here. On CPU the kernels run only under "
                           "the Triton interpreter, whose timings mean nothing; `hanlin bench kernels --smoke` runs "
                           "this benchmark on tiny shapes there as a correctness check")
        return table
    if dev.type != "cuda":
        _interpreter_ready()
    dt = getattr(torch, dtype)
    shapes = TINY if tiny else QWEN_05B
    warmup, reps = (1, 3) if tiny else (5, 25)
    peaks = {"GB/s": copy_bandwidth(dev, (64 << 20) if tiny else None) / 1e9,
             "TFLOP/s": matmul_peak(dev, dt, 256 if tiny else None) / 1e12}
    # overwrite a buffer larger than any L2 before each timed call (H100: 50 MB)
    flush = torch.empty(256 << 20, dtype=torch.uint8, device=dev) if dev.type == "cuda" else None
    is_ref = []
    for build in BUILDERS:
        for case in build(shapes, dt, dev, dtype):
            table.rows.append(_row(case, dev, peaks, warmup, reps, flush))
            is_ref.append(case.is_reference)
    _verdict(table, is_ref, dev, tiny)
    table.notes.append(f"peaks measured here: copy {peaks['GB/s']:.0f} GB/s (read + write of "
                       f"{'64 MiB' if tiny else '1 GiB'}), {dtype} matmul {peaks['TFLOP/s']:.3g} TFLOP/s "
                       f"({256 if tiny else 8192}^3)")
    table.notes.append("achieved = bytes the kernel must move (GB/s) or 4*d*heads*causal pairs (TFLOP/s, prefill) "
                       "per second of the Triton kernel; medians of single calls" +
                       (", the L2 overwritten before each" if dev.type == "cuda" else ""))
    if tiny:
        table.notes.append("SMOKE: tiny shapes on the Triton interpreter (CPU) - the checks are real, the timings "
                           "mean nothing; the GPU targets are unmeasured")
    return table


def _verdict(table: BenchTable, is_ref: list[bool], dev: Any, tiny: bool) -> None:
    """``met`` only for real shapes on a GPU: every check passed, every kernel faster than its reference, the
    norm and rope at least 3x; the rows against the fairer baselines are reported but not part of the target."""
    wrong = [r[0] for r in table.rows if r[3] != "ok"]
    if wrong:
        table.notes.append(f"WRONG or failing, no timing trusted: {', '.join(dict.fromkeys(wrong))}")
    slower = [f"{r[0]} vs {r[2]} ({r[6]:.2f}x)" for r, ref in zip(table.rows, is_ref)
              if r[3] == "ok" and not ref and r[6] < 1]
    if slower and not tiny:
        table.notes.append("slower than the fairer eager baseline: " + "; ".join(slower))
    if dev.type != "cuda" or tiny:
        table.met = None
        return
    misses = [r[0] for r, ref in zip(table.rows, is_ref)
              if ref and (r[3] != "ok" or r[6] <= 1 or r[6] < MIN_SPEEDUP.get(r[0], 1.0))]
    table.met = not misses
    if misses:
        table.notes.append(f"below target: {', '.join(misses)}")
