"""Token healing of raw prompts that end in whitespace (hanlin.runtimes.token_healing), on each local runtime.

The claim each runtime must meet: the reply to "The capital of France is " is what the model writes after "The
capital of France is" once it has written the space again, minus that space. Unhealed, SmolLM2 answers
"21st-century Paris" (it has rarely seen a lone space token before a word)."""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest

from hanlin import GenerationParams
from hanlin.runtimes.token_healing import heals, whitespace_tail
from tests.conftest import requires_smollm2

PROMPT = "The capital of France is "
LONE = "The answer is 4 "  # SmolLM2 continues "The answer is 4" with "." (no space): healing must steer it


def test_whitespace_tail_counts_only_trailing_whitespace_tokens() -> None:
    texts = {1: b"def", 2: b"):", 3: b"\n", 4: b"    ", 5: b"", 6: b" x"}
    assert whitespace_tail([1, 2, 3, 4], texts.get) == 2
    assert whitespace_tail([1, 2, 6], texts.get) == 0  # a word with its space is not a tail
    assert whitespace_tail([3, 4, 4], texts.get) == 2  # never the whole prompt
    assert whitespace_tail([5, 3], texts.get) == 1
    assert whitespace_tail([1] + [4] * 12, texts.get) == 8
    assert whitespace_tail([1, 2, 3], {1: "a", 2: "\t", 3: " "}.get) == 2  # str texts (HF tokenizers) too


def test_a_constraint_turns_healing_off_and_a_stop_string_does_not() -> None:
    from hanlin import Constraint

    assert heals(GenerationParams(stop=["\n"]))  # cut before the runtimes look for stop strings
    assert not heals(GenerationParams(constraint=Constraint(grammar='root ::= "a"')))


def _text(model, prompt: str, **params) -> str:
    return "".join(c.text for c in model.stream_prompt(prompt, max_tokens=6, temperature=0, **params))


def _unhealed(model, prompt: str) -> str:
    """The runtime's own decoding of the whole prompt, as before healing (its internal entry point)."""
    from hanlin.runtimes.tool_calls import ToolPlan

    params = GenerationParams(max_tokens=6, temperature=0)
    if hasattr(model, "_submit"):  # gpu
        chunks = model._collect(model._submit(model.prompt.tokenize(prompt, templated=False), params), params,
                                ToolPlan())
    elif hasattr(model, "prompt"):  # transformers
        chunks = model._stream_tokens(model.tokenize(prompt, templated=False), params, ToolPlan())
    else:  # cpu
        chunks = model._stream_tokens(model.tokenize(prompt), params, ToolPlan())
    return "".join(c.text for c in chunks)


@requires_smollm2
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="pip install 'hanlin[cpu]'")
def test_the_cpu_runtime_heals_like_llama_cpp_under_the_grammar(smollm2, raw_smollm2) -> None:
    import llama_cpp

    from hanlin.runtimes.token_healing import healing_grammar

    ours = _text(smollm2, PROMPT)
    grammar = llama_cpp.LlamaGrammar.from_string(healing_grammar(" "), verbose=False)
    held = raw_smollm2.create_completion(PROMPT[:-1], max_tokens=10, temperature=0.0,
                                         grammar=grammar)["choices"][0]["text"]
    assert ours and held.startswith(" " + ours)
    assert ours.startswith("Paris")
    plain = raw_smollm2.create_completion(PROMPT, max_tokens=6, temperature=0.0)["choices"][0]["text"]
    assert not plain.startswith("Paris")
    assert _unhealed(smollm2, PROMPT) == plain  # the runtime itself, unhealed, writes what llama.cpp does
    # a one-line completion: the stop string is looked for after the tail is cut, so "\n" inside it does not stop
    assert _text(smollm2, "def add(a, b):\n    ", stop=["\n"]).strip()


@requires_smollm2
@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="pip install 'hanlin[transformers]'")
def test_the_transformers_runtime_heals_with_a_token_mask(tf_model) -> None:
    """After "The answer is 4" SmolLM2's own first choice is "." (no space), so the mask has to act: the healed
    reply must begin with the best token that writes the space again, found here from the model's logits."""
    import torch

    assert not _text(tf_model, LONE[:-1]).startswith(" ")
    ours = _text(tf_model, LONE)
    ids = tf_model.tokenize(LONE[:-1], templated=False)
    with torch.no_grad():
        logits = tf_model._loaded()(torch.tensor([ids])).logits[0, -1]
    texts = [tf_model.tokenizer.decode([i]) for i in range(logits.shape[0])]
    best = max((i for i, t in enumerate(texts) if t.startswith(" ") and len(t) > 1), key=lambda i: logits[i])
    assert (" " + ours).startswith(texts[best])
    assert _text(tf_model, PROMPT).startswith("Paris")
    assert _unhealed(tf_model, PROMPT) != _text(tf_model, PROMPT)  # unhealed, as SmolLM2 writes it
    assert _text(tf_model, "def add(a, b):\n    ", stop=["\n"]).strip()


@requires_smollm2
@pytest.mark.skipif(importlib.util.find_spec("xgrammar") is None, reason="pip install 'hanlin[gpu]'")
def test_the_gpu_runtime_heals_with_an_xgrammar_grammar(tf_cache, tf_model) -> None:
    """The same replies as the transformers runtime (both fp32 on this machine), through a grammar instead of a
    mask."""
    from hanlin import load_model

    gpu = load_model("smollm2", runtime="gpu", cache_dir=tf_cache, num_blocks=64, dtype="float32")
    try:
        for prompt in (PROMPT, LONE):
            assert _text(gpu, prompt) == _text(tf_model, prompt)
        assert _text(gpu, LONE) != _unhealed(gpu, LONE)
        assert _text(gpu, "def add(a, b):\n    ", stop=["\n"]) == _text(tf_model, "def add(a, b):\n    ", stop=["\n"])
        gpu.capabilities = dataclasses.replace(gpu.capabilities, constraints=frozenset())  # as without xgrammar
        assert _text(gpu, LONE) == _unhealed(gpu, LONE)  # not healed, rather than failing to import it
    finally:
        gpu.close()


def test_next_line_tasks_end_in_the_first_statements_indentation() -> None:
    from hanlin.runtimes.cpu.bench_healing import next_line_tasks

    tasks = next_line_tasks(12)
    assert len(tasks) == 12
    for prompt, target in tasks:
        indent = prompt[prompt.rindex("\n") + 1 :]
        assert indent and indent.isspace() and target and not target[0].isspace()
        assert prompt.lstrip().startswith(("def ", "@"))


@requires_smollm2
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="pip install 'hanlin[cpu]'")
def test_the_healing_bench_measures_both_decodings_on_the_same_tasks() -> None:
    from hanlin.runtimes.cpu.bench_healing import bench_healing

    table = bench_healing("smollm2-135m-instruct", n=12)
    (_, healed_label, n1, healed, *_), (_, plain_label, n2, plain, *_) = table.rows
    assert (healed_label, plain_label, n1, n2) == ("hanlin (healed)", "same runtime, not healed", 12, 12)
    assert healed < plain and table.met  # SmolLM2 too indents past the block after a lone indentation token
