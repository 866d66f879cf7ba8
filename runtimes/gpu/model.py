"""The decoder-only transformer over a flat batch, with weights read straight from safetensors.

q/k/v and gate/up are fused into one matrix each at load time, so a layer is four matmuls. Family differences
come from ModelConfig switches; weight names are mapped per family in ``_load``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from hanlin.runtimes.gpu.config import ModelConfig
from hanlin.runtimes.gpu.layers import Ops, StepBatch
from hanlin.runtimes.gpu.quant_linear import Int4Weight, int4_config, linear, take_int4


class DecoderLM:
    def __init__(self, config: ModelConfig, folder: Path, device: torch.device, dtype: torch.dtype, ops: Ops) -> None:
        self.cfg, self.device, self.dtype, self.ops = config, device, dtype, ops
        self.w = _load(config, folder, device, dtype)
        rot = config.head_dim
        self.cos_sin = config.rope.cache(config.max_position, rot, device)
        self.cos_sin_local = (config.rope_local.cache(config.max_position, rot, device)
                              if config.rope_local != config.rope else self.cos_sin)

    @torch.inference_mode()
    def forward(self, batch: StepBatch, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Logits [len(batch.logits_rows), vocab] in fp32."""
        c, ops, w = self.cfg, self.ops, self.w
        h = w["embed"][batch.input_ids]
        if c.embed_scale != 1.0:
            h = h * torch.tensor(c.embed_scale, dtype=h.dtype)
        residual = None
        q_size, kv_size = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
        for i in range(c.num_layers):
            p = f"layers.{i}."
            x, residual = ops.norm(h, w[p + "input_norm"], c.rms_norm_eps, c.norm_offset, residual)
            qkv = linear(x, w[p + "qkv"], ops.triton)
            if c.qkv_bias:
                qkv = qkv + w[p + "qkv_bias"]
            q = qkv[:, :q_size].reshape(-1, c.num_heads, c.head_dim)
            k = qkv[:, q_size : q_size + kv_size].reshape(-1, c.num_kv_heads, c.head_dim)
            v = qkv[:, q_size + kv_size :].reshape(-1, c.num_kv_heads, c.head_dim)
            if c.qk_norm:
                q = ops.norm(q.contiguous(), w[p + "q_norm"], c.rms_norm_eps, c.norm_offset)[0]
                k = ops.norm(k.contiguous(), w[p + "k_norm"], c.rms_norm_eps, c.norm_offset)[0]
            sliding = c.sliding_layers[i]
            q, k = ops.rope(q, k, batch.positions, self.cos_sin_local if sliding else self.cos_sin)
            k_cache, v_cache = kv[i]
            ops.store(k.contiguous(), v.contiguous(), k_cache, v_cache, batch.slots)
            attn = ops.attention(q.contiguous(), k_cache, v_cache, batch, c.attn_scale, c.sliding_window if sliding else 0)
            h = linear(attn.reshape(-1, q_size), w[p + "o"], ops.triton)
            if c.family == "gemma3":
                h = ops.norm(h, w[p + "post_attn_norm"], c.rms_norm_eps, c.norm_offset)[0]
                x, residual = ops.norm(h, w[p + "pre_ffn_norm"], c.rms_norm_eps, c.norm_offset, residual)
            else:
                x, residual = ops.norm(h, w[p + "post_attn_norm"], c.rms_norm_eps, c.norm_offset, residual)
            h = linear(ops.act(linear(x, w[p + "gate_up"], ops.triton), c.act), w[p + "down"], ops.triton)
            if c.family == "gemma3":
                h = ops.norm(h, w[p + "post_ffn_norm"], c.rms_norm_eps, c.norm_offset)[0]
        h, _ = ops.norm(h, w["norm"], c.rms_norm_eps, c.norm_offset, residual)
        return (h[batch.logits_rows] @ w["lm_head"].T).float()


def _load(c: ModelConfig, folder: Path, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor | Int4Weight]:
    import json

    from safetensors import safe_open

    group = int4_config(json.loads((folder / "config.json").read_text()))  # W4A16 linears (quant_linear.py)

    raw: dict[str, torch.Tensor] = {}
    for file in _weight_files(folder):
        try:
            with safe_open(str(file), framework="pt") as fh:
                for name in fh.keys():
                    key = name.removeprefix("model.language_model.").removeprefix("language_model.model.").removeprefix("model.")
                    raw[key] = fh.get_tensor(name)
        except Exception as exc:  # safetensors' own error type: a truncated or damaged file
            raise ValueError(f"cannot read {str(file)!r}: {exc}; the file is damaged or incomplete, copy it again") from None

    def take(name: str) -> torch.Tensor:
        if name not in raw:
            raise KeyError(f"weight {name!r} is missing from {str(folder)!r} (family {c.family})")
        return raw[name].to(device=device, dtype=dtype)

    def fused(*names: str) -> torch.Tensor | Int4Weight:
        """One linear's weight from its parts (q/k/v, gate/up), float or int4."""
        if group is not None:
            return take_int4(raw, [n.removesuffix(".weight") for n in names], group, device, dtype)
        return torch.cat([take(n) for n in names])

    w: dict[str, torch.Tensor | Int4Weight] = {}
    if group is not None and c.family == "internlm2":
        raise ValueError("int4 (W4A16) checkpoints of internlm2 are not supported by the gpu runtime")
    if c.family == "internlm2":
        w["embed"] = take("tok_embeddings.weight")
    else:
        w["embed"] = take("embed_tokens.weight")
    for i in range(c.num_layers):
        p = f"layers.{i}."
        if c.family == "internlm2":
            w[p + "qkv"] = _split_internlm2_wqkv(take(p + "attention.wqkv.weight"), c)
            w[p + "o"] = take(p + "attention.wo.weight")
            w[p + "gate_up"] = torch.cat([take(p + "feed_forward.w1.weight"), take(p + "feed_forward.w3.weight")])
            w[p + "down"] = take(p + "feed_forward.w2.weight")
            w[p + "input_norm"] = take(p + "attention_norm.weight")
            w[p + "post_attn_norm"] = take(p + "ffn_norm.weight")
            continue
        a = p + "self_attn."
        w[p + "qkv"] = fused(a + "q_proj.weight", a + "k_proj.weight", a + "v_proj.weight")
        if c.qkv_bias:
            w[p + "qkv_bias"] = torch.cat([take(a + "q_proj.bias"), take(a + "k_proj.bias"), take(a + "v_proj.bias")])
        w[p + "o"] = fused(a + "o_proj.weight")
        w[p + "gate_up"] = fused(p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight")
        w[p + "down"] = fused(p + "mlp.down_proj.weight")
        w[p + "input_norm"] = take(p + "input_layernorm.weight")
        w[p + "post_attn_norm"] = take(p + "post_attention_layernorm.weight")
        if c.family == "gemma3":
            w[p + "pre_ffn_norm"] = take(p + "pre_feedforward_layernorm.weight")
            w[p + "post_ffn_norm"] = take(p + "post_feedforward_layernorm.weight")
            w[p + "q_norm"] = take(a + "q_norm.weight")
            w[p + "k_norm"] = take(a + "k_norm.weight")
    w["norm"] = take("norm.weight")
    head = "output.weight" if c.family == "internlm2" else "lm_head.weight"
    w["lm_head"] = w["embed"] if c.tie_embeddings else take(head)
    return w


def _weight_files(folder: Path) -> list[Path]:
    """The safetensors files to read; a sharded checkpoint's index must find every shard it names, since a missing
    shard would otherwise surface as some weight missing (or, worse, a silently tied head)."""
    files = sorted(folder.glob("*.safetensors"))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        import json

        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, AttributeError) as exc:
            raise ValueError(f"{str(index)!r} is not a safetensors index (no weight_map): {exc}") from None
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{str(folder)!r} is missing {len(missing)} of the {len(shards)} weight shards its "
                f"model.safetensors.index.json lists: {', '.join(missing)}; copy the whole model folder again"
            )
        files = [folder / s for s in shards]
    if not files:
        raise FileNotFoundError(f"no .safetensors files in {str(folder)!r}: the gpu runtime reads HF safetensors "
                                "checkpoints (a .gguf is converted first when given as the model)")
    return files


def _split_internlm2_wqkv(wqkv: torch.Tensor, c: ModelConfig) -> torch.Tensor:
    """InternLM2 packs q/k/v per kv head as [q x group, k, v]; regroup to [all q | all k | all v]."""
    group = c.num_heads // c.num_kv_heads
    x = wqkv.reshape(c.num_kv_heads, group + 2, c.head_dim, -1)
    q = x[:, :group].reshape(-1, x.shape[-1])
    k = x[:, group].reshape(-1, x.shape[-1])
    v = x[:, group + 1].reshape(-1, x.shape[-1])
    return torch.cat([q, k, v])
