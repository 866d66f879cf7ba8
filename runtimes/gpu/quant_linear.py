"""W4A16 linears in the gpu runtime: reading a packed int4 checkpoint, and running a linear on it.

A folder written by ``hanlin quantize --to awq-w4`` (or any compressed-tensors ``pack_quantized`` folder with
4-bit asymmetric group weights) stores each linear ``X`` as ``X.weight_packed`` / ``X.weight_scale`` /
``X.weight_zero_point`` / ``X.weight_shape`` (layout: hanlin.kernels.dequant_gemm). The model fuses q/k/v and
gate/up at load; packed rows concatenate along N exactly like float rows, so a fused int4 weight is the
concatenation of its parts' packed rows, scales and (unpacked) zero points.

``pack_linears`` and ``write_int4_folder`` write that format from float weights (the AWQ quantizer after its
scale search; the benchmarks with plain round-to-nearest).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hanlin.kernels import dequant_gemm as _dq


@dataclass(slots=True)
class Int4Weight:
    """One (possibly fused) int4 linear weight: W [N, K] as packed codes, fp scales and uint8 zero points."""

    qweight: torch.Tensor  # int32 [N, ceil(K / 8)]
    scales: torch.Tensor  # [N, ceil(K / group)] in the engine's dtype
    zeros: torch.Tensor  # uint8 [N, ceil(K / group)]
    in_features: int
    group_size: int

    @property
    def out_features(self) -> int:
        return self.qweight.shape[0]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.qweight, self.scales, self.zeros))


def int4_config(raw_config: dict[str, Any]) -> int | None:
    """The group size when config.json declares 4-bit asymmetric group weights we can run, else None (not
    quantized); a quantization we cannot run is an error that names it."""
    q = raw_config.get("quantization_config")
    if not q:
        return None
    method, fmt = q.get("quant_method"), q.get("format")
    groups = q.get("config_groups") or {}
    weights = [g.get("weights") or {} for g in groups.values()]
    ok = (method == "compressed-tensors" and fmt == "pack_quantized" and len(weights) == 1
          and weights[0].get("num_bits") == 4 and weights[0].get("type") == "int"
          and weights[0].get("strategy") == "group" and not weights[0].get("symmetric", True)
          and not (q.get("config_groups", {}).get("group_0", {}).get("input_activations")))
    if not ok:
        raise ValueError(f"the gpu runtime runs 4-bit asymmetric group weights in the compressed-tensors "
                         f"pack_quantized format (hanlin quantize --to awq-w4); this folder's quantization_config is "
                         f"quant_method={method!r}, format={fmt!r}, weights={weights}")
    return int(weights[0]["group_size"])


def take_int4(raw: dict[str, torch.Tensor], names: list[str], group_size: int, device: torch.device,
              dtype: torch.dtype) -> Int4Weight:
    """The int4 weight of the linears ``names`` (e.g. q/k/v ``...q_proj``), fused along N."""
    parts = []
    for name in names:
        for suffix in ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape"):
            if f"{name}.{suffix}" not in raw:
                raise KeyError(f"{name}.{suffix} is missing from the quantized checkpoint")
        if f"{name}.weight_g_idx" in raw:
            raise ValueError(f"{name} has a weight_g_idx (activation-ordered groups); the gpu runtime runs contiguous "
                             "groups only: quantize without act-order (hanlin quantize --to awq-w4)")
        n, k = (int(v) for v in raw[f"{name}.weight_shape"])
        parts.append((raw[f"{name}.weight_packed"], raw[f"{name}.weight_scale"],
                      _dq.unpack_zeros(raw[f"{name}.weight_zero_point"], n), k))
    ks = {k for *_, k in parts}
    if len(ks) != 1:
        raise ValueError(f"cannot fuse {names}: their input sizes differ ({sorted(ks)})")
    return Int4Weight(
        qweight=torch.cat([p[0] for p in parts]).to(device).contiguous(),
        scales=torch.cat([p[1] for p in parts]).to(device=device, dtype=dtype).contiguous(),
        zeros=torch.cat([p[2] for p in parts]).to(device).contiguous(),
        in_features=ks.pop(), group_size=group_size,
    )


def linear(x: torch.Tensor, w: torch.Tensor | Int4Weight, triton: bool) -> torch.Tensor:
    """x @ W.T for a float weight or an int4 one (the fused dequant-GEMM kernel, or its torch reference)."""
    if isinstance(w, torch.Tensor):
        return x @ w.T
    f = _dq.dequant_gemm if triton else _dq.dequant_gemm_ref
    return f(x, w.qweight, w.scales, w.zeros, w.group_size)


LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def pack_linears(state: dict[str, torch.Tensor], group_size: int) -> dict[str, torch.Tensor]:
    """A float checkpoint's tensors with every decoder linear weight (``*.layers.N.*.{q,k,v,o,gate,up,down}_proj
    .weight``) replaced by its round-to-nearest int4 tensors under compressed-tensors names; the rest unchanged."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        module = key.removesuffix(".weight")
        if key.endswith(".weight") and ".layers." in f".{key}" and module.rsplit(".", 1)[-1] in LINEARS:
            qweight, scales, zeros = _dq.quantize_int4(tensor, group_size)
            out[module + ".weight_packed"] = qweight.cpu()
            out[module + ".weight_scale"] = scales.to(torch.float16).cpu()
            out[module + ".weight_zero_point"] = _dq.pack_zeros(zeros).cpu()
            out[module + ".weight_shape"] = torch.tensor(list(tensor.shape), dtype=torch.int64)
        else:
            out[key] = tensor.contiguous().cpu()
    return out


def quantization_config(group_size: int, **extra: Any) -> dict[str, Any]:
    """config.json's ``quantization_config`` for :func:`pack_linears`' tensors (what :func:`int4_config` reads)."""
    return {
        "quant_method": "compressed-tensors", "format": "pack_quantized",
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": {
            "num_bits": 4, "type": "int", "symmetric": False, "strategy": "group", "group_size": group_size}}},
        "ignore": ["lm_head"], **extra,
    }


def write_int4_folder(source: Path, out: Path, state: dict[str, torch.Tensor], group_size: int,
                      **extra: Any) -> None:
    """``out``: the packed ``state`` as model.safetensors, source's config.json with the quantization_config
    (plus ``extra``), and every other file of ``source`` (tokenizer, chat template, generation config)."""
    from safetensors.torch import save_file

    cfg = json.loads((source / "config.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    for f in source.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors") and f.name not in ("config.json",
                                                                                   "model.safetensors.index.json"):
            shutil.copy2(f, out / f.name)
    if cfg.get("tie_word_embeddings", True):
        state.pop("lm_head.weight", None)  # tied: safetensors refuses shared storage, and the loader ties it
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps({**cfg, "quantization_config": quantization_config(group_size, **extra)},
                                                indent=2))
