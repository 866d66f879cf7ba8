"""GGUF export from the HF folder alone (gguf_export): the file runs in llama.cpp with the torch model's outputs.

Real models both ways: SmolLM2 (converted once from its GGUF to an HF folder, then exported back) and tiny
random-weight llama / qwen2 / mistral models, the stand-in for "a tuned model". Prompts are tokenized once by
the HF tokenizer and the same ids fed to both engines, so weights are checked apart from tokenization; the
tokenizer is checked on its own by comparing llama.cpp's tokenization of text with the HF tokenizer's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hanlin import ConfigurationError
from tests.conftest import requires_llama, requires_smollm2

pytest.importorskip("gguf", reason="pip install 'hanlin[tune]'")
torch = pytest.importorskip("torch", reason="pip install 'hanlin[tune]'")
pytest.importorskip("transformers", reason="pip install 'hanlin[tune]'")

from hanlin.plugins.finetuners.gguf_export import export_gguf, pre_tokenizer_name  # noqa: E402

pytestmark = [requires_llama]

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


# ---- the two engines, greedy, on the same token ids ------------------------------------------------------
def torch_greedy(model, ids: list[int], n: int) -> tuple[list[int], list[float]]:
    """n greedy tokens (eos does not stop it) and the logits after the prompt."""
    out, past, x, first = [], None, torch.tensor([ids]), None
    with torch.no_grad():
        for _ in range(n):
            result = model(x, past_key_values=past, use_cache=True)
            past, logits = result.past_key_values, result.logits[0, -1]
            first = logits.tolist() if first is None else first
            out.append(int(logits.argmax()))
            x = torch.tensor([[out[-1]]])
    return out, first


def llama_greedy(path: Path, ids: list[int], n: int) -> tuple[list[int], list[float]]:
    import llama_cpp
    import numpy as np

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=2, verbose=False)

    def last():
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(llm.n_vocab(),)).copy()

    llm.eval(ids)
    first = last()
    out = []
    for _ in range(n):
        out.append(int(first.argmax() if not out else last().argmax()))
        llm.eval([out[-1]])
    llm.close()
    return out, first.tolist()


def prompt_ids(folder: Path) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    encoded = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=True, return_dict=True)
    return list(encoded["input_ids"])


# ---- SmolLM2: GGUF -> HF (the cached `smol_folder`) -> GGUF ------------------------------------------------
@pytest.fixture(scope="module")
def smollm2_gguf(smol_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # f16: half the bytes of f32 and, measured, the same 16 greedy tokens (logits within 0.05 of torch's fp32)
    return export_gguf(smol_folder, tmp_path_factory.mktemp("gguf") / "smollm2-f16.gguf", outtype="f16")


@pytest.fixture(scope="module")
def chat_ids(smol_folder: Path) -> list[int]:
    """The chat prompt as SmolLM2's HF tokenizer encodes it (every tiny model here shares that tokenizer)."""
    return prompt_ids(smol_folder)


@requires_smollm2
@pytest.mark.slow
def test_smollm2_export_generates_the_torch_models_greedy_tokens(smol_folder: Path, smollm2_gguf: Path,
                                                                 chat_ids: list[int]) -> None:
    from transformers import AutoModelForCausalLM

    ids = chat_ids
    model = AutoModelForCausalLM.from_pretrained(str(smol_folder), dtype=torch.float32)
    expected, _ = torch_greedy(model, ids, 16)
    got, _ = llama_greedy(smollm2_gguf, ids, 16)
    assert got == expected


@requires_smollm2
@pytest.mark.slow
def test_smollm2_export_tokenizes_and_renders_like_the_hf_tokenizer(smol_folder: Path, smollm2_gguf: Path) -> None:
    import llama_cpp
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(smol_folder))
    llm = llama_cpp.Llama(model_path=str(smollm2_gguf), n_ctx=64, vocab_only=True, verbose=False)
    meta = llm.metadata
    add_bos = meta["tokenizer.ggml.add_bos_token"] == "true"
    texts = ["What is 37 * 91 + 5? Use the calculator.", "naïve café 😀\n\n  indented\tx",
             "<|im_start|>user\nhi<|im_end|>", "I've 12345 THINGS'LL"]
    for text in texts:
        assert llm.tokenize(text.encode(), add_bos=add_bos, special=True) == tokenizer.encode(text), text
    assert int(meta["tokenizer.ggml.bos_token_id"]) == tokenizer.bos_token_id
    assert int(meta["tokenizer.ggml.eos_token_id"]) == tokenizer.eos_token_id
    assert meta["tokenizer.chat_template"] == tokenizer.chat_template
    assert "output.weight" not in _tensor_names(smollm2_gguf)  # tied embeddings: llama.cpp reuses them
    llm.close()


@requires_smollm2
@pytest.mark.slow
def test_exported_smollm2_answers_a_chat_on_the_cpu_runtime(smol_folder: Path, smollm2_gguf: Path) -> None:
    from transformers import AutoTokenizer

    from hanlin import load_model

    model = load_model(str(smollm2_gguf), runtime="cpu", n_ctx=512, n_threads=2)
    try:
        assert model.capabilities.chat_template
        rendered = AutoTokenizer.from_pretrained(str(smol_folder)).apply_chat_template(
            PROMPT, add_generation_prompt=True, tokenize=False
        )
        assert model.render([_message(m) for m in PROMPT]) == rendered
        reply = model.generate(PROMPT[0]["content"], max_tokens=16, temperature=0)
        assert "Paris" in reply.text
    finally:
        model.close()


# ---- tiny random-weight models ("a tuned tiny llama") ------------------------------------------------------
TINY = dict(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)


def tiny_model(kind: str, folder: Path, tokenizer_from: Path):
    """Save a random-weight model of ``kind`` with SmolLM2's tokenizer; weights scaled so logits are decisive."""
    import transformers

    configs = {
        "llama": lambda: transformers.LlamaConfig(**TINY, attention_bias=True, mlp_bias=True, tie_word_embeddings=False,
                                                  rope_parameters={"rope_type": "default", "rope_theta": 50000.0}),
        "qwen2": lambda: transformers.Qwen2Config(**TINY, tie_word_embeddings=True,
                                                  rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
        "mistral": lambda: transformers.MistralConfig(**TINY, sliding_window=None, tie_word_embeddings=False),
    }
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(configs[kind]()).float().eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1 + 0.2 * torch.randn_like(param))
            else:  # biases too, so a mis-mapped or un-permuted bias shows
                param.normal_(0, 0.15)
    model.save_pretrained(folder)
    for name in TOKENIZER_FILES:
        if (tokenizer_from / name).is_file():
            shutil.copy(tokenizer_from / name, folder / name)
    return model


@requires_smollm2
@pytest.mark.parametrize("kind", ["llama", "qwen2", "mistral"])
def test_tiny_random_model_export_matches_torch(kind: str, smol_folder: Path, chat_ids: list[int],
                                                tmp_path: Path) -> None:
    model = tiny_model(kind, tmp_path / kind, smol_folder)
    ids = chat_ids
    expected, expected_logits = torch_greedy(model, ids, 12)
    out = export_gguf(tmp_path / kind, tmp_path / f"{kind}.gguf", outtype="f32")
    got, got_logits = llama_greedy(out, ids, 12)
    worst = max(abs(a - b) for a, b in zip(got_logits, expected_logits))
    assert worst < 2e-3 * max(abs(x) for x in expected_logits), worst
    assert got == expected
    assert ("output.weight" in _tensor_names(out)) == (kind != "qwen2")  # qwen2 is built tied


@pytest.fixture(scope="module")
def tiny_llama_logits(smol_folder: Path, chat_ids: list[int], tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("tiny") / "llama"
    model = tiny_model("llama", folder, smol_folder)
    return folder, torch_greedy(model, chat_ids, 1)[1]


@requires_smollm2
@pytest.mark.parametrize("outtype", ["f16", "bf16", "q8_0"])
def test_smaller_types_stay_close_to_torch(outtype: str, tiny_llama_logits, chat_ids: list[int],
                                           tmp_path: Path) -> None:
    folder, expected = tiny_llama_logits
    _, got = llama_greedy(export_gguf(folder, tmp_path / "m.gguf", outtype=outtype), chat_ids, 1)
    worst = max(abs(a - b) for a, b in zip(got, expected))
    assert worst < 0.05 * max(abs(x) for x in expected), worst


# ---- errors -----------------------------------------------------------------------------------------------
def test_unsupported_architecture_names_the_supported_ones(tmp_path: Path) -> None:
    config = {"model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"]}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "tokenizer.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConfigurationError, match=r"supports the architectures llama, mistral, qwen2.*'gemma3_text'"):
        export_gguf(tmp_path, tmp_path / "out.gguf")
    assert not list(tmp_path.glob("*out.gguf*"))


def test_missing_files_are_named(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ConfigurationError, match=r"lacks tokenizer\.json, \*\.safetensors"):
        export_gguf(tmp_path, tmp_path / "out.gguf")
    with pytest.raises(ConfigurationError, match="does not exist"):
        export_gguf(tmp_path / "nowhere", tmp_path / "out.gguf")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(ConfigurationError, match="LoRA adapter.*merge"):
        export_gguf(adapter, tmp_path / "out.gguf")


def test_bad_outtype(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="f32, f16, bf16, q8_0.*'q4_k'"):
        export_gguf(tmp_path, tmp_path / "out.gguf", outtype="q4_k")


def test_pre_tokenizer_names() -> None:
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    assert pre_tokenizer_name(byte_level) == "gpt-2"
    digits = {"type": "Digits", "individual_digits": True}
    assert pre_tokenizer_name({"type": "Sequence", "pretokenizers": [digits, byte_level]}) == "smollm"
    # Qwen2.5's tokenizer.json (as transformers writes it when converting the Qwen GGUF), and Llama 3's
    qwen = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
            r"|\s+(?!\S)|\s+")
    llama3 = qwen.replace(r"\p{N}|", r"\p{N}{1,3}|")
    for regex, name in ((qwen, "qwen2"), (llama3, "llama-bpe")):
        split = {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}
        no_regex = dict(byte_level, use_regex=False)
        assert pre_tokenizer_name({"type": "Sequence", "pretokenizers": [split, no_regex]}) == name
    with pytest.raises(ConfigurationError, match="pre-tokenizer.*Whitespace.*convert_hf_to_gguf"):
        pre_tokenizer_name({"type": "Whitespace"})


@requires_smollm2
def test_a_failed_export_leaves_no_file(smol_folder: Path, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    tiny_model("llama", folder, smol_folder)
    spec = json.loads((folder / "tokenizer.json").read_text())
    spec["pre_tokenizer"] = {"type": "Whitespace"}
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ConfigurationError, match="pre-tokenizer"):
        export_gguf(folder, tmp_path / "out.gguf")
    assert not [p.name for p in tmp_path.iterdir() if "out.gguf" in p.name]


# ---- helpers ----------------------------------------------------------------------------------------------
def _tensor_names(path: Path) -> set[str]:
    """The tensor names in a GGUF file's header (gguf.GGUFReader takes ~9 s here: it parses every token)."""
    import struct

    def unpack(fh, fmt):
        return struct.unpack(fmt, fh.read(struct.calcsize(fmt)))[0]

    def skip_value(fh, kind):
        sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
        if kind == 8:
            fh.seek(unpack(fh, "<Q"), 1)
        elif kind == 9:
            item, count = unpack(fh, "<I"), unpack(fh, "<Q")
            if item in sizes:
                fh.seek(sizes[item] * count, 1)
            else:
                for _ in range(count):
                    skip_value(fh, item)
        else:
            fh.seek(sizes[kind], 1)

    with path.open("rb") as fh:
        assert fh.read(4) == b"GGUF"
        _version, n_tensors, n_kv = unpack(fh, "<I"), unpack(fh, "<Q"), unpack(fh, "<Q")
        for _ in range(n_kv):
            fh.seek(unpack(fh, "<Q"), 1)  # the key
            skip_value(fh, unpack(fh, "<I"))
        names = set()
        for _ in range(n_tensors):
            names.add(fh.read(unpack(fh, "<Q")).decode())
            fh.seek(8 * unpack(fh, "<I") + 4 + 8, 1)  # dims, type, offset
    return names


def _message(item: dict[str, str]):
    from hanlin import Message

    return Message(role=item["role"], content=item["content"])
