"""int4 weight x bf16/fp16/fp32 activation matmul with the dequantization fused into the kernel (W4A16).

Why fused: at batch 1 a decode step reads every weight once, so its speed is bytes of weights / memory bandwidth.
int4 weights are a quarter of bf16's bytes, but only if they are expanded to floats in registers, tile by tile,
never written back to memory as a bf16 matrix.

Packed layout (the compressed-tensors ``pack_quantized`` layout, asymmetric, group-wise along the input dim):

- ``qweight``: int32 ``[N, ceil(K / 8)]`` for a linear ``y = x @ W.T`` with ``W`` of shape ``[N out, K in]``. Word
  ``j`` of row ``n`` holds the 4-bit unsigned codes of ``W[n, 8j .. 8j + 7]``: element ``8j + i`` in bits
  ``4i .. 4i + 3`` (nibble 0 is the least significant). Codes past ``K`` (odd K) are 0 and never read.
- ``scales``: ``[N, ceil(K / group)]`` floats, ``zeros``: ``[N, ceil(K / group)]`` uint8 codes in 0..15 (on disk
  the zero points are packed 8 per int32 along N, see ``pack_zeros``); the last group may be partial.
- ``W[n, k] = (code[n, k] - zeros[n, k // group]) * scales[n, k // group]``.

Two kernels: a tiled GEMM (``tl.dot`` on dequantized tiles) for prefill-sized M, and a split-K GEMV for decode
(M <= ``GEMV_MAX_M``): at batch 1 a GEMM tile over M wastes all but one row, and the N dimension alone does not
give a large GPU enough programs, so K is also cut into ``split_k`` slices whose fp32 partials are summed after.
``dequant_gemm_ref`` is the plain-torch reference: dequantize the whole matrix, then matmul in fp32.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

GEMV_MAX_M = 4  # at most this many rows of x take the split-K GEMV path


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """[N, K] integer codes in 0..15 -> int32 [N, ceil(K / 8)], 8 codes per word along K (nibble i = k % 8)."""
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) > 15):
        raise ValueError(f"int4 codes must be in 0..15, got {int(codes.min())}..{int(codes.max())}")
    n, k = codes.shape
    padded = torch.zeros(n, -(-k // 8) * 8, dtype=torch.int64, device=codes.device)
    padded[:, :k] = codes.to(torch.int64)
    words = torch.zeros(n, padded.shape[1] // 8, dtype=torch.int64, device=codes.device)
    for i in range(8):
        words |= padded[:, i::8] << (4 * i)
    return _to_int32(words)


def unpack_int4(qweight: torch.Tensor, k: int) -> torch.Tensor:
    """int32 [N, ceil(K / 8)] -> uint8 codes [N, K]: the inverse of :func:`pack_int4`."""
    words = qweight.to(torch.int64) & 0xFFFFFFFF
    shifts = torch.arange(8, device=qweight.device, dtype=torch.int64) * 4
    codes = (words[:, :, None] >> shifts) & 0xF
    return codes.reshape(qweight.shape[0], -1)[:, :k].to(torch.uint8)


def pack_zeros(zeros: torch.Tensor) -> torch.Tensor:
    """uint8 zero points [N, G] -> int32 [ceil(N / 8), G], packed 8 per word along N (compressed-tensors' layout)."""
    return pack_int4(zeros.T.contiguous()).T.contiguous()


def unpack_zeros(packed: torch.Tensor, n: int) -> torch.Tensor:
    return unpack_int4(packed.T.contiguous(), n).T.contiguous()


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    """Reinterpret 32-bit unsigned words held in int64 as int32 (two's complement), as safetensors stores them."""
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def dequantize_int4(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, k: int, group_size: int,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The float matrix [N, K] the packed weight stands for."""
    codes = unpack_int4(qweight, k).float()
    g = torch.arange(k, device=qweight.device) // group_size
    return ((codes - zeros.float()[:, g]) * scales.float()[:, g]).to(dtype)


def dequant_gemm_ref(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                     group_size: int) -> torch.Tensor:
    """x [..., K] @ dequantized W.T -> [..., N] in x's dtype; fp32 math."""
    w = dequantize_int4(qweight, scales, zeros, x.shape[-1], group_size)
    return (x.float() @ w.T).to(x.dtype)


@triton.jit
def _dequant_tile(w_ptr, s_ptr, z_ptr, offs_k, offs_n, K, N, stride_wn, stride_sn, GROUP: tl.constexpr):
    """[BLOCK_K, BLOCK_N] fp32 dequantized tile of W.T (zero where k >= K or n >= N)."""
    mask = (offs_k[:, None] < K) & (offs_n[None, :] < N)
    word = tl.load(w_ptr + offs_n[None, :] * stride_wn + offs_k[:, None] // 8, mask=mask, other=0)
    code = (word >> ((offs_k[:, None] % 8) * 4)) & 0xF
    g = offs_k[:, None] // GROUP
    s = tl.load(s_ptr + offs_n[None, :] * stride_sn + g, mask=mask, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + offs_n[None, :] * stride_sn + g, mask=mask, other=0).to(tl.float32)
    return (code.to(tl.float32) - z) * s


@triton.jit
def _gemm_kernel(
    x_ptr, w_ptr, s_ptr, z_ptr, out_ptr, M, N, K, stride_xm, stride_wn, stride_sn, stride_om,
    GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
                    mask=(offs_m[:, None] < M) & (offs_k[None, :] < K), other=0.0)
        w = _dequant_tile(w_ptr, s_ptr, z_ptr, offs_k, offs_n, K, N, stride_wn, stride_sn, GROUP)
        if UPCAST:  # fp32 inputs, or bf16 under the CPU interpreter (whose bf16 dots are wrong)
            acc += tl.dot(x.to(tl.float32), w, out_dtype=tl.float32, input_precision=PRECISION)
        else:  # half precision on the GPU: the tensor cores take the tile in x's dtype
            acc += tl.dot(x, w.to(x.dtype), out_dtype=tl.float32)
    tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


@triton.jit
def _gemv_kernel(
    x_ptr, w_ptr, s_ptr, z_ptr, part_ptr, N, K, k_per_split, stride_xm, stride_wn, stride_sn,
    stride_ps, stride_pm, GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    m = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    k_lo = split * k_per_split
    for k0 in range(k_lo, tl.minimum(k_lo + k_per_split, K), BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + m * stride_xm + offs_k, mask=offs_k < K, other=0.0).to(tl.float32)
        w = _dequant_tile(w_ptr, s_ptr, z_ptr, offs_k, offs_n, K, N, stride_wn, stride_sn, GROUP)
        acc += tl.sum(x[:, None] * w, axis=0)
    tl.store(part_ptr + split * stride_ps + m * stride_pm + offs_n, acc, mask=offs_n < N)


def _check(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int) -> None:
    k = x.shape[-1]
    n = qweight.shape[0]
    groups = -(-k // group_size)
    if qweight.dtype != torch.int32 or qweight.shape != (n, -(-k // 8)):
        raise ValueError(f"qweight must be int32 [N, ceil(K/8)] = [{n}, {-(-k // 8)}] for K={k}, got "
                         f"{qweight.dtype} {tuple(qweight.shape)}")
    if scales.shape != (n, groups) or zeros.shape != (n, groups):
        raise ValueError(f"scales and zeros must be [N, ceil(K/group)] = [{n}, {groups}] (group_size={group_size}), "
                         f"got {tuple(scales.shape)} and {tuple(zeros.shape)}")


def dequant_gemm(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int,
                 split_k: int | None = None) -> torch.Tensor:
    """Triton version of :func:`dequant_gemm_ref`. Rows of x (all leading dims flattened) <= GEMV_MAX_M take the
    split-K GEMV; ``split_k`` sets how many K slices it cuts (default: one per 256 input channels, at most 16)."""
    if group_size < 8 or group_size & (group_size - 1):
        raise ValueError(f"group_size must be a power of two >= 8, got {group_size}")
    _check(x, qweight, scales, zeros, group_size)
    lead, k = x.shape[:-1], x.shape[-1]
    n = qweight.shape[0]
    x2 = x.reshape(-1, k)
    x2 = x2 if x2.stride(-1) == 1 else x2.contiguous()
    m = x2.shape[0]
    qweight, scales, zeros = qweight.contiguous(), scales.contiguous(), zeros.contiguous()
    if m == 0:
        return x.new_empty(*lead, n)
    if m <= GEMV_MAX_M:
        block_k = 64
        split = split_k or max(1, min(16, triton.cdiv(k, 256)))
        k_per_split = triton.cdiv(triton.cdiv(k, split), block_k) * block_k
        split = triton.cdiv(k, k_per_split)
        part = torch.empty(split, m, n, dtype=torch.float32, device=x.device)
        block_n = 64
        _gemv_kernel[(triton.cdiv(n, block_n), split, m)](
            x2, qweight, scales, zeros, part, n, k, k_per_split, x2.stride(0), qweight.stride(0), scales.stride(0),
            part.stride(0), part.stride(1), GROUP=group_size, BLOCK_N=block_n, BLOCK_K=block_k,
        )
        return part.sum(0).to(x.dtype).reshape(*lead, n)
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    upcast = x.dtype == torch.float32 or os.environ.get("TRITON_INTERPRET") == "1"
    block_m = 16 if m <= 16 else 64
    block_n, block_k = 64, 32
    _gemm_kernel[(triton.cdiv(m, block_m), triton.cdiv(n, block_n))](
        x2, qweight, scales, zeros, out, m, n, k, x2.stride(0), qweight.stride(0), scales.stride(0), out.stride(0),
        GROUP=group_size, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, UPCAST=upcast,
        PRECISION="ieee" if upcast else "tf32",
    )
    return out.reshape(*lead, n)


def _rtn_int4(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes [N, groups, group] (float, 0..15), scales and zeros [N, groups] of W's round-to-nearest int4."""
    n, k = w.shape
    groups = -(-k // group_size)
    pad = groups * group_size - k
    wf = w.float()
    if pad:  # a partial last group: pad with its own first value, which leaves its min and max unchanged
        wf = torch.cat([wf, wf[:, (groups - 1) * group_size : (groups - 1) * group_size + 1].expand(n, pad)], dim=1)
    g = wf.reshape(n, groups, group_size)
    lo = g.amin(-1).clamp(max=0.0)
    hi = g.amax(-1).clamp(min=0.0)
    scales = ((hi - lo) / 15.0).clamp(min=1e-8)
    zeros = torch.round(-lo / scales).clamp(0, 15)
    codes = torch.round(g / scales[..., None] + zeros[..., None]).clamp(0, 15)
    return codes, scales, zeros


def quantize_int4(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest asymmetric int4 of W [N, K] per (row, group of K): (qweight, scales fp32, zeros uint8).

    The range of each group (widened to include 0) maps onto codes 0..15 with an integer zero point, so every
    weight is represented to within half a step (the quantize -> dequantize error bound tests check)."""
    n, k = w.shape
    codes, scales, zeros = _rtn_int4(w, group_size)
    return pack_int4(codes.reshape(n, -1)[:, :k].to(torch.uint8)), scales, zeros.to(torch.uint8)


def fake_quantize_int4(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """What :func:`quantize_int4` then :func:`dequantize_int4` give (fp32 [N, K]), without packing: the AWQ
    search evaluates it for every candidate scale."""
    n, k = w.shape
    codes, scales, zeros = _rtn_int4(w, group_size)
    return ((codes - zeros[..., None]) * scales[..., None]).reshape(n, -1)[:, :k]
