"""The W4A16 dequant-GEMM kernel (both its GEMM and its split-K GEMV paths) against its torch reference, and the
int4 pack / quantize round trip, under Triton's interpreter on CPU (for real on a GPU)."""

from __future__ import annotations

import importlib.util
import os

import pytest

torch = pytest.importorskip("torch")
if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed (pip install 'hanlin[gpu]' or triton)", allow_module_level=True)
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no GPU and TRITON_INTERPRET is not 1 (set it before importing hanlin.kernels)", allow_module_level=True)

from hanlin.kernels import TOLERANCES  # noqa: E402
from hanlin.kernels.dequant_gemm import (  # noqa: E402
    GEMV_MAX_M, dequant_gemm, dequant_gemm_ref, dequantize_int4, fake_quantize_int4, pack_int4, pack_zeros, quantize_int4, unpack_int4,
    unpack_zeros,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def rand(*shape, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype=dtype, device=DEVICE)


def test_pack_layout_is_eight_codes_per_word_low_nibble_first() -> None:
    codes = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 15, 9]], dtype=torch.uint8)
    packed = pack_int4(codes)
    assert packed.shape == (1, 2) and packed.dtype == torch.int32
    assert int(packed[0, 0]) & 0xFFFFFFFF == 0xF7654321  # element 8j + i in bits 4i..4i+3
    assert int(packed[0, 1]) == 9  # odd K: the last word's unused nibbles are 0
    assert torch.equal(unpack_int4(packed, 9), codes)
    zeros = torch.randint(0, 16, (13, 3), dtype=torch.uint8)
    assert pack_zeros(zeros).shape == (2, 3) and torch.equal(unpack_zeros(pack_zeros(zeros), 13), zeros)
    with pytest.raises(ValueError, match="0..15"):
        pack_int4(torch.tensor([[16]]))


@pytest.mark.parametrize("k,group", [(256, 128), (200, 64), (77, 32)])
def test_quantize_dequantize_error_is_within_half_a_step(k: int, group: int) -> None:
    w = rand(24, k, seed=k)
    qweight, scales, zeros = quantize_int4(w, group)
    back = dequantize_int4(qweight, scales, zeros, k, group)
    step = scales[:, torch.arange(k) // group]
    assert ((back - w).abs() <= step / 2 + 1e-6).all()
    assert (back - w).abs().max() > 0  # it really is quantized
    torch.testing.assert_close(fake_quantize_int4(w, group), back)  # the AWQ search's unpacked shortcut agrees


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m,n,k,group", [
    (1, 64, 256, 128),  # batch-1 decode: split-K GEMV
    (3, 40, 200, 64),  # GEMV, N and K not multiples of the tiles, a partial last group
    (1, 17, 77, 32),  # odd K: a word of the packed row is half padding
    (20, 96, 160, 32),  # GEMM path
    (33, 50, 129, 128),  # GEMM, odd K past one group
])
def test_kernel_matches_reference(dtype, m: int, n: int, k: int, group: int) -> None:
    w = rand(n, k, seed=1)
    qweight, scales, zeros = quantize_int4(w, group)
    scales = scales.to(dtype)
    x = rand(m, k, seed=2, dtype=dtype)
    out = dequant_gemm(x, qweight, scales, zeros, group)
    ref = dequant_gemm_ref(x, qweight, scales, zeros, group)
    assert out.dtype == dtype and out.shape == (m, n)
    atol, rtol = TOLERANCES[str(dtype).removeprefix("torch.")]
    scale = ref.float().abs().max()  # sums over K: measure the error against the output's magnitude
    torch.testing.assert_close(out.float() / scale, ref.float() / scale, atol=atol, rtol=rtol)


def test_split_k_slices_and_leading_dims() -> None:
    w = rand(32, 512, seed=3)
    qweight, scales, zeros = quantize_int4(w, 128)
    x = rand(2, 1, 512, seed=4)  # [batch, 1, K]: two rows, the GEMV path
    ref = dequant_gemm_ref(x, qweight, scales, zeros, 128)
    for split in (1, 3, 8):
        torch.testing.assert_close(dequant_gemm(x, qweight, scales, zeros, 128, split_k=split), ref,
                                   atol=1e-4, rtol=1e-4)
    assert GEMV_MAX_M >= 2


def test_bad_shapes_are_explained() -> None:
    qweight, scales, zeros = quantize_int4(rand(16, 64), 32)
    with pytest.raises(ValueError, match=r"qweight must be int32 \[N, ceil\(K/8\)\]"):
        dequant_gemm(rand(1, 72), qweight, scales, zeros, 32)
    with pytest.raises(ValueError, match="power of two"):
        dequant_gemm(rand(1, 64), qweight, scales, zeros, 48)
