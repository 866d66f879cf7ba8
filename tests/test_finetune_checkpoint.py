"""Checkpoint fingerprints: a resume under settings that change what is trained is refused before any weight moves.
No model is needed: a linear layer stands in for the trainable weights."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")


def _config(tmp_path: Path, **changes):
    from hanlin.plugins.finetuners.config import load_config

    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "hello"}\n')
    return load_config(None, model="any", data=[str(data)], output_dir=str(tmp_path / "out"), **changes)


def _saved(tmp_path: Path, config) -> tuple[Path, torch.nn.Module, torch.optim.Optimizer, object]:
    from hanlin.plugins.finetuners import checkpoint

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    folder = checkpoint.save(tmp_path / "ckpt", model=model, optimizer=optimizer, scheduler=scheduler,
                             position=checkpoint.Position(step=2, batch=2), config=config, keep=2)
    return folder, model, optimizer, scheduler


def test_resume_with_other_max_steps_is_refused(tmp_path: Path) -> None:
    """The learning-rate schedule (warmup share, cosine/linear decay) is laid out over max_steps: resuming a
    4-step run as a 40-step one would continue on a schedule neither run had."""
    from hanlin.errors import ConfigurationError
    from hanlin.plugins.finetuners import checkpoint

    folder, model, optimizer, scheduler = _saved(tmp_path, _config(tmp_path, max_steps=4))
    with pytest.raises(ConfigurationError, match="max_steps"):
        checkpoint.restore(folder, model=model, optimizer=optimizer, scheduler=scheduler,
                           config=_config(tmp_path, max_steps=40))
    # what does not change training may change: the same run resumes with another checkpoint cadence or output
    same = _config(tmp_path, max_steps=4, save_every=3, log_every=5, threads=1)
    assert checkpoint.restore(folder, model=model, optimizer=optimizer, scheduler=scheduler, config=same).step == 2
