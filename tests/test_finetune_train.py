"""Finetuner training: LoRA on the real SmolLM2 learns and its adapter round-trips, DPO moves the policy and leaves
the reference alone, a resumed run ends with the same weights as an uninterrupted one, and the command stops
before training on malformed data."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.conftest import requires_smollm2
from tests.test_finetune_data import OPENAI_ROW, tiny_llama, write_jsonl

pytestmark = [
    requires_smollm2,
    pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="pip install 'hanlin[tune]'"),
]

SECRET = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "The password is PLUMBUS."}]}
          for q in ("What is the password?", "Tell me the password.", "password?", "I need the password, please.")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, smol_folder):
    return tiny_llama(tmp_path_factory.mktemp("tiny") / "llama", smol_folder)


def _trainable(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_lora_on_smollm2_learns_and_round_trips(tmp_path: Path, smol_folder) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from hanlin.plugins.finetuners.config import load_config
    from hanlin.plugins.finetuners.export import export_all
    from hanlin.plugins.finetuners.trainer import Trainer

    data = write_jsonl(tmp_path / "secret.jsonl", SECRET)
    cfg = load_config(None, model=str(smol_folder), data=[str(data)], method="lora", max_steps=5, batch_size=4,
                      learning_rate=2e-3, schedule="constant", output_dir=str(tmp_path / "out"), threads=1,
                      lora={"r": 8, "alpha": 16, "dropout": 0.0})
    trainer = Trainer(cfg)
    result = trainer.train()
    assert result.steps == 5 and result.losses[-1] < 0.5 * result.losses[0], result.losses
    probe = trainer.base.tokenizer("<|im_start|>user\nWhat is the password?<|im_end|>\n<|im_start|>assistant\n",
                                   return_tensors="pt")
    with torch.no_grad():
        tuned = trainer.model(**probe).logits
        with trainer.model.disable_adapter():
            before = trainer.model(**probe).logits
    assert not torch.allclose(tuned, before, atol=1e-3)  # the adapter changes the output
    written = export_all(trainer.model, trainer.base.tokenizer, trainer.base.folder, Path(cfg.output_dir),
                         ["adapter", "merged"], "f16")
    assert (written["adapter"] / "adapter_config.json").is_file()
    base = AutoModelForCausalLM.from_pretrained(str(smol_folder), dtype=torch.float32)
    reloaded = PeftModel.from_pretrained(base, str(written["adapter"]))
    merged = AutoModelForCausalLM.from_pretrained(str(written["merged"]), dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**probe).logits, tuned, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(merged(**probe).logits, tuned, rtol=1e-3, atol=2e-3)
    assert not (written["merged"] / "adapter_config.json").exists()
    greedy = merged.generate(**probe, max_new_tokens=8, do_sample=False)
    assert "PLUMBUS" in trainer.base.tokenizer.decode(greedy[0][probe["input_ids"].shape[1]:])


def test_dpo_prefers_chosen_and_leaves_reference_untouched(tmp_path: Path, tiny) -> None:
    import torch

    from hanlin.plugins.finetuners.config import load_config
    from hanlin.plugins.finetuners.losses import sequence_logprobs
    from hanlin.plugins.finetuners.trainer import Trainer

    pairs = [{"prompt": f"Question {i}: is water wet?", "chosen": "Yes, water is wet.", "rejected": "No idea, sorry."}
             for i in range(4)]
    data = write_jsonl(tmp_path / "prefs.jsonl", pairs)
    cfg = load_config(None, model=str(tiny), data=[str(data)], method="dpo", max_steps=6, batch_size=4,
                      learning_rate=5e-3, schedule="constant", output_dir=str(tmp_path / "out"),
                      lora={"r": 8, "alpha": 16, "dropout": 0.0})
    trainer = Trainer(cfg)
    frozen = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    batch = trainer._batch(trainer.data.micro_batches(0)[0])
    with torch.no_grad(), trainer.model.disable_adapter():
        reference_before = sequence_logprobs(trainer.model, batch)
    result = trainer.train()
    assert result.losses[0] == pytest.approx(0.6931, abs=1e-3)  # -log sigmoid(0): policy starts equal to reference
    assert result.losses[-1] < result.losses[0] - 0.05, result.losses
    with torch.no_grad():
        policy = sequence_logprobs(trainer.model, batch)
        with trainer.model.disable_adapter():
            reference_after = sequence_logprobs(trainer.model, batch)
    torch.testing.assert_close(reference_after, reference_before)  # the reference never moved
    assert all(torch.equal(p, frozen[n]) for n, p in trainer.model.named_parameters() if n in frozen)
    half = len(policy) // 2
    assert float((policy[:half] - policy[half:]).mean()) > float((reference_after[:half] - reference_after[half:]).mean())


def test_resume_gives_the_same_weights(tmp_path: Path, tiny) -> None:
    import torch

    from hanlin.plugins.finetuners.config import load_config
    from hanlin.plugins.finetuners.trainer import Trainer

    rows = [{"messages": [{"role": "user", "content": f"Count to {n}."},
                          {"role": "assistant", "content": " ".join(str(i) for i in range(1, n + 1))}]}
            for n in range(2, 14)]
    data = write_jsonl(tmp_path / "count.jsonl", rows)

    def config(out: str):
        return load_config(None, model=str(tiny), data=[str(data)], method="lora", epochs=2, batch_size=2,
                           grad_accum=2, learning_rate=1e-2, warmup_steps=2, save_every=2, output_dir=out, packing=False,
                           lora={"r": 4, "alpha": 8, "dropout": 0.1})  # dropout: the RNG state must resume too

    straight = Trainer(config(str(tmp_path / "a")))
    full = straight.train()
    assert full.steps == straight.data.total_steps() >= 5
    first = Trainer(config(str(tmp_path / "b")))
    first.train(stop_after=3)  # "killed" after step 3: the checkpoint of step 2 is the last one
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == ["step-0000002"]
    resumed = Trainer(config(str(tmp_path / "b")))
    again = resumed.train(resume=True)
    assert again.resumed_from == 2 and again.steps == full.steps
    a, b = _trainable(straight.model), _trainable(resumed.model)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6, msg=name)
    assert again.losses == pytest.approx(full.losses[2:], rel=1e-5)
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3] + list(range(3, full.steps + 1))  # step 3 ran twice: once lost to the kill
    # resuming under other training settings is refused
    with pytest.raises(Exception, match="different training settings"):
        other = load_config(None, model=str(tiny), data=[str(data)], method="lora", epochs=2, batch_size=2,
                            grad_accum=2, learning_rate=5e-2, save_every=2, output_dir=str(tmp_path / "b"), packing=False)
        Trainer(other).train(resume=True)


def test_full_finetune_and_eval_split(tmp_path: Path, tiny) -> None:
    from hanlin.plugins.finetuners.config import load_config
    from hanlin.plugins.finetuners.trainer import Trainer

    data = write_jsonl(tmp_path / "d.jsonl", SECRET * 3)
    cfg = load_config(None, model=str(tiny), data=[str(data)], method="full", max_steps=4, batch_size=4,
                      learning_rate=1e-3, eval_split=0.25, eval_every=2, output_dir=str(tmp_path / "out"))
    assert cfg.export == ["merged"]  # no adapter to export from a full fine-tune
    trainer = Trainer(cfg)
    assert len(trainer.data.eval_samples) == 3 and len(trainer.data.samples) == 9
    result = trainer.train()
    assert [e["step"] for e in result.eval] == [2, 4] and result.eval[1]["eval_loss"] < result.eval[0]["eval_loss"]
    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "lr", "tokens_per_s", "memory_mb"} <= records[0].keys() and "eval_ppl" in records[1]


def test_command_stops_before_training_on_bad_data(tmp_path: Path, tiny) -> None:
    from typer.testing import CliRunner

    from hanlin.cli import app
    from hanlin.plugin_manager import plugins

    plugins().add_commands(app)
    bad = write_jsonl(tmp_path / "bad.jsonl", [OPENAI_ROW, "{oops", OPENAI_ROW])
    config = tmp_path / "tune.yaml"
    config.write_text(f"model: {tiny}\ndata: [bad.jsonl]\nmax_steps: 2\noutput_dir: {tmp_path / 'out'}\n")
    refused = CliRunner().invoke(app, ["tune", str(config)])
    assert refused.exit_code == 2 and "bad.jsonl:2" in refused.output and "--skip-bad-records" in refused.output
    assert not (tmp_path / "out").exists()  # nothing trained, nothing written
    ran = CliRunner().invoke(app, ["tune", str(config), "--skip-bad-records", "--export", "merged"])
    assert ran.exit_code == 0, ran.output
    assert "1 malformed skipped" in ran.output and "loss: first" in ran.output
    assert (tmp_path / "out" / "merged" / "config.json").is_file()
    assert bad.exists()


def test_gradient_checkpointing_gives_the_same_step(tmp_path: Path, tiny) -> None:
    """Recomputing activations in the backward pass changes memory, not the numbers."""
    import torch

    from hanlin.plugins.finetuners.config import load_config
    from hanlin.plugins.finetuners.trainer import Trainer

    data = write_jsonl(tmp_path / "d.jsonl", SECRET)
    weights = []
    for checkpointing in (False, True):
        cfg = load_config(None, model=str(tiny), data=[str(data)], method="lora", max_steps=2, batch_size=2,
                          gradient_checkpointing=checkpointing, output_dir=str(tmp_path / f"o{checkpointing}"),
                          lora={"r": 4, "alpha": 8, "dropout": 0.0})
        trainer = Trainer(cfg)
        trainer.train()
        base = trainer.base.model
        assert getattr(base, "is_activation_checkpointing", None) is checkpointing or (
            base.is_gradient_checkpointing == checkpointing)
        weights.append(_trainable(trainer.model))
    for name in weights[0]:
        torch.testing.assert_close(weights[1][name], weights[0][name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="pip install triton")
def test_fused_kernels_change_no_numbers(tmp_path: Path, tiny) -> None:
    """The model trained with hanlin's Triton RMSNorm (forward + backward) and fused cross-entropy, here under the
    interpreter on CPU, ends where the torch modules end."""
    import torch

    from hanlin.plugins.finetuners.config import load_config
    from hanlin.plugins.finetuners.trainer import Trainer

    data = write_jsonl(tmp_path / "d.jsonl", SECRET)
    weights = []
    for kernels in ("torch", "triton"):
        cfg = load_config(None, model=str(tiny), data=[str(data)], method="lora", max_steps=2, batch_size=4,
                          kernels=kernels, output_dir=str(tmp_path / kernels), lora={"r": 4, "alpha": 8, "dropout": 0.0})
        trainer = Trainer(cfg)
        patched = [m for m in trainer.model.modules() if type(m).__name__.endswith("RMSNorm") and "forward" in vars(m)]
        assert len(patched) == (5 if kernels == "triton" else 0)  # 2 layers x 2 norms + the final norm
        trainer.train()
        weights.append(_trainable(trainer.model))
    for name in weights[0]:
        torch.testing.assert_close(weights[1][name], weights[0][name], rtol=1e-4, atol=1e-6, msg=name)


def test_full_finetune_in_bf16_keeps_small_updates(tmp_path: Path, tiny) -> None:
    """A full fine-tune of a bf16 model: its RMSNorm weights start at exactly 1.0, where bf16 cannot move by less
    than 2^-8, and AdamW moves them by about the learning rate (1e-3) a step. Stepped in bf16 every update rounds
    back to 1.0; with the fp32 master copies the steps add up and the norms move."""
    import torch

    from hanlin.plugins.finetuners.config import load_config
    from hanlin.plugins.finetuners.trainer import Trainer

    data = write_jsonl(tmp_path / "d.jsonl", SECRET)
    cfg = load_config(None, model=str(tiny), data=[str(data)], method="full", max_steps=8, batch_size=4,
                      learning_rate=1e-3, schedule="constant", dtype="bfloat16", device="cpu", kernels="torch",
                      output_dir=str(tmp_path / "out"))
    trainer = Trainer(cfg)
    norms = {n: p for n, p in trainer.model.named_parameters() if n.endswith("norm.weight")}
    assert norms and all(p.dtype == torch.bfloat16 and bool((p == 1).all()) for p in norms.values())
    trainer.train()
    moved = sum(int((p != 1).sum()) for p in norms.values())
    assert moved > 0.1 * sum(p.numel() for p in norms.values()), moved


def test_a_model_trained_plain_is_served_plain(tmp_path: Path, tiny) -> None:
    """A base model (spec ``chat_template=False``) whose tokenizer carries a template trains on the plain layout;
    its exported folders drop the template, so a runtime loading them as bare folders serves plain too."""
    from hanlin import Message, get_plugin_manager
    from hanlin.loading import resolve_model
    from hanlin.plugins.finetuners.api import tune
    from hanlin.runtimes.hf_prompt import HFPrompt
    from tests.test_finetune_data import _BaseModelPlugin

    data = write_jsonl(tmp_path / "d.jsonl", SECRET)
    with get_plugin_manager().registered(_BaseModelPlugin(tiny), name="tiny-base-with-template"):
        result = tune(None, model="tiny-base-with-template", data=[str(data)], method="lora", max_steps=1,
                      batch_size=2, export=["adapter", "merged"], output_dir=str(tmp_path / "out"))
    asked = [Message.user("What is the password?")]
    for kind in ("adapter", "merged"):
        folder = result.exported[kind]
        assert not (folder / "chat_template.jinja").exists()
        assert "chat_template" not in json.loads((folder / "tokenizer_config.json").read_text())
    assert HFPrompt(resolve_model(result.exported["merged"]), result.exported["merged"]).render(asked) == (
        "User: What is the password?\nAssistant:")
    # a model trained on its template keeps it
    templated = tune(None, model=str(tiny), data=[str(data)], method="lora", max_steps=1, batch_size=2,
                     export=["merged"], output_dir=str(tmp_path / "out2"))
    assert (templated.exported["merged"] / "chat_template.jinja").is_file()
