"""GGUF quantization through llama.cpp's own quantizer: a tuned tiny llama ends as a q4_k_m GGUF that llama.cpp runs,
q8_0 keeps SmolLM2's perplexity, the guard rail flags a degraded file, and the importance matrix names a NaN layer."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.conftest import requires_llama, requires_smollm2, smollm2_path
from tests.test_finetune_data import write_jsonl

pytestmark = [
    requires_smollm2, requires_llama,
    pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="pip install 'hanlin[tune]'"),
]
PROSE = ("The river runs past the old mill and under the stone bridge, where children wait for the boats to pass. "
         "In the evening the lamps are lit along the water and the town grows quiet. ") * 6


def wide_tiny_llama(folder: Path, tokenizer_folder: Path) -> Path:
    """A 2-layer random llama with SmolLM2's tokenizer whose rows are multiples of 256, so k-quants apply."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(tokenizer_folder), local_files_only=True)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, smol_folder: Path) -> Path:
    return wide_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama", smol_folder)


def test_tuned_tiny_llama_ends_as_q4_k_m_that_llama_cpp_runs(tmp_path: Path, tiny: Path) -> None:
    import llama_cpp

    from hanlin.plugins.finetuners.api import tune
    from hanlin.plugins.quantizers.gguf import tensor_types

    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": [{"role": "user", "content": "Hi"},
                                                            {"role": "assistant", "content": "Hello there!"}]}] * 4)
    result = tune(None, model=str(tiny), data=[str(data)], method="lora", max_steps=1, output_dir=str(tmp_path / "o"),
                  export=["merged", "gguf"], gguf_quant="q4_k_m", gguf_source=str(smollm2_path()), threads=2)
    gguf_file = result.exported["gguf"]
    assert gguf_file == tmp_path / "o" / "model.gguf" and not list((tmp_path / "o").glob(".*gguf*"))
    kinds = tensor_types(gguf_file)
    assert kinds.get("Q4_K", 0) >= 8 and "F16" not in kinds, kinds  # really quantized, as Q4_K_M mixes types
    assert "q4_k_m:" in result.summary and "check: perplexity" in result.summary
    llm = llama_cpp.Llama(model_path=str(gguf_file), n_ctx=128, n_threads=2, verbose=False)
    try:
        ids, vocab = llm.tokenize(b"Hello", add_bos=False), llm.n_vocab()
        made = []
        for token in llm.generate(ids, temp=0.0, top_k=1):
            made.append(token)
            if len(made) == 6:
                break
    finally:
        llm.close()
    assert len(made) == 6 and all(0 <= t < vocab for t in made) and vocab == 49152

    from hanlin.plugins.quantizers.cli import quantize  # the tuning folder itself: its full-precision merged/ folder

    again = quantize(tmp_path / "o", "q8_0", tmp_path / "again.gguf", check=False, threads=2)
    assert again.source == str(tmp_path / "o" / "merged") and tensor_types(tmp_path / "again.gguf")["Q8_0"] >= 14


def test_q8_0_keeps_smollm2_perplexity_and_q4_0_loses_more(tmp_path: Path) -> None:
    """From the shipped Q4_1 file (llama.cpp dequantizes it to f32 first, so q8_0 is measured against those
    weights); the requantization itself is reported as a warning."""
    from hanlin.plugins.quantizers.gguf import GGUFQuantizer

    text = write_jsonl(tmp_path / "eval.jsonl", [{"text": PROSE}])
    options = {"eval_text": text, "threads": 2, "check_tokens": 160}
    q8 = GGUFQuantizer("q8_0").quantize(smollm2_path(), tmp_path / "q8.gguf", calib=None, options=options)
    q4 = GGUFQuantizer("q4_0").quantize(smollm2_path(), tmp_path / "q4.gguf", calib=None, options=options)
    (c8,), (c4,) = q8.checks, q4.checks
    assert c8.engine == "llama.cpp" and c8.tokens > 100 and c8.source == c4.source  # same file, same tokens
    assert abs(c8.increase) < 0.02 and c8.passed, q8.summary()
    assert c4.increase > abs(c8.increase) + 0.005, (c4.line(), c8.line())
    assert c4.passed  # within the default allowance for 4-bit; a tighter one fails the same measurement:
    assert not c4.model_copy(update={"max_increase": c4.increase / 2}).passed
    assert q8.flagged and "already quantized (Q4_1" in q8.warnings[0]
    assert q8.details["tensor_types"].get("Q8_0", 0) > 100 and q4.size_bytes_out < q8.size_bytes_out


def test_strict_exits_1_when_the_check_fails(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from hanlin.cli import app
    from hanlin.plugin_manager import plugins

    plugins().add_commands(app)
    text = tmp_path / "eval.txt"
    text.write_text(PROSE[:400])
    out = tmp_path / "q4.gguf"
    args = ["quantize", str(smollm2_path()), "--to", "q4_0", "--out", str(out), "--eval-text", str(text), "--threads", "2"]
    ran = CliRunner().invoke(app, [*args, "--max-increase", "0", "--strict"])
    assert ran.exit_code == 1, ran.output
    assert "DEGRADED beyond +0%" in ran.output and "flagged" in ran.output and out.is_file()
    ran = CliRunner().invoke(app, [*args, "--no-check", "--json"])  # flagged (a requantized source), not --strict
    assert ran.exit_code == 0, ran.output
    report = json.loads(ran.output)
    assert report["checks"] == [] and "already quantized" in report["warnings"][0] and report["method"] == "q4_0"


def test_imatrix_is_used_and_a_nan_layer_is_named(tmp_path: Path, tiny: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from hanlin.plugins.quantizers.gguf import GGUFQuantizer
    from hanlin.plugins.quantizers.imatrix import compute_imatrix

    calib = write_jsonl(tmp_path / "calib.jsonl", [{"text": PROSE[:300]},
                                                    {"messages": [{"role": "user", "content": "Where is the mill?"},
                                                                  {"role": "assistant", "content": "By the river."}]}])
    matrix = compute_imatrix(tiny, calib, threads=2)
    assert matrix.samples == 2 and not matrix.notes
    assert set(matrix.values) == {f"blk.{i}.{n}.weight" for i in (0, 1) for n in
                                  ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")}
    assert len(matrix.values["blk.0.ffn_down.weight"]) == 512 and min(matrix.values["blk.0.attn_q.weight"]) > 0
    options = {"check": False, "threads": 2, "tokenizer_gguf": str(smollm2_path())}
    plain = GGUFQuantizer("q4_k_m").quantize(tiny, tmp_path / "plain.gguf", calib=None, options=options)
    weighted = GGUFQuantizer("q4_k_m").quantize(tiny, tmp_path / "w.gguf", calib=None,
                                                options={**options, "imatrix": calib})
    assert weighted.calibration == str(calib) and any("importance matrix" in n for n in weighted.notes)
    assert (tmp_path / "plain.gguf").read_bytes() != (tmp_path / "w.gguf").read_bytes()  # the weights moved
    assert plain.size_bytes_out == weighted.size_bytes_out  # same types, other roundings

    broken = tmp_path / "broken"
    model = AutoModelForCausalLM.from_pretrained(str(tiny), dtype=torch.float32)
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[3, 0] = float("nan")  # only ffn_down of layer 1 sees it
    model.save_pretrained(str(broken))
    (broken / "tokenizer.json").write_bytes((tiny / "tokenizer.json").read_bytes())
    (broken / "tokenizer_config.json").write_bytes((tiny / "tokenizer_config.json").read_bytes())
    named = compute_imatrix(broken, calib, threads=2)
    assert [n.layer for n in named.notes] == ["blk.1.ffn_down.weight"] and named.notes[0].level == "warning"
    assert "blk.1.ffn_down.weight" not in named.values and "blk.1.ffn_up.weight" in named.values
