"""examples/pretrain_tiny.py --quick runs as documented: stdlib source -> hanlin data pipeline -> BPE -> pre-train ->
held-out perplexity below the unigram baseline -> GGUF -> llama.cpp completion -> `hanlin run` finishes."""

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
    assert "llama.cpp greedy completion of the signature:\ndef read_config(path):" in out
    ran = re.search(r"\$ hanlin run --model \S+ .* -> exit (\d) \((answered|gave up)\)", out)
    assert ran, out  # answered or gave up: the run finished; exit 2 (error) fails here
