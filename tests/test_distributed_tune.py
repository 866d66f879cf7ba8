"""``hanlin tune --nproc``: real torchrun, real gloo process groups, FSDP2 on a tiny random llama (seconds a run).

Tolerance: a 2-process run and a 1-process run of the same global batch differ only in the order of floating-point
sums (each rank sums its rows, then the ranks' gradients are summed), so losses must agree to a relative 1e-5 and
LoRA weights to an absolute 1e-5 (observed: ~1e-6 on weights of magnitude ~0.1). LoRA dropout is 0: with dropout
the ranks draw other masks than one process would, and the runs are equal only in distribution.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

torch = pytest.importorskip("torch")
# not imported here: the failure tests' ranks import this module for `spin`, and need torch alone
pytestmark = pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="pip install 'hanlin[tune]'")

STEPS = 4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, smol_folder: Path) -> dict[str, Any]:
    """A 2-layer random llama with SmolLM2's tokenizer (test_finetune_data's), and 24 mixed-length chats."""
    from hanlin.plugins.finetuners.bench import synthetic_chats
    from tests.test_finetune_data import tiny_llama

    root = tmp_path_factory.mktemp("dist")
    folder = tiny_llama(root / "tiny", smol_folder)
    data = root / "chats.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in synthetic_chats(24, 60)))
    return {"root": root, "model": str(folder), "data": [str(data)]}


def _config(tiny: dict[str, Any], out: Path, **changes: Any) -> Any:
    from hanlin.plugins.finetuners.config import load_config

    # batch 3 on 2 ranks: uneven shares (2 rows and 1), so the global-token normalisation is what makes them equal
    settings = dict(model=tiny["model"], data=tiny["data"], method="lora", max_steps=STEPS, batch_size=3,
                    grad_accum=2, max_length=128, learning_rate=1e-2, save_every=2, keep_checkpoints=4,
                    lora={"r": 4, "alpha": 8, "dropout": 0.0}, export=["adapter"], output_dir=str(out),
                    eval_split=0.2, eval_every=2)
    return load_config(None, **{**settings, **changes})


def _adapter(out: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(out / "adapter" / "adapter_model.safetensors"))


def _assert_weights_equal(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys() and a
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-5, f"weights differ by up to {worst}"
    assert max(float(v.abs().max()) for k, v in a.items() if "lora_B" in k) > 1e-3  # B moved off its zero init


@pytest.fixture(scope="module")
def two_proc(tiny: dict[str, Any]) -> Any:
    """The documented command: `hanlin tune CONFIG --nproc 2` (its losses read back from metrics.jsonl)."""
    from typer.testing import CliRunner

    from hanlin.cli import app
    from hanlin.plugin_manager import plugins

    out = tiny["root"] / "two"
    config = tiny["root"] / "two.yaml"
    config.write_text(json.dumps(_config(tiny, out).model_dump(mode="json")))  # JSON is YAML
    plugins().add_commands(app)
    ran = CliRunner().invoke(app, ["tune", str(config), "--nproc", "2", "--dist-timeout", "120",
                                   "--run-timeout", "600"])
    assert ran.exit_code == 0, ran.output
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return SimpleNamespace(losses=[r["loss"] for r in records], eval=[r for r in records if "eval_loss" in r],
                           summary=ran.stdout)


def test_two_processes_equal_one(tiny: dict[str, Any], two_proc: Any) -> None:
    from hanlin.plugins.finetuners.api import tune

    one = tune(_config(tiny, tiny["root"] / "one"))
    assert len(two_proc.losses) == len(one.losses) == STEPS
    assert two_proc.losses == pytest.approx(one.losses, rel=1e-5)
    assert [e["eval_loss"] for e in two_proc.eval] == pytest.approx([e["eval_loss"] for e in one.eval], rel=1e-5)
    assert len(two_proc.eval) == 2
    _assert_weights_equal(_adapter(tiny["root"] / "one"), _adapter(tiny["root"] / "two"))
    assert "processes: 2 (gloo, FSDP2)" in two_proc.summary
    # the checkpoints are sharded DCP ones, written by 2
    meta = json.loads((tiny["root"] / "two" / "checkpoints" / "step-0000002" / "position.json").read_text())
    assert meta["world_size"] == 2 and meta["step"] == 2
    assert len(list((tiny["root"] / "two" / "checkpoints" / "step-0000002" / "dcp").glob("*.distcp"))) == 2


def _from_step_two(tiny: dict[str, Any], name: str) -> Path:
    """A copy of the 2-process run's output holding only its step-2 checkpoint."""
    out = tiny["root"] / name
    shutil.copytree(tiny["root"] / "two" / "checkpoints" / "step-0000002", out / "checkpoints" / "step-0000002")
    return out


def test_checkpoint_of_two_resumes_on_two(tiny: dict[str, Any], two_proc: Any) -> None:
    from hanlin.plugins.finetuners.launcher import LaunchOptions, launch_tune

    out = _from_step_two(tiny, "resumed-on-2")
    resumed = launch_tune(_config(tiny, out), LaunchOptions(nproc=2, dist_timeout=120, run_timeout=600), resume=True)
    assert resumed.resumed_from == 2
    assert resumed.losses == pytest.approx(two_proc.losses[2:], rel=1e-5)
    _assert_weights_equal(_adapter(out), _adapter(tiny["root"] / "two"))


def test_checkpoint_of_two_resumes_on_one(tiny: dict[str, Any], two_proc: Any, tmp_path: Path) -> None:
    """One process in a real (world size 1) gloo group, in this test's process: DCP reshards the 2 shards into 1."""
    import torch.distributed as dist

    from hanlin.plugins.finetuners.distributed import DistributedTrainer, RankContext

    out = _from_step_two(tiny, "resumed-on-1")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        trainer = DistributedTrainer(_config(tiny, out), RankContext(0, 1, 0, "cpu", "gloo"))
        result = trainer.train(resume=True)
        trainer.export()
    finally:
        dist.destroy_process_group()
    assert result.resumed_from == 2
    assert result.losses == pytest.approx(two_proc.losses[2:], rel=1e-5)
    _assert_weights_equal(_adapter(out), _adapter(tiny["root"] / "two"))


def test_a_checkpoint_resumes_only_in_its_own_format(tiny: dict[str, Any], two_proc: Any, tmp_path: Path) -> None:
    """A DCP checkpoint resumed without --nproc, or a single-process one resumed with it, is refused up front with
    what to do (not a missing-file error half-way through a restore)."""
    import torch.distributed as dist

    from hanlin.errors import ConfigurationError
    from hanlin.plugins.finetuners.distributed import DistributedTrainer, RankContext
    from hanlin.plugins.finetuners.trainer import Trainer

    out = _from_step_two(tiny, "plain-resume")
    with pytest.raises(ConfigurationError, match=r"written by a distributed run .* resume it with --nproc N"):
        Trainer(_config(tiny, out)).train(resume=True)
    single = tmp_path / "single"
    Trainer(_config(tiny, single, max_steps=2)).train()  # its step-2 checkpoint is trainable.pt + state.pt
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        with pytest.raises(ConfigurationError, match="single-process run .* resume it without --nproc"):
            DistributedTrainer(_config(tiny, single, max_steps=2), RankContext(0, 1, 0, "cpu", "gloo")).train(
                resume=True)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("method", ["dpo", "full"])
def test_dpo_and_full_fine_tuning_take_the_sharded_path(method: str, tiny: dict[str, Any], tmp_path: Path) -> None:
    """DPO (policy and adapter-off reference through the FSDP root) and full fine-tuning (every weight sharded and
    trained, exported merged) on a world of one, equal to the single-process trainer; the multi-rank split of
    DPO pairs is checked below."""
    import torch.distributed as dist

    from hanlin.plugins.finetuners.api import tune
    from hanlin.plugins.finetuners.distributed import DistributedTrainer, RankContext

    changes: dict[str, Any] = {"method": method, "max_steps": 2, "save_every": 0, "export": ["merged"]}
    if method == "dpo":
        pairs = tmp_path / "pairs.jsonl"
        pairs.write_text("".join(json.dumps({"prompt": f"Question {i}: what is {i} plus {i}?",
                                             "chosen": f"It is {2 * i}.", "rejected": f"Maybe {i}, or not."}) + "\n"
                                 for i in range(8)))
        changes.update(data=[str(pairs)], export=["adapter"], learning_rate=1e-3)
    single = tune(_config(tiny, tmp_path / "single", **changes))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        trainer = DistributedTrainer(_config(tiny, tmp_path / "sharded", **changes), RankContext(0, 1, 0, "cpu", "gloo"))
        sharded = trainer.train()
        exported = trainer.export()
    finally:
        dist.destroy_process_group()
    assert sharded.losses == pytest.approx(single.losses, rel=1e-5) and len(sharded.losses) == 2
    if method == "full":
        from safetensors.torch import load_file

        a = load_file(str(exported["merged"] / "model.safetensors"))
        b = load_file(str(tmp_path / "single" / "merged" / "model.safetensors"))
        assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    else:
        _assert_weights_equal(_adapter(tmp_path / "sharded"), _adapter(tmp_path / "single"))


def test_what_cannot_be_sharded_is_refused_before_any_process_starts(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from hanlin.cli import app
    from hanlin.plugin_manager import plugins

    plugins().add_commands(app)
    started = time.monotonic()
    ran = CliRunner().invoke(app, ["tune", "-m", "any", "-d", str(tmp_path / "x.jsonl"), "--method", "qlora",
                                   "--nproc", "2"])
    assert ran.exit_code == 2 and "qlora's 4-bit base (bitsandbytes) cannot be sharded" in ran.output
    assert "method: lora" in ran.output and "distributed run failed" not in ran.output  # no torchrun started
    assert time.monotonic() - started < 10
    ran = CliRunner().invoke(app, ["tune", "-m", "any", "-d", "x.jsonl", "--nproc", "2", "--nnodes", "2",
                                   "--node-rank", "2"])
    assert ran.exit_code == 2 and "--node-rank 2 must be below --nnodes 2" in ran.output


def test_rank_share_keeps_pairs_and_stands_in_for_an_empty_share() -> None:
    from hanlin.plugins.finetuners.distributed import rank_share
    from hanlin.plugins.finetuners.packing import Row

    rows = [Row([i], [i], [0]) for i in range(6)]  # DPO: chosen 0,1,2 then rejected 3,4,5
    assert [r.input_ids[0] for r in rank_share(rows, 1, 2, True)[0]] == [1, 4]
    assert [r.input_ids[0] for r in rank_share(rows, 0, 2, True)[0]] == [0, 2, 3, 5]
    mine, weight = rank_share(rows[:1], 1, 2, False)
    assert weight == 0.0 and len(mine) == 1  # a stand-in row: the rank still joins the collectives


# ---- a rank that dies, a run that outlives its limit -------------------------------------------
def spin(job: dict[str, Any], ctx: Any) -> None:
    """Launcher entry for the failure tests: all-reduce forever, after saying which process is which rank."""
    import torch.distributed as dist

    Path(job["pids"], f"rank-{ctx.rank}").write_text(str(os.getpid()))
    value = torch.ones(1)
    while True:
        dist.all_reduce(value)
        time.sleep(0.05)


def _launch_in_thread(job: dict[str, Any], **options: Any) -> tuple[threading.Thread, dict[str, Any]]:
    from hanlin.plugins.finetuners.launcher import LaunchOptions, launch

    outcome: dict[str, Any] = {}

    def run() -> None:
        started = time.monotonic()
        try:
            launch("tests.test_distributed_tune:spin", job, LaunchOptions(nproc=2, **options))
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            outcome["error"] = exc
        outcome["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def test_a_killed_rank_fails_the_run_with_a_clear_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hanlin.errors import HanlinError

    mark = f"hanlin-test-{os.getpid()}-{time.monotonic_ns()}"
    monkeypatch.setenv("HANLIN_TEST_MARK", mark)
    thread, outcome = _launch_in_thread({"pids": str(tmp_path)}, dist_timeout=60)
    deadline = time.monotonic() + 120
    while not (tmp_path / "rank-1").is_file() and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (tmp_path / "rank-1").is_file(), f"the ranks never started: {outcome}"
    time.sleep(0.5)
    killed_at = time.monotonic()
    os.kill(int((tmp_path / "rank-1").read_text()), signal.SIGKILL)
    thread.join(timeout=90)
    assert not thread.is_alive(), "the launcher hung after a rank died"
    error = outcome.get("error")
    assert isinstance(error, HanlinError), outcome
    assert "rank 1 was killed by SIGKILL" in str(error)
    assert time.monotonic() - killed_at < 60
    assert _processes_marked(mark) == []  # rank 0, blocked in a collective with the dead rank, was stopped too


def _processes_marked(mark: str) -> list[int]:
    """Processes (of this user) whose environment holds ``mark``: the launcher's torchrun and its ranks."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if mark.encode() in environ.read_bytes():
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return [pid for pid in found if pid != os.getpid()]


def test_run_timeout_stops_every_rank(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every process the run started is gone when the launcher returns (found by a marker in their inherited
    environment). 15 s lets the ranks start and enter their collectives first: torchrun's workers run in sessions
    of their own, so killing only torchrun's process group would leave them spinning."""
    from hanlin.errors import HanlinError

    mark = f"hanlin-test-{os.getpid()}-{time.monotonic_ns()}"
    monkeypatch.setenv("HANLIN_TEST_MARK", mark)
    thread, outcome = _launch_in_thread({"pids": str(tmp_path)}, run_timeout=15)
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert isinstance(outcome.get("error"), HanlinError) and "--run-timeout 15 s" in str(outcome["error"])
    deadline = time.monotonic() + 5  # a rank re-parented at the kill notices within its 1 s watch period
    while _processes_marked(mark) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_marked(mark) == []


# torchrun's output when rank 1 was killed and rank 0 then aborted in its collective (a CI run of the test above):
# its log line and its report's root cause both name rank 0.
TORCHRUN_TAIL = """\
terminate called without an active exception
E1205 17:01:00.922000 24453 api.py:1002] failed (exitcode: -6) local_rank: 0 (pid: 24459) of binary: python
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
======================================================
hanlin.plugins.finetuners.launcher FAILED
------------------------------------------------------
Failures:
[1]:
  time      : 2026-12-05_17:01:00
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 24460)  (SIGKILL)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 24460
------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-05_17:01:00
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : -6 (pid: 24459)  (SIGABRT)
  error_file: <N/A>
  traceback : Signal 6 (SIGABRT) received by PID 24459
======================================================"""


def test_the_failure_names_the_killed_rank_not_the_one_that_aborted_after_it(tmp_path: Path) -> None:
    from hanlin.plugins.finetuners.launcher import LaunchOptions, failure_message, reported_failures

    assert reported_failures(TORCHRUN_TAIL) == [(0, -6), (1, -9)]  # the root cause first, as torchrun saw it
    message = failure_message(1, TORCHRUN_TAIL.splitlines(), tmp_path, LaunchOptions(nproc=2))
    assert message.startswith("the distributed run failed (2 processes per node x 1 nodes): rank 1 was killed by "
                              "SIGKILL (out of memory, or killed by hand); rank 0 was killed by SIGABRT after it;")
    # one failure with a Python error: its rank, exit code and the error the rank wrote
    single = TORCHRUN_TAIL.split("Failures:")[0] + "Failures:\n  <NO_OTHER_FAILURES>\n" + \
        "Root Cause (first observed failure):\n[0]:\n  rank      : 1 (local_rank: 1)\n  exitcode  : 1 (pid: 7)\n"
    (tmp_path / "rank-1.error").write_text("ValueError: bad batch")
    message = failure_message(1, single.splitlines(), tmp_path, LaunchOptions(nproc=2))
    assert "rank 1 exited with code 1; torchrun stopped" in message and "rank 1: ValueError: bad batch" in message
