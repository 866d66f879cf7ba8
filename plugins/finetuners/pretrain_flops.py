"""Model FLOPs utilisation: the share of the device's peak that a run's tokens/s is worth.

FLOPs per trained token follow PaLM's appendix B: 6 x the matmul parameters (forward 2, backward 4; the embedding
lookup is not a matmul, a tied output head is) plus 12 x layers x hidden x sequence length for attention scores.
The peak is the datasheet's dense bf16 number for the CUDA GPUs named below (another GPU: its measured bf16 matmul
rate). On a CPU it is the fp32 vector peak from /proc/cpuinfo: threads x clock x FLOPs per cycle (two FMA units: 32
with AVX2/FMA or AMD's AVX-512, 64 with Intel's AVX-512). A measured GEMM rate would move with whatever else the
machine runs (on a shared 2-core machine it reads several times low and MFU above 100%); the datasheet-style peak
does not, so a busy machine shows as a low MFU, which is what it is.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
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
        return _measured[device], f"measured bf16 GEMM on {name}"
    return cpu_peak()


def cpu_peak() -> tuple[float, str]:
    import torch

    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    flags = set(re.search(r"^flags\s*:(.*)$", info, re.M).group(1).split()) if "flags" in info else set()
    max_freq = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    if max_freq.is_file():
        hz = int(max_freq.read_text()) * 1e3
    else:
        found = re.search(r"^cpu MHz\s*:\s*([\d.]+)", info, re.M)
        hz = float(found.group(1)) * 1e6 if found else 2.5e9
    intel = "GenuineIntel" in info
    per_cycle = 64 if "avx512f" in flags and intel else 32 if "fma" in flags else 8
    threads = torch.get_num_threads()
    return threads * hz * per_cycle, f"{threads} threads x {hz / 1e9:.2f} GHz x {per_cycle} fp32 FLOP/cycle"


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
