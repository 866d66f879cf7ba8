"""Model FLOPs utilisation: the share of the device's peak that a run's tokens/s is worth.

FLOPs per trained token follow PaLM's appendix B: 6 x the matmul parameters (forward 2, backward 4; the embedding
lookup is not a matmul, a tied output head is) plus 12 x layers x hidden x sequence length for attention scores.
The peak is the datasheet's dense bf16 number for the CUDA GPUs named below; on any other device (every CPU) it is
measured in the same process as the best fp32 matmul rate torch reaches, so CPU MFU reads as "share of what this
machine's GEMM can do", not of a datasheet figure the CPU never sees.
"""

from __future__ import annotations

import time
from typing import Any

# dense bf16 tensor-core peaks (FLOP/s), by a substring of torch.cuda.get_device_name()
CUDA_PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10G": 125e12,
              "A10": 125e12, "4090": 165e12, "3090": 71e12, "V100": 125e12, "T4": 65e12}
_measured: dict[str, float] = {}


def flops_per_token(model: Any, seq_len: int) -> float:
    config = model.config
    embed = model.get_input_embeddings().weight
    params = sum(p.numel() for p in model.parameters())
    matmul = params - embed.numel()
    if getattr(config, "tie_word_embeddings", False):
        matmul += embed.numel()  # the head reuses the embedding as a matmul
    return 6.0 * matmul + 12.0 * config.num_hidden_layers * config.hidden_size * seq_len


def device_peak(device: str) -> tuple[float, str]:
    """(peak FLOP/s, where the number comes from)."""
    import torch

    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
        for key, peak in CUDA_PEAKS.items():
            if key in name:
                return peak, f"{name} datasheet bf16"
    if device not in _measured:
        _measured[device] = _measure_gemm(device)
    return _measured[device], f"measured fp32 GEMM on {device}"


def _measure_gemm(device: str, n: int = 1024, seconds: float = 0.5) -> float:
    import torch

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - start))
    return best
