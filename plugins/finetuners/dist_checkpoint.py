"""Checkpoints of a distributed run, with ``torch.distributed.checkpoint`` (DCP): each rank writes its own shards
of the trainable weights and their optimizer state, in parallel, and a later run on any number of processes
reads them back resharded (saved by 2, resumed on 1 or on 4). Nothing is gathered on one rank to save.

Layout (beside the single-process checkpoints, under the same ``step-NNNNNNN`` names)::

    step-0000004/dcp/          the DCP files: {"model": trainable weights, "optim": optimizer state}, by FQN
    step-0000004/state.pt      scheduler and RNG state (small; rank 0's)
    step-0000004/position.json the position in the data, the settings fingerprint and the world size it was saved by

As in checkpoint.py, only trainable weights are saved (a LoRA run's base is re-read from its folder), the folder
appears under its final name only when complete, and resuming under settings that change training is an error.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hanlin.errors import ConfigurationError
from hanlin.plugins.finetuners.checkpoint import Position, fingerprint, read_position
from hanlin.plugins.finetuners.config import TuneConfig


def trainable_state(model: Any) -> dict[str, Any]:
    """The sharded (DTensor) trainable weights by fully qualified name."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    return {k: v for k, v in get_model_state_dict(model).items() if k in trainable}


def save(folder: Path, *, model: Any, optimizer: Any, scheduler: Any, position: Position, config: TuneConfig,
         keep: int, rank: int, world: int) -> Path:
    """Every rank calls this (DCP's save is collective). The folder must be one every rank sees (one node, or a
    shared file system across nodes)."""
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    target = folder / f"step-{position.step:07d}"
    tmp = folder / f".partial-step-{position.step:07d}"
    if rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    dist.barrier()
    state = {"model": trainable_state(model), "optim": get_optimizer_state_dict(model, optimizer)}
    dcp.save(state, checkpoint_id=str(tmp / "dcp"))
    if rank == 0:
        torch.save({"scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state(),
                    "python_rng": random.getstate()}, tmp / "state.pt")
        meta = {**asdict(position), "fingerprint": fingerprint(config), "world_size": world}
        (tmp / "position.json").write_text(json.dumps(meta))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
        for old in sorted(folder.glob("step-*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return target


def is_distributed(checkpoint: Path) -> bool:
    return (checkpoint / "dcp").is_dir()


def restore(checkpoint: Path, *, model: Any, optimizer: Any, scheduler: Any, config: TuneConfig) -> Position:
    """Loads a DCP checkpoint into this run's shards, whatever world size wrote it."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_optimizer_state_dict,
                                                         set_model_state_dict, set_optimizer_state_dict)

    if not is_distributed(checkpoint):
        raise ConfigurationError(
            f"checkpoint {checkpoint} was written by a single-process run (trainable.pt), not by `--nproc`; resume "
            "it without --nproc, or start the distributed run fresh in a new output_dir"
        )
    meta = read_position(checkpoint, config)
    meta.pop("world_size", None)
    # the optimizer state is created (lazily, by its first step) before DCP can load into it
    state = {"model": trainable_state(model), "optim": get_optimizer_state_dict(model, optimizer)}
    dcp.load(state, checkpoint_id=str(checkpoint / "dcp"))
    set_model_state_dict(model, state["model"], options=StateDictOptions(strict=False))
    set_optimizer_state_dict(model, optimizer, state["optim"])
    small = torch.load(checkpoint / "state.pt", map_location="cpu", weights_only=False)
    scheduler.load_state_dict(small["scheduler"])
    torch.set_rng_state(small["torch_rng"])
    random.setstate(small["python_rng"])
    return Position(**meta)
