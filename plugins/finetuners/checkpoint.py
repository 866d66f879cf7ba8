"""Checkpoints a killed run resumes from: trainable weights, optimizer and scheduler state, RNG state and the
position in the data, written atomically (a folder appears under its final name only when complete).

Only trainable parameters are saved (for LoRA, a few MB): the frozen base is re-read from its own folder. A
checkpoint remembers a fingerprint of the settings that shape training; resuming under different ones is an
error rather than a silently different run.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hanlin.errors import ConfigurationError
from hanlin.plugins.finetuners.config import TuneConfig

# settings that may change between a run and its resume without changing what is trained (max_steps is not one:
# the learning-rate schedule is laid out over the run's total steps)
_FREE = {"output_dir", "save_every", "keep_checkpoints", "log_every", "export", "gguf_type", "gguf_quant", "threads", "device"}


@dataclass
class Position:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch: int = 0  # micro-batches of this epoch already consumed
    tokens: int = 0  # target tokens trained on so far


def fingerprint(config: TuneConfig) -> str:
    shaped = {k: v for k, v in config.model_dump(mode="json").items() if k not in _FREE}
    return hashlib.sha256(json.dumps(shaped, sort_keys=True).encode()).hexdigest()[:16]


def save(folder: Path, *, model: Any, optimizer: Any, scheduler: Any, position: Position, config: TuneConfig,
         keep: int) -> Path:
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"step-{position.step:07d}"
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=".partial-"))
    try:
        weights = {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}
        torch.save(weights, tmp / "trainable.pt")
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "torch_rng": torch.get_rng_state(), "python_rng": random.getstate(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
                   tmp / "state.pt")
        (tmp / "position.json").write_text(json.dumps({**asdict(position), "fingerprint": fingerprint(config)}))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in sorted(folder.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def latest(folder: Path) -> Path | None:
    found = sorted(p for p in folder.glob("step-*") if (p / "position.json").is_file()) if folder.is_dir() else []
    return found[-1] if found else None


def read_position(checkpoint: Path, config: TuneConfig) -> dict[str, Any]:
    """The checkpoint's position.json without its fingerprint, refused when it was written under other settings."""
    meta = json.loads((checkpoint / "position.json").read_text())
    if meta.pop("fingerprint") != fingerprint(config):
        raise ConfigurationError(
            f"checkpoint {checkpoint} was written under different training settings (model, data, method, "
            "optimizer, schedule or max_steps changed); resume with the original config, or start fresh in a new "
            "output_dir"
        )
    return meta


def restore(checkpoint: Path, *, model: Any, optimizer: Any, scheduler: Any, config: TuneConfig) -> Position:
    import torch

    meta = read_position(checkpoint, config)
    weights = torch.load(checkpoint / "trainable.pt", map_location="cpu")
    params = dict(model.named_parameters())
    missing = [n for n in weights if n not in params]
    if missing:
        raise ConfigurationError(f"checkpoint {checkpoint} holds weights this model lacks: {missing[:3]}")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value.to(params[name].device))
    state = torch.load(checkpoint / "state.pt", map_location="cpu", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    random.setstate(state["python_rng"])
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return Position(**meta)
