"""OpenAI's frequency and presence penalties on every runtime: the formula itself, then each runtime against an
independent reference (transformers' generate with a logits processor written here; llama-cpp-python called
directly), and the same numbers through the CLI."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from tests.conftest import requires_smollm2

torch = pytest.importorskip("torch")

from hanlin import GenerationParams  # noqa: E402
from hanlin.runtimes.sampling import ReplyCounts, penalize, sample_token, token_counts  # noqa: E402


class OpenAIPenalty:
    """The reference: a transformers logits processor over the tokens generated after the prompt."""

    def __init__(self, prompt_len: int, frequency: float, presence: float) -> None:
        self.prompt_len, self.frequency, self.presence = prompt_len, frequency, presence

    def __call__(self, input_ids, scores):
        for row, ids in enumerate(input_ids):
            for token in set(ids[self.prompt_len:].tolist()):
                count = int((ids[self.prompt_len:] == token).sum())
                scores[row, token] -= self.frequency * count + self.presence
        return scores


def test_the_formula_counts_only_what_each_row_wrote() -> None:
    counts = [token_counts(w, 8) for w in ([2, 2, 5], [2], [])]
    logits = penalize(torch.zeros(3, 8), counts, frequency=[0.5, 0.0, 1.0], presence=[0.25, 0.0, 1.0])
    want = torch.zeros(3, 8)
    want[0, 2], want[0, 5] = -(2 * 0.5 + 0.25), -(0.5 + 0.25)
    assert torch.equal(logits, want)  # row 1 has no penalty, row 2 has written nothing


class _Reads(list):
    """A token list that records which slices were read from it."""

    def __init__(self, items: list[int]) -> None:
        super().__init__(items)
        self.reads: list[slice] = []

    def __getitem__(self, key):  # type: ignore[no-untyped-def]
        if isinstance(key, slice):
            self.reads.append(key)
        return super().__getitem__(key)


def test_reply_counts_count_only_the_reply_and_only_what_is_new() -> None:
    """A decoding loop's counts equal a count from scratch at every step, yet each step reads only the tokens
    written since the last one (recounting the reply every token is quadratic host-to-device traffic)."""
    prompt, reply = [7, 7, 7], [1, 4, 1, 1, 6, 4]
    tokens, counts = _Reads(list(prompt)), ReplyCounts()
    for n, token in enumerate(reply, start=1):
        tokens.append(token)
        tokens.reads.clear()
        got = counts.of(tokens, len(prompt), 8, "cpu")
        assert tokens.reads == [slice(len(prompt) + n - 1, None)]  # the new token alone
        assert torch.equal(got, token_counts(reply[:n], 8))  # the prompt's 7s are not counted
    assert counts.of([1, 2], 0, 8, "cpu").tolist() == token_counts([1, 2], 8).tolist()  # a shorter list: counted anew


def test_a_penalty_turns_greedy_away_from_a_repeated_token() -> None:
    logits = torch.tensor([2.0, 1.75, 0.0])
    assert sample_token(logits, 0.0, None, None, None, written=[0]) == 0
    assert sample_token(logits, 0.0, None, None, None, written=[0], frequency_penalty=0.5) == 1
    assert sample_token(logits, 0.0, None, None, None, written=[0], presence_penalty=0.5) == 1
    assert logits.tolist() == [2.0, 1.75, 0.0]  # the caller's logits are not changed


def test_penalties_outside_openais_range_are_refused_by_name() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="frequency_penalty"):
        GenerationParams(frequency_penalty=2.5)
    from hanlin.runtimes.gpu.sequence import SamplingParams

    with pytest.raises(ValueError, match=r"presence_penalty must be in \[-2, 2\]"):
        SamplingParams(presence_penalty=-3.0)


def test_the_gpu_engine_penalizes_like_the_reference(tmp_path) -> None:
    """fp32 on CPU, so the engine's greedy tokens must equal transformers' with the reference processor exactly; a
    random tiny llama loops greedily, so the penalty changes what it writes."""
    import transformers

    from hanlin.runtimes.gpu.engine import Engine
    from hanlin.runtimes.gpu.sequence import SamplingParams
    from tests.test_gpu_runtime import _tiny

    if torch.cuda.is_available():
        pytest.skip("exact fp32 comparison: the CPU run; on a GPU the engine computes in bf16")
    _tiny("llama", tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    prompts = [[5, 17, 42, 7, 99, 3], list(range(30, 50))]
    engine = Engine(tmp_path, num_blocks=64, block_size=4, kernels="torch", max_batch_tokens=16)
    plain = engine.generate(prompts, SamplingParams(max_tokens=16, ignore_eos=True))
    penalized = engine.generate(prompts, SamplingParams(max_tokens=16, ignore_eos=True, frequency_penalty=1.5,
                                                        presence_penalty=0.5))
    assert plain != penalized
    for prompt, got in zip(prompts, penalized):
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=16, min_new_tokens=16, do_sample=False,
                          logits_processor=[OpenAIPenalty(len(prompt), 1.5, 0.5)])
        assert got == ref[0, len(prompt):].tolist()


@requires_smollm2
@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="pip install 'hanlin[transformers]'")
def test_the_transformers_runtime_penalizes_like_the_reference(tf_model) -> None:
    prompt = "1, 2, 1, 2, 1, 2,"
    ids = tf_model.tokenize(prompt, templated=False)

    def ours(**penalties) -> str:
        return "".join(c.text for c in tf_model.stream_prompt(prompt, max_tokens=20, temperature=0, **penalties))

    ref = tf_model._loaded().generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False,
                                      logits_processor=[OpenAIPenalty(len(ids), 1.0, 0.0)])
    want = tf_model.tokenizer.decode(ref[0, len(ids):], skip_special_tokens=True)
    assert ours(frequency_penalty=1.0) == want
    assert ours() != want  # unpenalized, SmolLM2 goes on counting "1, 2," to the end


@requires_smollm2
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="pip install 'hanlin[cpu]'")
def test_the_cpu_runtime_hands_the_penalties_to_llama_cpp(smollm2, raw_smollm2) -> None:
    prompt = "1, 2, 1, 2, 1, 2,"

    def ours(**penalties) -> str:
        return "".join(c.text for c in smollm2.stream_prompt(prompt, max_tokens=20, temperature=0, **penalties))

    raw = raw_smollm2.create_completion(prompt, max_tokens=20, temperature=0.0, frequency_penalty=1.0)
    assert ours(frequency_penalty=1.0) == raw["choices"][0]["text"]
    assert ours() != raw["choices"][0]["text"]


@requires_smollm2
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="pip install 'hanlin[cpu]'")
def test_the_cpu_runtime_counts_the_whole_reply_like_the_torch_runtimes() -> None:
    """The penalties mean the same on every runtime: greedy on llama.cpp's own logits, penalized by the torch
    function over every token of the reply, writes what the cpu runtime writes. llama-cpp-python's default counts
    only the last 64 tokens, which on this prompt changes the reply from its 25th token on. A model of its own: the
    session's shared one reuses cached prefixes, and llama.cpp's logits move by a hair with the batch they came in,
    enough to flip this prompt's near-ties."""
    import llama_cpp
    import numpy as np

    from hanlin import load_model
    from tests.conftest import smollm2_path

    prompt, n, frequency = "1, 2, 1, 2, 1, 2,", 160, 0.2
    model = load_model("smollm2-135m-instruct", runtime="cpu", n_ctx=512, n_threads=2)
    try:
        ours = "".join(c.text for c in model.stream_prompt(prompt, max_tokens=n, temperature=0,
                                                           frequency_penalty=frequency))
        prompt_ids = model.tokenize(prompt)
    finally:
        model.close()
    llm = llama_cpp.Llama(model_path=str(smollm2_path()), n_ctx=512, n_threads=2, logits_all=True, verbose=False)
    llm.eval(prompt_ids)
    counts, reply = ReplyCounts(), []
    for _ in range(n):
        logits = torch.from_numpy(np.array(llm.scores[llm.n_tokens - 1]))
        token = int(penalize(logits[None], [counts.of(reply, 0, len(logits), "cpu")], [frequency], [0.0])[0].argmax())
        if token == llm.token_eos():
            break
        reply.append(token)
        llm.eval([token])
    assert len(reply) > 64
    assert ours == llm.detokenize(reply).decode("utf-8", errors="replace")


@requires_smollm2
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="pip install 'hanlin[cpu]'")
def test_hanlin_run_complete_takes_the_penalties(smollm2) -> None:
    prompt = "1, 2, 1, 2, 1, 2,"
    want = "".join(c.text for c in smollm2.stream_prompt(prompt, max_tokens=20, temperature=0, frequency_penalty=1.0))
    cli = [sys.executable, "-c", "from hanlin.cli import main; main()", "run", "--complete", "-m",
           "smollm2-135m-instruct", "--max-tokens", "20"]
    run = subprocess.run([*cli, "--frequency-penalty", "1.0", prompt], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout == prompt + want + "\n"
    bad = subprocess.run([*cli, "--frequency-penalty", "3", prompt], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--frequency-penalty" in bad.stderr
