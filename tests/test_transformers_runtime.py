"""The transformers runtime on SmolLM2 (converted once from the packaged GGUF), checked against llama.cpp."""

from __future__ import annotations

import importlib.util

import pytest

from hanlin import ContextOverflowError, Message, ModelError, load_model
from tests.conftest import requires_smollm2, smollm2_path

pytestmark = [
    requires_smollm2,
    pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="pip install 'hanlin[transformers]'"),
]
PROMPT = [Message.user("What is the capital of France? Answer in one sentence.")]


@pytest.fixture(scope="module")
def tf_model():
    model = load_model("smollm2", runtime="transformers", threads=2)
    yield model
    model.close()


def test_greedy_generation(tf_model) -> None:
    completion = tf_model.generate(PROMPT, max_tokens=24, temperature=0)
    assert "Paris" in completion.text
    assert completion.usage.prompt_tokens > 0 and completion.usage.completion_tokens > 0


def test_streaming_equals_non_streaming(tf_model) -> None:
    whole = tf_model.generate(PROMPT, max_tokens=24, temperature=0)
    assert "".join(c.text for c in tf_model.stream(PROMPT, max_tokens=24, temperature=0)) == whole.text


def test_stop_and_length(tf_model) -> None:
    full = tf_model.generate(PROMPT, max_tokens=24, temperature=0).text
    stopped = tf_model.generate(PROMPT, max_tokens=24, temperature=0, stop=["Paris"])
    assert stopped.text == full[: full.index("Paris")] and stopped.finish_reason == "stop"
    short = tf_model.generate(PROMPT, max_tokens=3, temperature=0)
    assert short.finish_reason == "length" and short.usage.completion_tokens == 3


def test_seeded_sampling_is_reproducible(tf_model) -> None:
    a = tf_model.generate(PROMPT, max_tokens=12, temperature=1.0, top_p=0.9, top_k=50, seed=3).text
    assert a == tf_model.generate(PROMPT, max_tokens=12, temperature=1.0, top_p=0.9, top_k=50, seed=3).text


def test_logprobs_prefer_the_right_continuation(tf_model) -> None:
    right = sum(tf_model.logprobs("The capital of France is", " Paris"))
    wrong = sum(tf_model.logprobs("The capital of France is", " Tokyo"))
    assert right > wrong


def test_converted_folder_is_reused(tf_model) -> None:
    from hanlin.runtimes.transformers.convert import convert_gguf

    before = (tf_model.folder / "config.json").stat().st_mtime_ns
    assert convert_gguf(smollm2_path()) == tf_model.folder
    assert (tf_model.folder / "config.json").stat().st_mtime_ns == before


def test_context_overflow(tf_model) -> None:
    with pytest.raises(ContextOverflowError, match="context of"):
        tf_model.generate("word " * (tf_model.context_length + 10))


def test_corrupt_gguf_is_a_model_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HANLIN_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 4096)
    with pytest.raises(ModelError, match="transformers could not read"):
        load_model(str(bad), runtime="transformers")
    assert not list((tmp_path / "cache" / "hf").glob("bad-*"))  # no half-converted folder left behind


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="pip install 'hanlin[cpu]'")
def test_greedy_agrees_with_llama_cpp(tf_model, raw_smollm2) -> None:
    """Same prompt tokens; llama.cpp runs Q4_1 kernels while transformers runs the dequantized fp32 weights,
    so exact equality of long generations is not guaranteed: check the first tokens, then teacher-forced top-1
    agreement over llama.cpp's whole greedy continuation."""
    import torch

    text = tf_model.render(PROMPT)
    hf_ids = tf_model.tokenize(text)
    ll_ids = raw_smollm2.tokenize(text.encode(), add_bos=False, special=True)
    assert hf_ids == ll_ids, "both runtimes must see the same prompt tokens"
    raw_smollm2.reset()
    ll_out = []
    for token in raw_smollm2.generate(ll_ids, temp=0.0, repeat_penalty=1.0):
        if token == raw_smollm2.token_eos() or len(ll_out) == 24:
            break
        ll_out.append(token)
    with torch.inference_mode():
        logits = tf_model.model(input_ids=torch.tensor([hf_ids + ll_out])).logits[0]
    predicted = logits[len(hf_ids) - 1 : -1].argmax(-1).tolist()
    assert predicted[:4] == ll_out[:4], (tf_model.tokenizer.decode(predicted[:4]), tf_model.tokenizer.decode(ll_out[:4]))
    agreement = sum(a == b for a, b in zip(predicted, ll_out)) / len(ll_out)
    assert agreement >= 0.9, f"top-1 agreement {agreement:.2f}"
