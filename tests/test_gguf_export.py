"""GGUF export: a tuned model written as GGUF loads in llama.cpp and gives the torch model's greedy tokens."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from hanlin import ConfigurationError
from tests.conftest import requires_llama, requires_smollm2, smollm2_path
from tests.test_finetune_data import tiny_llama, write_jsonl

pytestmark = [
    requires_smollm2, requires_llama,
    pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="pip install 'hanlin[tune]'"),
]
PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


def torch_greedy(folder: Path, ids: list[int], n: int, *, through_eos: bool = True) -> list[int]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, min_new_tokens=n if through_eos else 0)
    return out[0, len(ids):].tolist()


def llama_greedy(path: Path, ids: list[int], n: int, stop: int | None = None) -> list[int]:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=2, verbose=False)
    got = []
    for token in llm.generate(ids, temp=0.0, top_k=1):
        got.append(token)
        if len(got) == n or token == stop:
            break
    llm.close()
    return got


def test_tuned_tiny_llama_round_trips(tmp_path: Path, smol_folder) -> None:
    from transformers import AutoTokenizer

    from hanlin.plugins.finetuners.api import tune

    tiny = tiny_llama(tmp_path / "tiny", smol_folder, seed=3)
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": [{"role": "user", "content": "Hi"},
                                                            {"role": "assistant", "content": "Hello there!"}]}] * 4)
    result = tune(None, model=str(tiny), data=[str(data)], method="lora", max_steps=2, learning_rate=1e-2,
                  output_dir=str(tmp_path / "out"), export=["merged", "gguf"], gguf_type="f32",
                  gguf_source=str(smollm2_path()))
    gguf_file = result.exported["gguf"]
    assert gguf_file == tmp_path / "out" / "model.gguf"
    ids = AutoTokenizer.from_pretrained(str(tiny))(PROMPT, add_special_tokens=False)["input_ids"]
    assert llama_greedy(gguf_file, ids, 8) == torch_greedy(result.exported["merged"], ids, 8)


def test_smollm2_exports_to_a_gguf_hanlin_runs(tmp_path: Path, smol_folder) -> None:
    from transformers import AutoTokenizer

    from hanlin import load_model
    from hanlin.plugins.finetuners.gguf_export import export_gguf

    out = export_gguf(smol_folder, tmp_path / "smol" / "model.gguf", source_gguf=smollm2_path(), outtype="f16")
    tok = AutoTokenizer.from_pretrained(str(smol_folder))
    ids = tok(PROMPT, add_special_tokens=False)["input_ids"]
    ref = torch_greedy(smol_folder, ids, 12, through_eos=False)
    got = llama_greedy(out, ids, 12, stop=tok.eos_token_id)
    assert got == ref[: len(got)] and len(got) >= 6  # same tokens up to the end of the reply
    model = load_model(str(tmp_path / "smol"), runtime="cpu", n_ctx=512, n_threads=2)  # a folder holding a .gguf
    try:
        assert "Paris" in model.generate("What is the capital of France?", max_tokens=16, temperature=0).text
    finally:
        model.close()


def test_unexportable_model_is_refused_before_training(tmp_path: Path, smol_folder) -> None:
    import transformers

    from hanlin.plugins.finetuners.api import tune

    folder = tmp_path / "gemma"
    config = transformers.Gemma3TextConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    transformers.Gemma3ForCausalLM(config).save_pretrained(str(folder))
    # any tokenizer will do: the run stops before a token reaches the model
    transformers.AutoTokenizer.from_pretrained(str(smol_folder)).save_pretrained(str(folder))
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": "some text to learn " * 4}])
    with pytest.raises(ConfigurationError, match="GGUF export supports the architectures"):
        tune(None, model=str(folder), data=[str(data)], max_steps=1, output_dir=str(tmp_path / "o"),
             export=["gguf"], method="full")
    assert not (tmp_path / "o" / "metrics.jsonl").exists()  # refused before training
