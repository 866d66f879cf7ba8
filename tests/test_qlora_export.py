"""QLoRA export: the adapter folds into a dequantized 4-bit base and the merged folder holds plain floats.

bitsandbytes needs a GPU, so the merge arithmetic is tested on the CPU with a stand-in 4-bit layer exposing the
interface the export reads (a ``weight`` carrying a ``quant_state``, and a dequantize function); the last test
runs the real bitsandbytes path where bitsandbytes is installed (the GPU check installs it).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")


class FourBitStandIn(torch.nn.Module):
    """A CPU stand-in for bitsandbytes' Linear4bit: integer codes in [-7, 7] with one fp32 scale per output row,
    the scale kept on the weight as its ``quant_state`` (as Params4bit keeps its own)."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-8) / 7
        self.weight = torch.nn.Parameter(torch.round(w / scale).to(torch.int8),
                                         requires_grad=False)
        self.weight.quant_state = scale
        self.bias = linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, stand_in_dequantize(self).to(x.dtype), self.bias)


def stand_in_dequantize(layer: FourBitStandIn) -> torch.Tensor:
    return layer.weight.data.float() * layer.weight.quant_state


class NoTokenizer:
    def save_pretrained(self, folder: str) -> None:
        pass


def tiny_qlora_model():
    """A 2-layer random llama with a LoRA adapter (non-zero, as after training) on q_proj and v_proj, every adapted
    base layer and one layer no adapter targets (layer 0's down_proj) made 4-bit stand-ins."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = get_peft_model(LlamaForCausalLM(config),
                           LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]))
    for module in model.modules():
        if hasattr(module, "lora_B") and "default" in module.lora_B:
            torch.nn.init.normal_(module.lora_B["default"].weight, std=0.05)
            module.base_layer = FourBitStandIn(module.base_layer)
    mlp = model.get_base_model().model.layers[0].mlp
    mlp.down_proj = FourBitStandIn(mlp.down_proj)
    return model.eval()


def test_qlora_merge_dequantizes_then_adds_the_adapter(tmp_path: Path) -> None:
    """merged weight = dequantized 4-bit weight + scaling * B @ A, in floats; the merged model computes what the
    trained model (4-bit base + adapter) computed, and its saved folder reloads as a plain model."""
    from transformers import AutoModelForCausalLM

    from hanlin.plugins.finetuners.export import merged_model, save_merged
    from hanlin.plugins.finetuners.qlora_merge import has_four_bit_layers

    model = tiny_qlora_model()
    ids = torch.tensor([[1, 5, 9, 14, 3, 77, 21, 8]])
    q = model.get_base_model().model.layers[1].self_attn.q_proj
    expected_q = stand_in_dequantize(q.base_layer) + q.scaling["default"] * (
        q.lora_B["default"].weight @ q.lora_A["default"].weight)
    expected_down = stand_in_dequantize(model.get_base_model().model.layers[0].mlp.down_proj)
    with torch.no_grad():
        trained = model(input_ids=ids).logits
    assert has_four_bit_layers(model)

    merged = merged_model(model, dequantize=stand_in_dequantize)
    assert not has_four_bit_layers(merged) and not any(hasattr(m, "lora_A") for m in merged.modules())
    layers = merged.model.layers
    assert type(layers[1].self_attn.q_proj) is torch.nn.Linear and layers[1].self_attn.q_proj.weight.dtype == torch.float32
    torch.testing.assert_close(layers[1].self_attn.q_proj.weight, expected_q, rtol=0, atol=1e-6)
    torch.testing.assert_close(layers[0].mlp.down_proj.weight, expected_down, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, trained, rtol=1e-4, atol=1e-5)

    folder = save_merged(merged, NoTokenizer(), tmp_path / "base", tmp_path / "out")
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    reloaded = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    assert all(p.is_floating_point() for p in reloaded.parameters())
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, trained, rtol=1e-4, atol=1e-5)


def test_a_model_with_packed_weights_is_not_written_as_plain(tmp_path: Path) -> None:
    from hanlin.errors import ConfigurationError
    from hanlin.plugins.finetuners.export import save_merged

    still_packed = tiny_qlora_model().get_base_model()  # no merge: the 4-bit stand-ins are still there
    with pytest.raises(ConfigurationError, match="quantized"):
        save_merged(still_packed, NoTokenizer(), tmp_path / "base", tmp_path / "out")
    assert not (tmp_path / "out" / "merged").exists()


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None,
                    reason="the real QLoRA path needs bitsandbytes (pip install bitsandbytes; the GPU check runs it)")
def test_real_qlora_export(tmp_path: Path) -> None:
    """bitsandbytes NF4 base + LoRA, as ``method: qlora`` builds it (on CUDA; bitsandbytes >= 0.48 also runs it on
    a CPU): the merged folder holds floats equal to bitsandbytes' dequantized weight + the adapter's delta, and
    reproduces the trained model's logits. The forward before the merge matters on a CPU, where bitsandbytes
    repacks the weights at the first eval forward."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from hanlin.plugins.finetuners.config import load_config
    from hanlin.plugins.finetuners.export import merged_model, save_merged
    from hanlin.plugins.finetuners.model_setup import LoadedBase, _four_bit, wrap_for_method
    from hanlin.plugins.finetuners.qlora_merge import bnb_dequantize, has_four_bit_layers

    torch.manual_seed(0)
    folder = tmp_path / "base"
    config = LlamaConfig(vocab_size=96, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    LlamaForCausalLM(config).save_pretrained(str(folder))
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "hello"}\n')
    cfg = load_config(None, model=str(folder), data=[str(data)], method="qlora", dtype="bfloat16",
                      output_dir=str(tmp_path / "out"), lora={"r": 4, "alpha": 8, "dropout": 0.0})
    device = "cuda" if torch.cuda.is_available() else "cpu"
    four_bit = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.bfloat16, device_map=device,
                                                    quantization_config=_four_bit("cuda", torch.bfloat16))
    model = wrap_for_method(LoadedBase(four_bit, None, folder, device, torch.bfloat16), cfg).eval()
    assert has_four_bit_layers(model)
    for module in model.modules():
        if hasattr(module, "lora_B") and "default" in module.lora_B:
            torch.nn.init.normal_(module.lora_B["default"].weight, std=0.05)
    q = model.get_base_model().model.layers[1].self_attn.q_proj
    with torch.no_grad():
        expected_q = (bnb_dequantize(q.get_base_layer()).float() + q.get_delta_weight("default").float()).cpu()
    ids = torch.tensor([[1, 5, 9, 14, 3, 77, 21, 8]], device=device)
    with torch.no_grad():
        trained = model(input_ids=ids).logits.float().cpu()
    out = save_merged(merged_model(model), NoTokenizer(), folder, tmp_path / "out")
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    reloaded = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    assert all(p.is_floating_point() for p in reloaded.parameters())
    torch.testing.assert_close(reloaded.model.layers[1].self_attn.q_proj.weight, expected_q, rtol=1e-2, atol=1e-3)
    with torch.no_grad():
        merged_logits = reloaded(input_ids=ids.cpu()).logits
    assert float((merged_logits - trained).abs().max()) <= 0.05 * float(trained.abs().max()) + 1e-3
