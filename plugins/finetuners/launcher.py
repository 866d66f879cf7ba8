"""``--nproc N``: a command re-launched on N processes per node with torchrun (``python -m torch.distributed.run``).

hanlin does not manage processes itself: torchrun starts the ranks, sets up their rendezvous (``--standalone`` on
one node: a free port is picked, so concurrent runs do not collide; ``--nnodes/--node-rank/--master-addr/
--master-port`` across nodes), watches them, and stops every rank when one fails. What this module adds:

- the job travels as a JSON file: an entry point ``"module:function"`` called in every rank with ``(job, ctx)``
  (``ctx``: distributed.RankContext), so ``hanlin tune`` and ``hanlin pretrain`` share the launcher;
- bounded failure: the process group has a timeout (a rank blocked in a collective on a dead or stuck peer fails
  after ``dist_timeout`` seconds), the launcher has an optional wall-clock ``run_timeout``, and a failed run ends
  with one message saying which rank failed, how (exit code or signal) and its last error;
- rank 0's result comes back to the launching process as JSON.
"""

from __future__ import annotations

import collections
import importlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hanlin.errors import ConfigurationError, HanlinError
from hanlin.plugins.finetuners.config import TuneConfig

if TYPE_CHECKING:
    from hanlin.plugins.finetuners.trainer import TuneResult


class LaunchOptions(BaseModel):
    """How many processes, where, and how long a stuck run may wait (the ``--nproc`` family of flags)."""

    model_config = ConfigDict(extra="forbid")

    nproc: int = Field(default=1, ge=1, description="processes on this node (one per GPU; on CPU, cores to use)")
    nnodes: int = Field(default=1, ge=1)
    node_rank: int = Field(default=0, ge=0)
    master_addr: str = "127.0.0.1"
    master_port: int | None = Field(default=None, gt=0, lt=65536)
    dist_timeout: float = Field(default=1800.0, gt=0, description="seconds a collective waits for its peers")
    run_timeout: float | None = Field(default=None, gt=0, description="seconds the whole run may take")

    @model_validator(mode="after")
    def _node_in_range(self) -> LaunchOptions:
        if self.node_rank >= self.nnodes:
            raise ValueError(f"--node-rank {self.node_rank} must be below --nnodes {self.nnodes} (ranks count from 0)")
        return self


def launch_options(**flags: Any) -> LaunchOptions:
    """LaunchOptions from command-line flags (``None``: not given), with errors that name the flag."""
    from pydantic import ValidationError

    try:
        return LaunchOptions.model_validate({k: v for k, v in flags.items() if v is not None})
    except ValidationError as exc:
        lines = [f"  --{'.'.join(str(p) for p in e['loc']).replace('_', '-') or 'options'}: {e['msg']}"
                 for e in exc.errors()]
        raise ConfigurationError("the distributed options are not valid:\n" + "\n".join(lines)) from None


def torchrun_command(options: LaunchOptions, job_file: Path) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(options.nproc)]
    if options.nnodes == 1 and options.master_port is None:
        cmd.append("--standalone")
    else:
        cmd += ["--nnodes", str(options.nnodes), "--node-rank", str(options.node_rank),
                "--master-addr", options.master_addr, "--master-port", str(options.master_port or 29500)]
    return cmd + ["-m", "hanlin.plugins.finetuners.launcher", str(job_file)]


def launch(entry: str, job: dict[str, Any], options: LaunchOptions) -> dict[str, Any] | None:
    """Runs ``entry(job, ctx)`` on every rank under torchrun and returns rank 0's return value (``None`` on a node
    without rank 0). Raises HanlinError when a rank fails or the run outlives ``run_timeout``."""
    with tempfile.TemporaryDirectory(prefix="hanlin-launch-") as tmp:
        folder = Path(tmp)
        job_file = folder / "job.json"
        job_file.write_text(json.dumps({"entry": entry, "job": job, "dist_timeout": options.dist_timeout,
                                        "result": str(folder / "result.json"), "errors": str(folder)}))
        code, tail, timed_out = _run(torchrun_command(options, job_file), options.run_timeout)
        if timed_out:
            raise HanlinError(f"the distributed run took longer than --run-timeout {options.run_timeout:g} s and was "
                              "stopped (every rank killed); raise the limit or leave it unset")
        if code != 0:
            raise HanlinError(failure_message(code, tail, folder, options))
        result = folder / "result.json"
        return json.loads(result.read_text()) if result.is_file() else None


def _run(cmd: list[str], timeout: float | None) -> tuple[int, list[str], bool]:
    """torchrun in its own process group (so a timeout kills every rank), its stderr echoed and its tail kept."""
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True)
    tail: collections.deque[str] = collections.deque(maxlen=400)

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            tail.append(line.rstrip("\n"))
            sys.stderr.write(line)
            sys.stderr.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _stop(proc)
    except BaseException:  # Ctrl-C: take the ranks down with the launcher
        _stop(proc)
        raise
    reader.join(timeout=5)
    return proc.returncode, list(tail), timed_out


def _stop(proc: subprocess.Popen[str], grace: float = 30.0) -> None:
    """torchrun stops its workers when it gets SIGTERM (they run in sessions of their own, which killing
    torchrun's process group would not reach); after ``grace`` seconds everything left is killed. A rank whose
    torchrun died anyway exits by itself (``_exit_with_launcher``)."""
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=grace)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


# Signals a rank dies of because another rank died first: gloo aborts (SIGABRT) when its peer's connection closes,
# and torchrun stops the rest (SIGTERM).
COLLATERAL = {"SIGABRT", "SIGTERM"}
_REPORT_RANK = re.compile(r"^\s*rank\s*:\s*(\d+)\s*\(local_rank", re.MULTILINE)
_REPORT_EXIT = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)", re.MULTILINE)


def _signal_name(exit_code: int) -> str | None:
    if exit_code >= 0:
        return None
    return signal.Signals(-exit_code).name if -exit_code in signal.valid_signals() else f"signal {-exit_code}"


def reported_failures(text: str) -> list[tuple[int, int]]:
    """(rank, exit code) of each failure in torchrun's closing report, the root cause first. Only the report's own
    "rank : N (local_rank: M)" lines count: torchrun's log line before it ("failed (exitcode: -6) local_rank: 0")
    named whichever rank it saw die first."""
    entries = []
    for block in re.split(r"^\[\d+\]:\s*$", text, flags=re.MULTILINE)[1:]:
        rank, code = _REPORT_RANK.search(block), _REPORT_EXIT.search(block)
        if rank and code:
            entries.append((int(rank.group(1)), int(code.group(1))))
    root = text.rfind("Root Cause")
    if entries and root >= 0 and text.find("Failures:") < root:
        entries.insert(0, entries.pop())  # the report lists the other failures first, the root cause last
    return entries


def failure_message(code: int, tail: list[str], folder: Path, options: LaunchOptions) -> str:
    """Which rank failed and why, from torchrun's failure report and the ranks' own error files. A rank that died
    of another's death (COLLATERAL) is not the cause: with rank 1 killed, rank 0 aborted in its collective and
    torchrun's report named rank 0 (SIGABRT) as the first observed failure."""
    text = "\n".join(tail)
    failures = reported_failures(text)
    failures.sort(key=lambda f: _signal_name(f[1]) in COLLATERAL)  # stable: the root cause first among equals
    errors = {int(p.stem.split("-")[1]): p.read_text().strip() for p in folder.glob("rank-*.error")}
    rank = failures[0][0] if failures else min(errors) if errors else None

    def how(exit_code: int) -> str:
        name = _signal_name(exit_code)
        if name is None:
            return f" exited with code {exit_code}"
        return f" was killed by {name}" + (" (out of memory, or killed by hand)" if name == "SIGKILL" else "")

    who = f"rank {rank}" if rank is not None else "a rank"
    first = how(failures[0][1]) if failures else " failed"
    others = "".join(f"; rank {r}{how(c)} after it" for r, c in failures[1:])
    lines = [f"the distributed run failed ({options.nproc} processes per node x {options.nnodes} nodes): {who}"
             f"{first}{others}; torchrun stopped the other ranks"]
    if rank is not None and rank in errors:
        lines.append(f"rank {rank}: {errors[rank]}")
    elif errors:
        lines.append(f"rank {min(errors)}: {errors[min(errors)]}")
    if not failures and not errors:
        lines.append("torchrun's last output:\n" + "\n".join(tail[-15:]))
    if any("timed out" in e.lower() or "timeout" in e.lower() for e in errors.values()):
        lines.append(f"a collective waited --dist-timeout {options.dist_timeout:g} s for a rank that never joined it")
    return "\n".join(lines)


def launch_tune(config: TuneConfig, options: LaunchOptions, *, resume: bool = False, cache_dir: Path | None = None,
                stop_after: int | None = None) -> TuneResult:
    """``hanlin tune --nproc N``: the run of ``hanlin.tune`` on N processes (distributed.run_tune in each)."""
    from hanlin.plugins.finetuners.distributed import check_shardable

    check_shardable(config)
    job = {"config": config.model_dump(mode="json"), "resume": resume, "stop_after": stop_after,
           "cache_dir": str(cache_dir) if cache_dir else None}
    return launch_run("hanlin.plugins.finetuners.distributed:run_tune", job, options, Path(config.output_dir))


def launch_run(entry: str, job: dict[str, Any], options: LaunchOptions, output_dir: Path) -> TuneResult:
    """A training run on N processes whose entry returns rank 0's TuneResult fields (distributed.result_fields)."""
    from hanlin.plugins.finetuners.trainer import TuneResult

    out = launch(entry, job, options)
    if out is None:
        return TuneResult(output_dir, 0, summary=f"node {options.node_rank}: its ranks finished; rank 0's node "
                          "reports the run")
    exported = {k: Path(v) for k, v in out.pop("exported").items()}
    return TuneResult(**{**out, "output_dir": Path(out["output_dir"]), "exported": exported})


_FLAGS: list[tuple[str, str, type, str]] = [
    ("nproc", "--nproc", int, "Run on N processes per node: torchrun + FSDP2 (one per GPU; on CPU, gloo). Same "
                              "result as 1 process for the same global batch."),
    ("nnodes", "--nnodes", int, "Nodes of a multi-node run (torchrun)."),
    ("node_rank", "--node-rank", int, "This node's rank, from 0 (multi-node)."),
    ("master_addr", "--master-addr", str, "Rank 0's node address (multi-node)."),
    ("master_port", "--master-port", int, "Rank 0's port (default: a free one)."),
    ("dist_timeout", "--dist-timeout", float, "Seconds a rank waits for its peers in a collective before the run "
                                              "fails (default 1800)."),
    ("run_timeout", "--run-timeout", float, "Stop a --nproc run after N seconds."),
]


def with_launch_flags(command: Any) -> Any:
    """Adds the ``--nproc`` family of flags to a typer command, which receives them as ``launch``: LaunchOptions,
    or None when neither --nproc nor --nnodes is given (run in this process). One definition for every command
    that trains (``hanlin tune``, ``hanlin pretrain``)."""
    import functools
    import inspect

    import typer

    signature = inspect.signature(command)
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=kind | None,
                               default=typer.Option(None, flag, help=text)) for name, flag, kind, text in _FLAGS]
    kept = [p for p in signature.parameters.values() if p.name != "launch"]

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        flags = {name: kwargs.pop(name, None) for name, *_ in _FLAGS}
        launch = None
        if flags["nproc"] is not None or flags["nnodes"] is not None:
            try:
                launch = launch_options(**flags)
            except ConfigurationError as exc:
                from hanlin.cli import fail

                fail(str(exc))
        return command(*args, launch=launch, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=kept + extra)  # type: ignore[attr-defined]
    return wrapper


# ---- inside each rank ---------------------------------------------------------------------------
def resolve_entry(entry: str) -> Any:
    module, _, name = entry.partition(":")
    if not name:
        raise ConfigurationError(f"launcher entry {entry!r} must be 'module:function'")
    return getattr(importlib.import_module(module), name)


def _exit_with_launcher(period: float = 1.0) -> None:
    """A rank whose torchrun is gone (killed, crashed) is re-parented; it exits then instead of living on,
    spinning in collectives with the other orphans."""
    import time

    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(period)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="hanlin-parent-watch").start()


def rank_main(job_file: Path) -> int:
    """One rank: join the process group, run the entry, hand rank 0's result back; on an error leave a one-line
    reason for the launcher's message and exit non-zero."""
    import torch.distributed as dist

    from hanlin.plugins.finetuners.distributed import init_process_group

    _exit_with_launcher()
    spec = json.loads(job_file.read_text())
    rank = int(os.environ.get("RANK", "0"))
    try:
        ctx = init_process_group(float(spec["dist_timeout"]))
        out = resolve_entry(spec["entry"])(spec["job"], ctx)
        if ctx.rank == 0 and out is not None:
            Path(spec["result"]).write_text(json.dumps(out))
        dist.destroy_process_group()
        return 0
    except BaseException as exc:
        reason = str(exc) if isinstance(exc, HanlinError) else f"{type(exc).__name__}: {exc}"
        Path(spec["errors"], f"rank-{rank}.error").write_text(reason.strip() or type(exc).__name__)
        if not isinstance(exc, HanlinError):
            traceback.print_exc()
        else:
            sys.stderr.write(f"[rank {rank}] error: {reason}\n")
        return 1  # the process group is left to die with the process: tearing it down may wait on dead peers


if __name__ == "__main__":
    sys.exit(rank_main(Path(sys.argv[1])))
