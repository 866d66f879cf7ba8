"""The transformers runtime on SmolLM2 (converted once from the packaged GGUF), checked against llama.cpp.

The conversion (~35 s) happens once per cache folder: $HANLIN_CACHE when set,
else pytest's cache folder (kept between runs), else a session temp folder
(CI runs with -p no:cacheprovider). Torch runs on one thread: on a 2-core
machine shared with other work, torch's spin-waiting OpenMP workers make two
threads up to 10x slower than one.
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading

import pytest

from hanlin import ConfigurationError, ContextOverflowError, Message, ModelError, get_plugin_manager, load_model
from tests.conftest import requires_smollm2, smollm2_path

pytestmark = [
    requires_smollm2,
    pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="pip install 'hanlin[transformers]'"),
]
PROMPT = [Message.user("What is the capital of France? Answer in one sentence.")]


@pytest.fixture(scope="session")
def greedy(tf_model):
    """The reference greedy completion most tests compare against."""
    return tf_model.generate(PROMPT, max_tokens=24, temperature=0)


def test_registration_loses_to_cpu_for_gguf() -> None:
    pm = get_plugin_manager()
    spec = pm.get("runtimes", "transformers")
    assert spec.formats == frozenset({"hf", "gguf"}) and spec.extra == "transformers"
    assert spec.available() is None
    assert spec.priority > pm.get("runtimes", "cpu").priority  # llama.cpp serves GGUF when both are installed


def test_missing_torch_names_the_extra(monkeypatch) -> None:
    from hanlin.runtimes.transformers import plugin

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    assert "pip install 'hanlin[transformers]'" in plugin.available()


def test_greedy_generation(tf_model, greedy) -> None:
    assert "Paris" in greedy.text and greedy.finish_reason == "stop"
    prompt_tokens = len(tf_model.tokenize(tf_model.render(PROMPT)))
    assert greedy.usage.prompt_tokens == greedy.usage.prompt_tokens_evaluated == prompt_tokens
    assert greedy.usage.prompt_tokens_reused == 0 and 0 < greedy.usage.completion_tokens < 24


def test_streaming_equals_non_streaming(tf_model, greedy) -> None:
    chunks = list(tf_model.stream(PROMPT, max_tokens=24, temperature=0))
    texts = [c.text for c in chunks if c.text]
    assert len(texts) >= 3, "tokens must arrive one by one, not as one block"
    assert "".join(texts) == greedy.text
    assert chunks[-1].finish_reason == "stop" and chunks[-1].usage == greedy.usage

    async def collect() -> str:
        return "".join([c.text async for c in tf_model.astream(PROMPT, max_tokens=24, temperature=0)])

    assert asyncio.run(collect()) == greedy.text


def test_stop_sequence_split_across_tokens(tf_model, greedy) -> None:
    """A stop string that starts inside one token and ends inside another is cut, never streamed."""
    pieces = [tf_model.tokenizer.decode([t]) for t in tf_model.tokenize(greedy.text, templated=True)]
    assert len(pieces) >= 4 and all(len(p) >= 2 for p in pieces[1:3])
    start = len(pieces[0]) + 1  # second character of the second token ...
    stop = greedy.text[start : len(pieces[0]) + len(pieces[1]) + len(pieces[2]) - 1]  # ... to inside the third
    chunks = [c.text for c in tf_model.stream(PROMPT, max_tokens=24, temperature=0, stop=[stop])]
    assert "".join(chunks) == greedy.text[:start]
    assert not any(stop in c for c in chunks)
    result = tf_model.generate(PROMPT, max_tokens=24, temperature=0, stop=["zzz-not-there", stop])
    assert result.text == greedy.text[:start] and result.finish_reason == "stop"


def test_max_tokens_is_length(tf_model, greedy) -> None:
    short = tf_model.generate(PROMPT, max_tokens=3, temperature=0)
    assert short.finish_reason == "length" and short.usage.completion_tokens == 3
    assert greedy.text.startswith(short.text) and short.text


def test_seeded_sampling(tf_model) -> None:
    args = dict(max_tokens=12, temperature=1.5, top_p=0.95, top_k=0)
    assert tf_model.generate(PROMPT, seed=3, **args).text == tf_model.generate(PROMPT, seed=3, **args).text
    assert len({tf_model.generate(PROMPT, seed=s, **args).text for s in range(4)}) > 1, "seeds must change samples"


def test_raw_prompt_completion(tf_model) -> None:
    out = "".join(c.text for c in tf_model.stream_prompt("The capital of France is", max_tokens=6, temperature=0))
    assert "Paris" in out


def test_logprobs(tf_model) -> None:
    right = tf_model.logprobs("The capital of France is", " Paris")
    assert sum(right) > sum(tf_model.logprobs("The capital of France is", " Tokyo"))
    assert all(lp <= 0 for lp in right)
    reply = tf_model.logprobs(PROMPT, "The capital of France is Paris.")
    assert len(reply) == len(tf_model.tokenize("The capital of France is Paris.", templated=True))
    assert sum(reply) > sum(tf_model.logprobs(PROMPT, "The capital of France is Berlin."))
    with pytest.raises(ConfigurationError, match="non-empty continuation"):
        tf_model.logprobs("The capital", "")


def test_concurrent_calls_match_sequential(tf_model, greedy) -> None:
    results: list[str] = []

    def call() -> None:
        results.append(tf_model.generate(PROMPT, max_tokens=24, temperature=0).text)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [greedy.text, greedy.text]


def test_converted_folder_is_reused(tf_model, tf_cache, greedy) -> None:
    from hanlin.runtimes.gguf_convert import convert_gguf

    folder = tf_model.folder
    assert folder.parent == tf_cache / "hf" and folder.name.startswith("SmolLM2-135M-Instruct.Q4_1-")
    before = (folder / "model.safetensors").stat().st_mtime_ns
    assert convert_gguf(smollm2_path(), tf_cache) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == before
    assert not list(folder.parent.glob(f".{folder.name}-*")), "no temp folder left behind"
    # The cached folder is an ordinary HF model: it loads by path, and answers the same.
    again = load_model(str(folder), runtime="transformers")
    try:
        assert again.generate(PROMPT, max_tokens=24, temperature=0).text == greedy.text
    finally:
        again.close()


def test_context_overflow(tf_model) -> None:
    with pytest.raises(ContextOverflowError, match=f"context of {tf_model.context_length}"):
        tf_model.generate("word " * (tf_model.context_length + 10))


def test_unknown_option_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="does not take n_ctx"):
        load_model("smollm2", runtime="transformers", n_ctx=2048)


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_corrupt_gguf_is_a_model_error(tmp_path, kind) -> None:
    cache = tmp_path / "cache"
    bad = tmp_path / "bad.gguf"
    if kind == "garbage":
        bad.write_bytes(b"GGUF" + b"\0" * 4096)
    else:  # a real header, then the tensor data stops
        with smollm2_path().open("rb") as fh:
            bad.write_bytes(fh.read(20_000_000))
    with pytest.raises(ModelError, match="transformers could not read .*bad.gguf"):
        load_model(str(bad), runtime="transformers", cache_dir=cache)
    assert not [p for p in (cache / "hf").iterdir() if not p.name.endswith(".lock")], "no half-converted folder"


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="pip install 'hanlin[cpu]'")
def test_greedy_agrees_with_llama_cpp(tf_model) -> None:
    """Both runtimes see the same prompt tokens. llama.cpp computes with Q4_1 kernels (activations quantized to
    8 bits for the dot products) while transformers runs the dequantized weights in fp32, so their logits differ
    a little (measured: mean |diff| ~0.16 against a logit spread of ~6) and where two tokens are nearly tied the
    argmax can flip. So: the first tokens of the greedy output must match exactly; over teacher-forced positions
    (both read the same tokens, each picks its argmax from its own logits) top-1 agreement must be high, and every
    disagreement must be a near tie in both models. A broken conversion (weights, RoPE, tokenizer) fails all three."""
    import llama_cpp
    import numpy as np
    import torch

    llm = llama_cpp.Llama(model_path=str(smollm2_path()), n_ctx=2048, verbose=False, logits_all=True, n_threads=1)
    try:
        text = tf_model.render(PROMPT)
        prompt = tf_model.tokenize(text)
        assert prompt == llm.tokenize(text.encode(), add_bos=False, special=True), "same prompt tokens"
        ll_out = []
        for token in llm.generate(prompt, temp=0.0, repeat_penalty=1.0):
            if token == llm.token_eos() or len(ll_out) == 24:
                break
            ll_out.append(token)
        first = llm.detokenize(ll_out[:4]).decode()
        assert tf_model.generate(PROMPT, max_tokens=24, temperature=0).text.startswith(first), first

        more = (" Paris is known for the Eiffel Tower, the Louvre museum and its cafes. The river Seine flows through"
                " it. More than two million people live in the city, and many more visit it every year.")
        sequence = prompt + ll_out + tf_model.tokenize(more, templated=True)
        llm.reset()
        llm.eval(sequence)
        ll_logits = np.asarray(llm.scores[len(prompt) - 1 : len(sequence) - 1], dtype=np.float32)
    finally:
        llm.close()
    with torch.inference_mode():
        hf_logits = tf_model.model(input_ids=torch.tensor([sequence])).logits[0, len(prompt) - 1 : -1].float().numpy()
    ll_top, hf_top = ll_logits.argmax(-1), hf_logits.argmax(-1)
    agreement = float((ll_top == hf_top).mean())
    assert len(ll_top) >= 50 and agreement >= 0.85, f"top-1 agreement {agreement:.2f} over {len(ll_top)} positions"
    for i in np.flatnonzero(ll_top != hf_top):
        a, b = hf_top[i], ll_top[i]
        assert ll_logits[i, b] - ll_logits[i, a] < 0.5 and hf_logits[i, a] - hf_logits[i, b] < 0.5, (
            f"position {i}: transformers picks {tf_model.tokenizer.decode([a])!r}, llama.cpp "
            f"{tf_model.tokenizer.decode([b])!r}, and it is not a near tie"
        )
    assert np.abs(ll_logits - hf_logits).mean() < 0.1 * hf_logits.std()


def test_scoring_keeps_only_the_scored_rows_and_survives_models_that_slice_themselves(tmp_path) -> None:
    """transformers 5 documents a 2-D boolean logits_to_keep (modeling_utils.slice_logits_to_keep: the True
    positions, flattened), which _score_batch passes so only scored rows reach the LM head. A model that slices it
    the older way (hidden[:, logits_to_keep, :]) raises IndexError on it: scoring must fall back to every position's
    logits and give the same numbers."""
    import types

    torch = pytest.importorskip("torch")
    import transformers

    from hanlin.runtimes.scoring import pair_ids
    from hanlin.runtimes.transformers.model import TransformersChatModel

    cfg = transformers.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    kept: list[int] = []

    class Documented(torch.nn.Module):  # the model as transformers 5 ships it, counting the LM-head rows
        def forward(self, **kwargs):
            out = hf(**kwargs)
            kept.append(out.logits.shape[0] if out.logits.ndim == 2 else -1)
            return out

    class SlicesItself(torch.nn.Module):  # the older pattern: hidden_states[:, logits_to_keep, :]
        def forward(self, logits_to_keep=0, **kwargs):
            if isinstance(logits_to_keep, torch.Tensor) and logits_to_keep.ndim == 2:
                raise IndexError("too many indices for tensor of dimension 3")
            return hf(**kwargs)

    def runtime(model) -> TransformersChatModel:
        rt = object.__new__(TransformersChatModel)
        rt.model, rt.device, rt._lock = model, "cpu", threading.Lock()
        rt.tokenizer = types.SimpleNamespace(pad_token_id=0)
        return rt

    def split(text: str) -> list[int]:
        return [ord(c) % 100 for c in text]

    pairs = [pair_ids("abcdef", "ghij", split, split), pair_ids("xy", "zzzzzz", split, split)]
    with torch.no_grad():
        full = [torch.log_softmax(hf(input_ids=torch.tensor([p.ids])).logits[0].float(), -1) for p in pairs]
    expected = [[full[i][r, t].item() for r, t in zip(p.rows, p.targets)] for i, p in enumerate(pairs)]
    got = runtime(Documented())._score_batch(pairs)
    assert kept == [sum(len(p.targets) for p in pairs)]  # the documented form: only the scored rows, one call
    fallback = runtime(SlicesItself())._score_batch(pairs)
    for values, want in ((got, expected), (fallback, expected)):
        for a, b in zip(values, want):
            assert a == pytest.approx(b, abs=1e-4)
