"""``hanlin quantize MODEL --to awq-w4 --calib FILE --out DIR``: AWQ W4A16 for the gpu runtime, calibrated offline.

Steps: read a local calibration file (calibration.py: never a hub), run the fp32 model over it once with hooks on
every linear's input (per-channel mean |x| over all tokens, a sample of rows for the search, and a NaN/inf check
reported per layer by name), search per layer group the scales that minimise the group's output error
(awq_search.py), fold them into the op before, quantize every linear to int4 (group 128, zero points) and write a
folder the gpu runtime loads.

Scale groups (as AutoAWQ): q/k/v after input_layernorm, gate/up after post_attention_layernorm, down after up_proj
(the scale divides up_proj's rows); o_proj after v_proj only when every head has its own kv head (with grouped
query attention one v row feeds several o columns, so o_proj gets no scales). Then every linear but q/k gets its
weight clipping searched per (row, group) (awq_search.search_clip).

The folder: config.json with
``quantization_config = {"quant_method": "compressed-tensors", "format": "pack_quantized", "config_groups":
{"group_0": {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "int", "symmetric": false,
"strategy": "group", "group_size": 128}}}, "ignore": ["lm_head"], "hanlin": {"method": "awq", ...}}``; each linear
``X.weight`` stored as ``X.weight_packed`` (int32 [N, K/8]), ``X.weight_scale`` (fp16 [N, K/128]),
``X.weight_zero_point`` (int32 [N/8, K/128], 4-bit codes packed along N) and ``X.weight_shape`` (int64 [2]); the
packed layout is documented in hanlin.kernels.dequant_gemm. Embeddings, norms and lm_head stay in the source dtype.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from hanlin.errors import ConfigurationError
from hanlin.plugins.quantizers.base import LayerNote, QualityCheck, QuantizeReport, size_on_disk

OPTIONS = {"group_size", "samples", "seq_len", "rows", "check", "max_increase", "eval_text", "threads"}
FAMILIES = ("LlamaForCausalLM", "Qwen2ForCausalLM")


class NonFiniteActivations(ConfigurationError):
    """NaN or inf reached a linear's input during calibration; ``layers`` names every such linear."""

    def __init__(self, layers: list[str]) -> None:
        self.layers = layers
        super().__init__(f"NaN/inf in the calibration activations of {len(layers)} linear layer(s): "
                         f"{', '.join(layers[:8])}{' ...' if len(layers) > 8 else ''}; the source model's weights "
                         "(or a fine-tune that diverged) produce them: check those layers' weights before quantizing")


class AWQQuantizer:
    """The ``awq-w4`` method (base.Quantizer)."""

    def quantize(self, source: Path, out: Path, *, calib: Path | None, options: dict[str, Any]) -> QuantizeReport:
        unknown = sorted(k for k, v in options.items() if k not in OPTIONS and v not in (None, False))
        if unknown:
            raise ConfigurationError(f"awq-w4 does not take {', '.join(unknown)}; its options: {', '.join(sorted(OPTIONS))}")
        if calib is None:
            raise ConfigurationError("awq-w4 needs --calib FILE: a local .jsonl or .txt of text like what the model "
                                     "will see (your traces or chats work best); nothing is downloaded")
        return quantize_awq(source, out, calib, **{k: v for k, v in options.items() if k in OPTIONS})


def quantize_awq(source: Path, out: Path, calib: Path, *, group_size: int = 128, samples: int = 128,
                 seq_len: int = 512, rows: int = 512, check: bool = True, max_increase: float | None = None,
                 eval_text: Path | None = None, threads: int | None = None) -> QuantizeReport:
    import torch

    from hanlin.plugins.quantizers.calibration import load_calibration

    t0 = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    source = _hf_folder(source)
    cfg = json.loads((source / "config.json").read_text())
    arch = (cfg.get("architectures") or ["?"])[0]
    if arch not in FAMILIES:
        raise ConfigurationError(f"awq-w4 supports {', '.join(FAMILIES)}; {source} is {arch}")
    if cfg.get("quantization_config"):
        raise ConfigurationError(f"{source} is already quantized ({cfg['quantization_config'].get('quant_method')}); "
                                 "quantize the full-precision model")
    texts = [s.text for s in load_calibration(calib, limit=samples)]
    model, tokenizer = _load(source)
    stats = collect_stats(model, tokenizer, texts, seq_len=seq_len, rows=rows)
    if stats.nonfinite:
        raise NonFiniteActivations(stats.nonfinite)
    notes = apply_awq(model, stats, group_size)
    state = pack_state(model, group_size)
    write_folder(source, out, state, group_size, notes)
    report = QuantizeReport(
        method="awq-w4", source=str(source), out=str(out), size_bytes_in=_weights_size(source),
        size_bytes_out=_weights_size(out), seconds=0.0, calibration=str(calib),
        notes=[f"{len(texts)} calibration samples, {stats.tokens} tokens; group size {group_size}, zero points",
               f"AWQ scales on {sum(1 for n in notes if n.alpha > 0)} of {len(notes)} layer groups "
               f"(output error vs RTN: {sum(n.awq_error for n in notes) / max(sum(n.rtn_error for n in notes), 1e-30):.2f}x)"],
        layers=[LayerNote(layer=n.name, message=f"alpha {n.alpha:.2f}, output MSE {n.awq_error:.3g} (RTN {n.rtn_error:.3g})")
                for n in notes],
        details={"group_size": group_size, "format": "compressed-tensors pack_quantized"},
    )
    if check:
        report.checks.append(_check(source, out, eval_text, max_increase))
    report.seconds = time.perf_counter() - t0
    return report


# ---- calibration statistics --------------------------------------------------------------------------------
class Stats:
    """Per linear input (by the linear's module name): sum |x| per channel, a sample of rows, non-finite layers."""

    def __init__(self) -> None:
        self.abs_sum: dict[str, Any] = {}
        self.count: dict[str, int] = {}
        self.rows: dict[str, Any] = {}
        self.nonfinite: list[str] = []
        self.tokens = 0

    def mean_abs(self, name: str) -> Any:
        return self.abs_sum[name] / max(self.count[name], 1)


def collect_stats(model: Any, tokenizer: Any, texts: list[str], *, seq_len: int, rows: int) -> Stats:
    """One fp32 pass over the calibration texts with hooks on every decoder linear's input."""
    import torch

    stats = Stats()
    gen = torch.Generator().manual_seed(0)
    hooks = []

    def hook(name: str):
        def record(_module: Any, args: tuple[Any, ...]) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            if not torch.isfinite(x).all():
                if name not in stats.nonfinite:
                    stats.nonfinite.append(name)
                return
            stats.abs_sum[name] = stats.abs_sum.get(name, 0) + x.abs().sum(0)
            stats.count[name] = stats.count.get(name, 0) + x.shape[0]
            kept = stats.rows.get(name)
            take = x[torch.randperm(x.shape[0], generator=gen)[:rows]]
            merged = take if kept is None else torch.cat([kept, take])
            if merged.shape[0] > rows:  # keep a uniform-ish sample of at most `rows` rows
                merged = merged[torch.randperm(merged.shape[0], generator=gen)[:rows]]
            stats.rows[name] = merged
        return record

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".layers." in f".{name}":
            hooks.append(module.register_forward_pre_hook(hook(name)))
    try:
        with torch.inference_mode():
            for text in texts:
                ids = tokenizer(text, return_tensors="pt").input_ids[:, :seq_len]
                if ids.shape[1] == 0:
                    continue
                stats.tokens += ids.shape[1]
                model(ids)
    finally:
        for h in hooks:
            h.remove()
    if not stats.tokens:
        raise ConfigurationError("the calibration samples tokenized to nothing; give text")
    return stats


# ---- scales --------------------------------------------------------------------------------------------------
class GroupNote:
    __slots__ = ("name", "alpha", "rtn_error", "awq_error")

    def __init__(self, name: str, alpha: float, rtn_error: float, awq_error: float) -> None:
        self.name, self.alpha, self.rtn_error, self.awq_error = name, alpha, rtn_error, awq_error


def apply_awq(model: Any, stats: Stats, group_size: int, clip: bool = True) -> list[GroupNote]:
    """Search and fold the scales of every layer group, then (``clip``) search each group's weight clipping, in
    place; returns one note per group."""
    import torch

    from hanlin.plugins.quantizers.awq_search import search_clip, search_scales

    notes: list[GroupNote] = []
    cfg = model.config
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads or cfg.num_attention_heads
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            p = f"model.layers.{i}."
            attn, mlp = layer.self_attn, layer.mlp
            groups = [
                (p + "self_attn.q_proj", [attn.q_proj, attn.k_proj, attn.v_proj], layer.input_layernorm.weight, None),
                (p + "mlp.gate_proj", [mlp.gate_proj, mlp.up_proj], layer.post_attention_layernorm.weight, None),
                (p + "mlp.down_proj", [mlp.down_proj], None, mlp.up_proj),
            ]
            if heads == kv_heads:
                groups.append((p + "self_attn.o_proj", [attn.o_proj], None, attn.v_proj))
            for name, linears, norm, prev in groups:
                result = search_scales(stats.rows[name], [m.weight for m in linears], stats.mean_abs(name), group_size)
                notes.append(GroupNote(name, result.alpha, result.rtn_error, result.awq_error))
                if result.alpha > 0:
                    s = result.scales.to(linears[0].weight.dtype)
                    for m in linears:
                        m.weight.mul_(s[None, :])
                    if norm is not None:
                        norm.div_(s)
                    else:
                        prev.weight.div_(s[:, None])
                        if prev.bias is not None:
                            prev.bias.div_(s)
                if clip:  # not q/k: clipping them distorts attention scores (AutoAWQ skips them too)
                    rows = stats.rows[name] / result.scales[None, :]  # the input the scaled weights will see
                    for m in linears:
                        if m is not attn.q_proj and m is not attn.k_proj:
                            m.weight.copy_(search_clip(rows, m.weight, group_size).to(m.weight.dtype))
            if clip and heads != kv_heads:  # o_proj got no scales (GQA): it is still clipped
                attn.o_proj.weight.copy_(search_clip(stats.rows[p + "self_attn.o_proj"], attn.o_proj.weight,
                                                     group_size).to(attn.o_proj.weight.dtype))
    return notes


# ---- packing and writing: the gpu runtime's int4 format (hanlin.runtimes.gpu.quant_linear) -----------------------
def pack_state(model: Any, group_size: int) -> dict[str, Any]:
    from hanlin.runtimes.gpu.quant_linear import pack_linears

    return pack_linears(model.state_dict(), group_size)


def write_folder(source: Path, out: Path, state: dict[str, Any], group_size: int, notes: list[GroupNote]) -> None:
    from hanlin.runtimes.gpu.quant_linear import write_int4_folder

    write_int4_folder(source, out, state, group_size, hanlin={
        "method": "awq" if notes else "rtn", "scaled_groups": sum(1 for n in notes if n.alpha > 0),
        "groups": len(notes)})


# ---- helpers ---------------------------------------------------------------------------------------------------
def _hf_folder(source: Path) -> Path:
    if source.is_file() and source.suffix == ".gguf":
        from hanlin.runtimes.gguf_convert import convert_gguf

        return convert_gguf(source)
    if not (source / "config.json").is_file():
        raise ConfigurationError(f"awq-w4 reads an HF model folder (config.json + safetensors) or a .gguf; got {source}")
    return source


def _load(folder: Path) -> tuple[Any, Any]:
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    model.eval()
    return model, transformers.AutoTokenizer.from_pretrained(str(folder))


def _weights_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors")) or size_on_disk(folder)


def _check(source: Path, out: Path, eval_text: Path | None, max_increase: float | None) -> QualityCheck:
    """Perplexity of source vs quantized through the gpu runtime (torch reference ops, fp32) on held-out text."""
    from hanlin.plugins.quantizers.calibration import calibration_text, held_out_text
    from hanlin.runtimes.gpu.perplexity import engine_perplexity

    label, text = (str(eval_text), calibration_text(eval_text)) if eval_text else held_out_text(4000)
    base, tokens = engine_perplexity(source, text)
    quant, _ = engine_perplexity(out, text)
    return QualityCheck(metric="perplexity", text=label, tokens=tokens, source=base, quantized=quant,
                        max_increase=0.25 if max_increase is None else max_increase, engine="hanlin gpu runtime (torch)")
