"""Rotary frequencies per checkpoint: the rope variants of the supported families, as one cos|sin cache each.

The kernels only ever see a cache of cos|sin per position, so a variant is nothing but how its inverse frequencies
(and position scale) are computed. Supported: plain (``default``), ``linear`` position interpolation, ``llama3``
(Llama 3.1+: long wavelengths slowed by ``factor``, short ones kept, a smooth blend between) and ``dynamic`` NTK,
which equals plain rope up to the checkpoint's ``max_position_embeddings`` — the engine never goes past that, so it
is exact. Anything else (yarn, longrope, ...) is refused by name rather than silently run as plain rope, which
would give wrong tokens without an error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from hanlin.kernels.rope import rope_cache

SUPPORTED_ROPE = ("default", "linear", "llama3", "dynamic")


@dataclass(frozen=True, slots=True)
class Rope:
    theta: float
    kind: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0  # llama3 only
    high_freq_factor: float = 4.0
    original_max_position: int = 8192

    @classmethod
    def parse(cls, theta: float, scaling: dict[str, Any] | None) -> Rope:
        """``scaling``: the checkpoint's rope_scaling / rope_parameters dict (None or {} for plain rope)."""
        scaling = scaling or {}
        kind = scaling.get("rope_type", scaling.get("type")) or "default"
        if kind not in SUPPORTED_ROPE:
            raise ValueError(f"rope scaling {kind!r} is not implemented by the gpu runtime (it has "
                             f"{', '.join(SUPPORTED_ROPE)}); use runtime='transformers' for this checkpoint")
        factor = float(scaling.get("factor") or 1.0)
        if kind == "llama3":
            return cls(theta, kind, factor, float(scaling.get("low_freq_factor", 1.0)),
                       float(scaling.get("high_freq_factor", 4.0)),
                       int(scaling.get("original_max_position_embeddings", 8192)))
        if kind == "linear":
            return cls(theta, kind, factor)
        return cls(theta)  # default, and dynamic below max_position_embeddings

    def inv_freq(self, rotary_dim: int) -> torch.Tensor:
        inv = 1.0 / (self.theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim))
        if self.kind != "llama3":
            return inv
        wavelen = 2 * math.pi / inv
        low_wavelen = self.original_max_position / self.low_freq_factor  # longer than this: fully scaled
        high_wavelen = self.original_max_position / self.high_freq_factor  # shorter than this: unchanged
        smooth = (self.original_max_position / wavelen - self.low_freq_factor) / (
            self.high_freq_factor - self.low_freq_factor)
        blended = (1 - smooth) * inv / self.factor + smooth * inv
        out = torch.where(wavelen > low_wavelen, inv / self.factor, inv)
        return torch.where((wavelen <= low_wavelen) & (wavelen >= high_wavelen), blended, out)

    def cache(self, max_positions: int, rotary_dim: int, device: torch.device | str) -> torch.Tensor:
        scaling = self.factor if self.kind == "linear" else 1.0
        return rope_cache(max_positions, rotary_dim, scaling=scaling, device=device,
                          inv_freq=self.inv_freq(rotary_dim))
