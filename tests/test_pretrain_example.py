"""examples/pretrain_tiny.py --quick runs as documented: stdlib source -> hanlin data pipeline -> BPE -> pre-train ->
held-out perplexity below the unigram baseline -> GGUF -> llama.cpp completion -> `hanlin run`
continues the signature as plain text, as llama.cpp does."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from tests.test_examples import run_example

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("llama_cpp", "gguf", "tokenizers")),
    reason="the example needs llama-cpp-python, gguf and tokenizers: pip install 'hanlin[cpu,tune]'")


def test_pretrain_tiny_quick(tmp_path: Path) -> None:
    out = run_example("pretrain_tiny.py", "--out", str(tmp_path), "--quick", timeout=600)
    assert "data block exact_dedup:" in out and "data block pack:" in out
    found = re.search(r"held-out perplexity ([\d.]+) vs unigram baseline ([\d.]+)", out)
    assert found, out
    model_ppl, unigram_ppl = map(float, found.groups())
    assert model_ppl < unigram_ppl, out
    assert (tmp_path / "model" / "model.gguf").is_file()
    found = re.search(r"llama.cpp greedy completion of the signature \(frequency_penalty 0.5\):\n"
                      r"(def read_config\(path\):.*?)\n\$ hanlin run",
                      out, re.S)
    assert found, out
    llama_text = found.group(1)
    ran = re.search(r"\$ hanlin run --model \S+ --max-tokens 16 --frequency-penalty 0.5 .* -> exit (\d)\n(.*?)\n"
                    r"\(model has no chat template",
                    out, re.S)
    assert ran and ran.group(1) == "0", out
    # a base model is continued as plain text, token for token what llama.cpp writes (not an agent's chat prompt)
    assert ran.group(2) == llama_text, out
