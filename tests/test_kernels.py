"""Each Triton kernel against its plain-torch reference on random inputs of several shapes and dtypes.

On a machine without a GPU the kernels run under Triton's interpreter (TRITON_INTERPRET=1, set before the
kernel modules are imported) on CPU tensors; with a GPU they run for real.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

torch = pytest.importorskip("torch")
if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed (pip install 'hanlin[gpu]' or triton)", allow_module_level=True)
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    # tests/conftest.py turns the interpreter on before any kernel module is imported; a kernel decorated
    # without it cannot run on CPU tensors, so say why instead of failing every case
    pytest.skip("no GPU and TRITON_INTERPRET is not 1 (set it before importing hanlin.kernels)", allow_module_level=True)

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from hanlin.kernels import TOLERANCES, use_triton  # noqa: E402
from hanlin.kernels.add_rmsnorm import add_rmsnorm, add_rmsnorm_ref  # noqa: E402
from hanlin.kernels.kv_store import kv_store, kv_store_ref  # noqa: E402
from hanlin.kernels.paged_decode import paged_decode, paged_decode_ref  # noqa: E402
from hanlin.kernels.paged_offsets import paged_offsets, paged_offsets_ref  # noqa: E402
from hanlin.kernels.prefill_attention import prefill_attention, prefill_attention_ref  # noqa: E402
from hanlin.kernels.rope import rope_, rope_cache, rope_ref  # noqa: E402
from hanlin.kernels.silu_mul import silu_mul, silu_mul_ref  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Per-dtype tolerances, stated once for the tests, the kernel benchmark and the GPU check (see hanlin.kernels).
TOL = {getattr(torch, name): tol for name, tol in TOLERANCES.items()}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def close(actual, expected, dtype) -> None:
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=rtol)


def rand(*shape, dtype=torch.float32, seed: int = 0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype=dtype, device=DEVICE)


def test_the_kernels_run_on_triton_here() -> None:
    assert use_triton(rand(1))  # otherwise this file would only test the references against themselves


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 64), (7, 100), (2, 3, 256)])
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("offset", [0.0, 1.0])
def test_add_rmsnorm(dtype, shape, with_residual, offset) -> None:
    x, w = rand(*shape, dtype=dtype, seed=1), rand(shape[-1], dtype=dtype, seed=2)
    r = rand(*shape, dtype=dtype, seed=3) if with_residual else None
    y, new_r = add_rmsnorm(x, w, r, eps=1e-6, weight_offset=offset)
    y_ref, r_ref = add_rmsnorm_ref(x, w, r, eps=1e-6, weight_offset=offset)
    close(y, y_ref, dtype)
    close(new_r, r_ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("neox", [True, False])
@pytest.mark.parametrize("rotary_dim", [64, 32])
def test_rope_in_place(dtype, neox, rotary_dim) -> None:
    tokens, q_heads, kv_heads, dim = 6, 4, 2, 64
    cache = rope_cache(128, rotary_dim, base=10000.0).to(DEVICE)
    positions = torch.tensor([0, 1, 5, 17, 63, 127], device=DEVICE)
    qkv = rand(tokens, q_heads + 2 * kv_heads, dim, dtype=dtype, seed=4)  # q and k as views of one buffer
    q, k = qkv[:, :q_heads], qkv[:, q_heads : q_heads + kv_heads]
    q_ref, k_ref = rope_ref(q.clone(), k.clone(), positions, cache, neox=neox)
    v_before = qkv[:, q_heads + kv_heads :].clone()
    rope_(q, k, positions, cache, neox=neox)
    close(qkv[:, :q_heads], q_ref, dtype)
    close(qkv[:, q_heads : q_heads + kv_heads], k_ref, dtype)
    assert torch.equal(qkv[:, q_heads + kv_heads :], v_before)  # the rest of the buffer is untouched
    if rotary_dim < dim:
        assert torch.equal(q_ref[..., rotary_dim:], q[..., rotary_dim:])


def test_rope_position_zero_is_identity_and_rotation_preserves_norm() -> None:
    cache = rope_cache(8, 64)
    q = torch.randn(2, 3, 64)
    q0, _ = rope_ref(q, q, torch.tensor([0, 0]), cache)
    assert torch.allclose(q0, q)
    q5, _ = rope_ref(q, q, torch.tensor([5, 7]), cache)
    assert torch.allclose(q5.norm(dim=-1), q.norm(dim=-1), atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 64), (5, 2 * 688), (2, 3, 2 * 1100)])
@pytest.mark.parametrize("act", ["silu", "gelu_tanh"])
def test_silu_mul(dtype, shape, act) -> None:
    x = rand(*shape, dtype=dtype, seed=5)
    close(silu_mul(x, act), silu_mul_ref(x, act), dtype)


def test_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown activation"):
        silu_mul(rand(2, 8), "relu")
    with pytest.raises(ValueError, match="must be even"):
        silu_mul(rand(2, 7))
    with pytest.raises(ValueError, match="rotary_dim 128 is larger than head_dim 64"):
        rope_(rand(1, 1, 64), rand(1, 1, 64), torch.tensor([0], device=DEVICE), rope_cache(4, 128).to(DEVICE))


def _paged_cache(lens: list[int], block_size: int, kv_heads: int, dim: int, dtype, seed: int):
    """A shuffled block layout so that logical and physical block order differ."""
    need = [(n + block_size - 1) // block_size for n in lens]
    total = sum(need) + 3
    perm = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    tables = torch.zeros(len(lens), max(need), dtype=torch.int32)
    at = 0
    for b, count in enumerate(need):
        tables[b, :count] = perm[at : at + count].to(torch.int32)
        at += count
    k_cache = rand(total, block_size, kv_heads, dim, dtype=dtype, seed=seed + 1)
    v_cache = rand(total, block_size, kv_heads, dim, dtype=dtype, seed=seed + 2)
    return k_cache, v_cache, tables.to(DEVICE), torch.tensor(lens, dtype=torch.int32, device=DEVICE)


@pytest.mark.parametrize("dtype", DTYPES)
def test_kv_store(dtype) -> None:
    k_cache = torch.zeros(4, 16, 2, 32, dtype=dtype, device=DEVICE)
    v_cache = torch.zeros_like(k_cache)
    k, v = rand(5, 2, 32, dtype=dtype, seed=6), rand(5, 2, 32, dtype=dtype, seed=7)
    slots = torch.tensor([0, 17, -1, 63, 40], device=DEVICE)
    ref_k, ref_v = k_cache.clone(), v_cache.clone()
    kv_store_ref(k, v, ref_k, ref_v, slots)
    kv_store(k, v, k_cache, v_cache, slots)
    assert torch.equal(k_cache, ref_k) and torch.equal(v_cache, ref_v)
    assert torch.equal(k_cache.view(-1, 2, 32)[17], k[1]) and not k_cache.view(-1, 2, 32)[2].any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window", [0, 20])
@pytest.mark.parametrize("heads", [(4, 4), (8, 2)])
def test_paged_decode_split_k(dtype, window, heads) -> None:
    q_heads, kv_heads = heads
    lens = [1, 37, 130]
    k_cache, v_cache, tables, ctx = _paged_cache(lens, 16, kv_heads, 64, dtype, seed=8)
    q = rand(len(lens), q_heads, 64, dtype=dtype, seed=11)
    out = paged_decode(q, k_cache, v_cache, tables, ctx, window=window, partition_tokens=32)  # 5 partitions
    close(out, paged_decode_ref(q, k_cache, v_cache, tables, ctx, window=window), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_paged_decode_with_a_fixed_grid(dtype) -> None:
    """The CUDA-graph form: the grid sized for a longer context than any in the batch (partitions past a
    sequence's end are empty), same result as the grid sized from the lengths."""
    lens = [3, 70]
    k_cache, v_cache, tables, ctx = _paged_cache(lens, 16, 2, 64, dtype, seed=9)
    q = rand(len(lens), 4, 64, dtype=dtype, seed=10)
    fixed = paged_decode(q, k_cache, v_cache, tables, ctx, partition_tokens=32, max_context=256)  # 8 partitions
    close(fixed, paged_decode_ref(q, k_cache, v_cache, tables, ctx), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window", [0, 12])
def test_prefill_attention_over_cached_prefix(dtype, window) -> None:
    q_lens, lens = [20, 9, 1], [20, 26, 33]  # seq 1 and 2 have 17 and 32 cached tokens before the new ones
    k_cache, v_cache, tables, ctx = _paged_cache(lens, 16, 2, 64, dtype, seed=12)
    cu = torch.tensor([0, 20, 29, 30], dtype=torch.int32, device=DEVICE)
    q = rand(sum(q_lens), 4, 64, dtype=dtype, seed=13)
    out = prefill_attention(q, k_cache, v_cache, tables, cu, ctx, window=window, block_m=16)
    close(out, prefill_attention_ref(q, k_cache, v_cache, tables, cu, ctx, window=window), dtype)


def test_prefill_reference_matches_plain_causal_attention() -> None:
    """The reference itself, against torch's SDPA on a sequence with no cached prefix."""
    n, heads, dim = 24, 2, 32
    k_cache, v_cache, tables, ctx = _paged_cache([n], 16, heads, dim, torch.float32, seed=14)
    q = rand(n, heads, dim, seed=15)
    ref = prefill_attention_ref(q, k_cache, v_cache, tables, torch.tensor([0, n]), ctx)
    k = k_cache[tables[0].long()].reshape(-1, heads, dim)[:n]
    v = v_cache[tables[0].long()].reshape(-1, heads, dim)[:n]
    sdpa = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True
    ).transpose(0, 1)
    torch.testing.assert_close(ref, sdpa, atol=1e-5, rtol=1e-5)


@triton.jit
def _offsets_kernel(table_ptr, out_ptr, kv_heads, head_dim, BLOCK_SIZE: tl.constexpr, BLOCK_D: tl.constexpr):
    i = tl.program_id(0)
    phys = tl.load(table_ptr + i)  # int32, as the engine's block tables
    offs = tl.arange(0, BLOCK_SIZE)
    d = tl.arange(0, BLOCK_D)
    off = paged_offsets(phys, offs, kv_heads - 1, d, kv_heads, head_dim, BLOCK_SIZE)
    tl.store(out_ptr + i * BLOCK_SIZE * BLOCK_D + offs[:, None] * BLOCK_D + d[None, :], off)


def test_paged_cache_offsets_past_2_to_the_31() -> None:
    """A layer's cache can hold more than 2^31 elements (most of an H200 as cache, few layers): the offsets the
    attention kernels compute from the int32 block table must not wrap. Checked on the offset function both kernels
    use, with block ids whose rows sit past 2^31 and past 2^32 (no such cache fits in a CPU test)."""
    block_size, kv_heads, head_dim = 16, 8, 128  # 16384 elements a block: block 131072 starts at 2^31
    blocks = [0, 131071, 131072, 300000, 2**31 - 1]
    table = torch.tensor(blocks, dtype=torch.int32, device=DEVICE)
    out = torch.zeros(len(blocks), block_size, head_dim, dtype=torch.int64, device=DEVICE)
    _offsets_kernel[(len(blocks),)](table, out, kv_heads, head_dim, BLOCK_SIZE=block_size, BLOCK_D=head_dim)
    for i, phys in enumerate(blocks):
        for row, dim in ((0, 0), (block_size - 1, head_dim - 1), (7, 64)):
            want = paged_offsets_ref(phys, row, kv_heads - 1, dim, kv_heads, head_dim, block_size)
            assert int(out[i, row, dim]) == want, (phys, row, dim)
    assert int(out[-1, -1, -1]) > 2**32


@pytest.mark.parametrize("dtype", DTYPES)
def test_prefill_asks_for_full_fp32_dots(dtype, monkeypatch) -> None:
    """A GPU's tl.dot rounds fp32 inputs to TF32 unless told otherwise, far outside the fp32 tolerance: the kernel
    must say "ieee" for fp32 (the interpreter computes in full precision either way, so check what is asked)."""
    from hanlin.kernels import prefill_attention as module

    asked = {}
    kernel = module._prefill_kernel

    class Spy:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                asked.update(kwargs)
                return kernel[grid](*args, **kwargs)
            return launch

    monkeypatch.setattr(module, "_prefill_kernel", Spy())
    k_cache, v_cache, tables, ctx = _paged_cache([20], 16, 2, 64, dtype, seed=16)
    q = rand(20, 4, 64, dtype=dtype, seed=17)
    cu = torch.tensor([0, 20], dtype=torch.int32, device=DEVICE)
    close(prefill_attention(q, k_cache, v_cache, tables, cu, ctx),
          prefill_attention_ref(q, k_cache, v_cache, tables, cu, ctx), dtype)
    if dtype == torch.float32:
        assert asked["PRECISION"] == "ieee"
