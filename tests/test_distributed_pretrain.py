"""``hanlin pretrain`` through the sharded path (dist_pretrain.py): pre-training's trainer composed with FSDP2's
sharding, on a real gloo group of one in this process, gives the single-process curve; the multi-process split,
denominators and checkpoints are the ones tests/test_distributed_tune.py runs on 2 real processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_pretrain import bpe_packed, settings  # noqa: F401  (bpe_packed is a fixture)

torch = pytest.importorskip("torch")


def test_sharded_pretraining_equals_one_process(tmp_path: Path, bpe_packed: Path) -> None:  # noqa: F811
    import torch.distributed as dist

    from hanlin.plugins.finetuners.dist_pretrain import sharded_pretrainer
    from hanlin.plugins.finetuners.distributed import RankContext
    from hanlin.plugins.finetuners.pretrain import PretrainTrainer
    from hanlin.plugins.finetuners.pretrain_config import load_pretrain_config

    single = PretrainTrainer(load_pretrain_config(None, **settings(tmp_path / "a", bpe_packed, max_steps=4,
                                                                   eval_split=0.1))).train()
    cfg = load_pretrain_config(None, **settings(tmp_path / "b", bpe_packed, max_steps=4, eval_split=0.1,
                                                save_every=2))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        trainer = sharded_pretrainer(cfg, RankContext(0, 1, 0, "cpu", "gloo"))
        sharded = trainer.train()
        assert type(trainer.root).__name__.startswith("FSDP")  # the loss root is an FSDP2 unit
    finally:
        dist.destroy_process_group()
    assert sharded.losses == pytest.approx(single.losses, rel=1e-5) and len(sharded.losses) == 4
    assert (tmp_path / "b" / "checkpoints" / "step-0000004" / "dcp").is_dir()  # DCP, not trainable.pt


def test_max_minutes_is_refused_with_nproc(tmp_path: Path, bpe_packed: Path) -> None:  # noqa: F811
    from hanlin.errors import ConfigurationError
    from hanlin.plugins.finetuners.dist_pretrain import sharded_pretrainer
    from hanlin.plugins.finetuners.distributed import RankContext
    from hanlin.plugins.finetuners.pretrain_config import load_pretrain_config

    cfg = load_pretrain_config(None, **settings(tmp_path / "c", bpe_packed, max_minutes=1.0))
    with pytest.raises(ConfigurationError, match="give max_steps with --nproc"):
        sharded_pretrainer(cfg, RankContext(0, 2, 0, "cpu", "gloo"))
