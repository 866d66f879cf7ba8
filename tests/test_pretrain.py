"""hanlin pretrain: a from-scratch model learns, resumes on the same curve, exports to a GGUF llama.cpp runs, and
bad settings say what is wrong. Real tiny llamas (the "1m" preset), a real BPE tokenizer fitted to the test corpus
(a folder like any other: SmolLM2's works the same, but its 49k-token head makes every step slower), real packed
shards."""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from hanlin import ConfigurationError
from tests.conftest import requires_llama

CORPUS = [f'def scale_{i}(values, factor={i}):\n    """Multiply every value by {i}."""\n    return [v * factor for v in '
          'values]\n' for i in range(60)] + [f"class Point{i}:\n    def __init__(self, x, y):\n        self.x = x\n"
                                             "        self.y = y\n" for i in range(60)]


def write_packed(folder: Path, tokenizer_folder: Path, texts: list[str], seq_len: int = 64) -> Path:
    from transformers import AutoTokenizer

    from hanlin.plugins.data.packed import PackedWriter

    tok = AutoTokenizer.from_pretrained(str(tokenizer_folder))
    with PackedWriter(folder, tokenizer=str(tokenizer_folder), seq_len=seq_len, eos_id=tok.eos_token_id,
                      vocab_size=len(tok)) as writer:
        for text in texts:
            writer.add(tok(text, add_special_tokens=False)["input_ids"])
    return folder


@pytest.fixture(scope="module")
def bpe_packed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The corpus packed with a BPE tokenizer fitted to it (no borrowed piece at all)."""
    from hanlin.plugins.finetuners.pretrain_tokenizer import train_tokenizer

    folder = tmp_path_factory.mktemp("bpe")
    return write_packed(folder / "packed", train_tokenizer(CORPUS, folder / "tok", vocab_size=400), CORPUS)


def settings(out: Path, packed: Path, **extra) -> dict:
    return {"data": str(packed), "preset": "1m", "output_dir": str(out), "batch_size": 4, "learning_rate": 3e-3,
            "export": [], "threads": 1, **extra}


def test_a_sequence_row_restarts_positions_and_targets_at_each_document() -> None:
    from hanlin.plugins.finetuners.pretrain_data import sequence_row

    row = sequence_row([5, 6, 0, 7, 8, 9, 0, 3], [2, 6])  # a continued doc [5 6], then [0 7 8 9], then [0 3]
    assert row.position_ids == [0, 1, 0, 1, 2, 3, 0, 1]
    assert row.targets == [6, -100, 7, 8, 9, -100, 3, -100]
    assert sequence_row([1, 2, 3], []).targets == [2, 3, -100]


def test_held_out_sequences_are_a_tail_or_a_folder_evenly_thinned() -> None:
    from hanlin.plugins.finetuners.pretrain_data import split

    assert split(range(10), None, 0.3) == (list(range(7)), range(10), [7, 8, 9])
    train, source, held = split(range(10), range(100), 0.0, limit=4)
    assert train == list(range(10)) and source == range(100) and held == [0, 25, 50, 75]
    with pytest.raises(ConfigurationError, match="leaves none to train on"):
        split(range(3), None, 0.9)


def test_a_packed_row_trains_as_its_documents_alone(smol_folder: Path) -> None:
    """Per-document attention: the summed loss of a row with three documents equals the three documents' losses
    computed one by one (a token attending across a boundary would change it)."""
    import torch

    from hanlin.plugins.finetuners.losses import token_loss_sum
    from hanlin.plugins.finetuners.packing import collate
    from hanlin.plugins.finetuners.pretrain import PretrainTrainer
    from hanlin.plugins.finetuners.pretrain_config import PRESETS, architecture, load_pretrain_config
    from hanlin.plugins.finetuners.pretrain_data import sequence_row
    from hanlin.plugins.finetuners.varlen_attention import use_varlen_attention

    cfg = load_pretrain_config(None, data="unused", preset="1m")
    model = PretrainTrainer._new_model(architecture(cfg, 64, 64, 1, 2), seed=1)
    use_varlen_attention(model)
    docs = [[11, 12, 13, 2], [21, 22, 23, 24, 25, 2], [31, 32, 33]]
    whole, n = token_loss_sum(model, collate([sequence_row(sum(docs, []), [4, 10])], 0), False)
    alone = [token_loss_sum(model, collate([sequence_row(d, [0])], 0), False) for d in docs]
    assert n == sum(k for _, k in alone) == 10
    assert torch.allclose(whole, sum(loss for loss, _ in alone), rtol=1e-5)
    assert PRESETS["1m"]["hidden_size"] == model.config.hidden_size


@pytest.fixture(scope="module")
def trained(bpe_packed: Path, tmp_path_factory: pytest.TempPathFactory):
    """One short run through the plugin manager's 'pretrain' method, shared by the tests that read its results."""
    from hanlin.loading import tune

    out = tmp_path_factory.mktemp("pretrain") / "run"
    exports = ["merged", "gguf"] if importlib.util.find_spec("gguf") else ["merged"]
    return out, tune(None, method="pretrain", **settings(out, bpe_packed, max_steps=30, eval_split=0.1, export=exports,
                                                          gguf_type="f32", learning_rate=5e-3))


def test_loss_falls_from_scratch_and_beats_the_unigram_baseline(trained) -> None:
    out, result = trained
    assert result.steps == 30
    first, last = sum(result.losses[:3]) / 3, sum(result.losses[-3:]) / 3
    assert last < first - 2.5, result.losses  # from ~ln(400) = 6.0 down by more than 2.5 nats
    final = result.eval[-1]
    assert final["eval_ppl"] < 0.5 * final["unigram_ppl"], final
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 30 and all(0 < r["mfu"] < 1 for r in records)
    assert "held-out perplexity" in result.summary


def test_continued_pretraining_starts_from_the_models_weights(trained, bpe_packed: Path, tmp_path: Path) -> None:
    """--init-from loads an HF folder (here the run above's export) and trains it further: its first loss is the
    trained model's, not a fresh model's ~ln(vocab)."""
    from hanlin.plugins.finetuners.pretrain import pretrain

    _, first_run = trained
    result = pretrain(None, **settings(tmp_path / "more", bpe_packed, max_steps=2, preset="tiny",
                                       init_from=str(first_run.exported["merged"])))
    assert result.losses[0] < first_run.losses[0] - 2.0, (result.losses, first_run.losses[:3])
    assert "continued" in result.summary


def test_resume_continues_the_same_curve(tmp_path: Path, bpe_packed: Path) -> None:
    from hanlin.plugins.finetuners.pretrain import PretrainTrainer
    from hanlin.plugins.finetuners.pretrain_config import load_pretrain_config

    straight = PretrainTrainer(load_pretrain_config(None, **settings(tmp_path / "a", bpe_packed, max_steps=8))).train()
    cfg = load_pretrain_config(None, **settings(tmp_path / "b", bpe_packed, max_steps=8, save_every=4))
    killed = PretrainTrainer(cfg).train(stop_after=4)
    resumed = PretrainTrainer(cfg).train(resume=True)
    assert killed.losses == pytest.approx(straight.losses[:4], rel=1e-5)
    assert resumed.resumed_from == 4 and resumed.steps == 8
    assert resumed.losses == pytest.approx(straight.losses[4:], rel=1e-4)


def test_gradient_accumulation_trains_as_the_larger_batch(tmp_path: Path, bpe_packed: Path) -> None:
    """2 micro-batches of 2 rows per step give the losses of 1 batch of 4 (the loss is normalised per step)."""
    from hanlin.plugins.finetuners.pretrain import PretrainTrainer
    from hanlin.plugins.finetuners.pretrain_config import load_pretrain_config

    whole = PretrainTrainer(load_pretrain_config(None, **settings(tmp_path / "a", bpe_packed, max_steps=3))).train()
    accumulated = PretrainTrainer(load_pretrain_config(None, **settings(tmp_path / "b", bpe_packed, max_steps=3,
                                                                        batch_size=2, grad_accum=2))).train()
    assert accumulated.losses == pytest.approx(whole.losses, rel=1e-4)


# In a fresh process: the allocator setting is process-wide and one-way. Trains two steps, then counts the page
# faults of a buffer that every step of a loop allocates and frees (64 MiB, a 2048 x 8192 fp32 logits chunk).
ALLOCATOR_PROBE = """
import json, resource, sys
import torch
from hanlin.plugins.finetuners import cpu_allocator
from hanlin.plugins.finetuners.pretrain import PretrainTrainer
from hanlin.plugins.finetuners.pretrain_config import load_pretrain_config
before = cpu_allocator.applied()
PretrainTrainer(load_pretrain_config(None, **json.loads(sys.argv[1]))).train()
torch.ones(16 * 2**20).sum()
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    torch.ones(16 * 2**20).sum()
print(json.dumps({"before": before, "after": cpu_allocator.applied(),
                  "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start}))
"""


def huge_pages_always() -> bool:
    """Transparent huge pages for every mapping: a 64 MiB mapping then faults in 32 pieces, not 16,384."""
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return thp.is_file() and "[always]" in thp.read_text()


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
@pytest.mark.skipif(huge_pages_always(), reason="counts 4 KiB page faults; this kernel maps huge pages everywhere")
def test_a_cpu_run_keeps_freed_memory_so_each_step_faults_no_pages_in(tmp_path: Path, bpe_packed: Path) -> None:
    """The loop raises glibc's thresholds when it starts on a CPU: a buffer freed by one step is reused by the next
    instead of being unmapped and faulted in again (16,384 faults per 64 MiB); HANLIN_KEEP_FREED_MEMORY=0 leaves
    the allocator as it was."""
    def probe(name: str, **env: str) -> dict:
        args = json.dumps(settings(tmp_path / name, bpe_packed, max_steps=2))
        out = subprocess.run([sys.executable, "-c", ALLOCATOR_PROBE, args], capture_output=True, text=True,
                             env={**os.environ, **env}, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout.splitlines()[-1])

    kept, plain = probe("kept", HANLIN_KEEP_FREED_MEMORY="1"), probe("plain", HANLIN_KEEP_FREED_MEMORY="0")
    assert (kept["before"], kept["after"], plain["after"]) == (False, True, False)
    assert plain["faults"] > 8 * 10_000, plain  # each 64 MiB buffer mapped and faulted in anew
    assert kept["faults"] < plain["faults"] / 20, (kept, plain)


def test_the_allocator_is_left_alone_off_a_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from hanlin.plugins.finetuners import cpu_allocator

    monkeypatch.setattr(cpu_allocator, "_applied", None)
    assert cpu_allocator.keep_freed_memory("cuda:0") is False and cpu_allocator._applied is None
    monkeypatch.setenv("HANLIN_KEEP_FREED_MEMORY", "0")
    assert cpu_allocator.keep_freed_memory("cpu") is False and cpu_allocator._applied is None


def test_compiled_layers_train_as_the_eager_ones_and_save_the_same_keys(tmp_path: Path, bpe_packed: Path) -> None:
    """--compile: each decoder layer goes through torch.compile (inductor writes C++ here), the varlen attention
    stays out of the graph, and a run gives the eager run's losses with a checkpoint whose keys are the eager ones
    (no ``_orig_mod.`` prefix that an exporter or a resume would trip on)."""
    from hanlin.plugins.finetuners.pretrain import PretrainTrainer
    from hanlin.plugins.finetuners.pretrain_config import load_pretrain_config

    eager = PretrainTrainer(load_pretrain_config(None, **settings(tmp_path / "a", bpe_packed, max_steps=3)))
    compiled = PretrainTrainer(load_pretrain_config(None, **settings(tmp_path / "b", bpe_packed, max_steps=3,
                                                                     compile=True)))
    layers = compiled.model.model.layers
    assert eager.compiled_layers == 0 and compiled.compiled_layers == len(layers) == 2
    assert all(layer._compiled_call_impl is not None for layer in layers)
    assert compiled.model.state_dict().keys() == eager.model.state_dict().keys()
    assert compiled.train().losses == pytest.approx(eager.train().losses, rel=1e-4)
    # rows with other document layouts compile nothing new (the property; torch's dynamo would also keep the varlen
    # attention out of the graph without the torch.compiler.disable wrapper, so this does not test the wrapper)
    import torch._dynamo.utils

    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    batches = compiled.data.micro_batches(0)
    assert len({tuple(r.position_ids) for batch in batches[3:6] for r in batch}) > 1
    compiled.model.train()  # train() ends in eval mode, which is a graph of its own
    for rows in batches[3:6]:
        compiled._loss(rows, 1).backward()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs > 0


def test_compile_that_cannot_run_is_refused_with_the_reason(tmp_path: Path, bpe_packed: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from hanlin.cli import app
    from hanlin.plugin_manager import plugins
    from hanlin.plugins.finetuners import compile_layers
    from hanlin.plugins.finetuners.pretrain import pretrain

    plugins().add_commands(app)
    out = CliRunner().invoke(app, ["pretrain", "--data", str(bpe_packed), "--max-steps", "1", "--compile",
                                   "--nproc", "2", "--out", str(tmp_path / "d")])
    assert out.exit_code == 2 and "compile: true is not supported with --nproc" in out.output, out.output
    assert not (tmp_path / "d").exists()  # refused before torchrun started
    monkeypatch.setenv("PATH", str(tmp_path))  # no c++, g++ or clang++ to be found
    monkeypatch.delenv("CXX", raising=False)
    assert compile_layers.cxx_compiler() is None
    with pytest.raises(ConfigurationError, match="needs a C\\+\\+ compiler.*apt-get install g\\+\\+"):
        pretrain(None, **settings(tmp_path / "c", bpe_packed, max_steps=1, compile=True))
    assert not compile_layers.should_compile(False, "cpu")  # off by default: nothing to find


@requires_llama
@pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="pip install 'hanlin[tune]'")
def test_the_export_tokenizes_and_generates_in_llama_cpp_as_in_torch(trained) -> None:
    """From scratch end to end without any borrowed piece: BPE fitted to the corpus, packed, pre-trained, GGUF;
    llama.cpp splits text into the same ids as the HF tokenizer (digits alone, byte-level), decodes them back, and
    greedy decoding gives the torch model's tokens."""
    import llama_cpp
    from transformers import AutoTokenizer

    from tests.test_gguf_export import llama_greedy, torch_greedy

    out, result = trained
    merged, gguf_file = result.exported["merged"], result.exported["gguf"]
    assert gguf_file == out / "model.gguf"
    assert not (merged / "chat_template.jinja").exists()  # a base model: prompted with the plain layout
    tok = AutoTokenizer.from_pretrained(str(merged))
    assert 257 < len(tok) <= 400 and tok.eos_token == "<|endoftext|>"
    text = "def scale_42(values, factor=1337):\n    return  [v for v in values]"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    llm = llama_cpp.Llama(model_path=str(gguf_file), n_ctx=128, verbose=False, vocab_only=True)
    assert llm.tokenize(text.encode(), add_bos=False, special=False) == ids
    assert llm.detokenize(ids).decode() == text
    llm.close()
    assert llama_greedy(gguf_file, ids[:6], 8) == torch_greedy(merged, ids[:6], 8)


def test_bad_settings_are_named_before_anything_loads(tmp_path: Path, bpe_packed: Path) -> None:
    from hanlin.plugins.finetuners.pretrain import pretrain
    from hanlin.plugins.finetuners.pretrain_config import load_pretrain_config

    with pytest.raises(ConfigurationError, match="unknown preset 'huge'.*presets: 1m, 3m, tiny"):
        load_pretrain_config(None, data=str(bpe_packed), preset="huge")
    with pytest.raises(ConfigurationError, match="max_steps or max_minutes"):
        load_pretrain_config(None, data=str(bpe_packed), max_steps=3, max_minutes=1)
    with pytest.raises(ConfigurationError, match="eval_every needs held-out data"):
        load_pretrain_config(None, data=str(bpe_packed), eval_every=5)
    with pytest.raises(ConfigurationError, match="lerning_rate: unknown setting; known settings: data"):
        load_pretrain_config(None, data=str(bpe_packed), lerning_rate=1e-3)
    with pytest.raises(ConfigurationError, match="does not exist; write it with `hanlin data`"):
        pretrain(None, **settings(tmp_path / "x", tmp_path / "nowhere", max_steps=1))
    bad = tmp_path / "arch.json"
    bad.write_text('{"hidden_size": 96,\n "num_attention_heads": 5,}')
    with pytest.raises(ConfigurationError, match=r"arch.json:2: not valid JSON"):
        pretrain(None, **settings(tmp_path / "y", bpe_packed, max_steps=1, model_config_file=str(bad)))
    bad.write_text('{"hidden_size": 96, "num_attention_heads": 5}')
    with pytest.raises(ConfigurationError, match="hidden_size 96 must divide by num_attention_heads 5"):
        pretrain(None, **settings(tmp_path / "z", bpe_packed, max_steps=1, model_config_file=str(bad)))


def test_the_command_reports_a_bad_folder_in_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from hanlin.cli import app
    from hanlin.plugin_manager import plugins

    plugins().add_commands(app)
    out = CliRunner().invoke(app, ["pretrain", "--data", str(tmp_path / "missing"), "--max-steps", "1"])
    assert out.exit_code == 2
    assert "missing' does not exist" in out.output and "Traceback" not in out.output


def test_a_tokenizer_needs_a_corpus(tmp_path: Path) -> None:
    from hanlin.plugins.finetuners.pretrain_tokenizer import train_tokenizer

    with pytest.raises(ConfigurationError, match="learnt no merges"):
        train_tokenizer([""], tmp_path / "tok", vocab_size=400)
    with pytest.raises(ConfigurationError, match="vocab_size 100 is below"):
        train_tokenizer(CORPUS, tmp_path / "tok", vocab_size=100)
