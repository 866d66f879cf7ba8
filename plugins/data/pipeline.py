"""A pipeline: a source block then map and global blocks, configured in YAML or Python, run as resumable tasks.

The blocks are split into stages at each global (dedup) block. A stage runs one task per input file; a task is
complete when its outputs and its done marker (``work/stage-S/task-NNNNN.done.json``, holding the task's counts)
exist, and a re-run skips complete tasks. Between stages, each global block resolves once over the keys every task
wrote (``work/global-S.json``). Outputs are written under temporary names and renamed, so a killed run resumes to
byte-identical shards. At the end, ``report.json`` has docs in/out per block, drop reasons and dropped examples.
"""

from __future__ import annotations

import json
import os
import pickle
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from hanlin.errors import ConfigurationError
from hanlin.plugins.data.document import Block, BlockStats, DataError, Document, GlobalBlock, TaskContext
from hanlin.plugins.data.readers import Reader


class BlockConfig(BaseModel):
    """One block: its registered name, its options, and where the pipeline file names it (for errors)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    name: str
    options: dict[str, Any] = Field(default_factory=dict)
    where: str = ""


class PipelineConfig(BaseModel):
    """A pipeline as a pipeline file states it. ``blocks`` is a list of one-key mappings ``{name: {options}}``."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    output: Path
    blocks: list[BlockConfig]
    workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    executor: Literal["local", "ray"] = "local"
    on_error: Literal["skip", "stop"] = "skip"
    name: str = "pipeline"

    @field_validator("blocks", mode="before")
    @classmethod
    def _blocks(cls, value: Any) -> Any:
        if not isinstance(value, list) or not value:
            raise ValueError("'blocks' must be a non-empty list of {block_name: {options}}")
        out = []
        for i, item in enumerate(value):
            if isinstance(item, (BlockConfig, Block)):
                out.append(item)
            elif isinstance(item, dict) and "name" in item and "options" in item:
                out.append(item)
            elif isinstance(item, dict) and len(item) == 1:
                (name, options), = item.items()
                out.append({"name": name, "options": options or {}})
            elif isinstance(item, str):
                out.append({"name": item})
            else:
                raise ValueError(f"block {i + 1} must be a block name or a one-key mapping {{name: {{options}}}}, "
                                 f"got {item!r}")
        return out


def load_pipeline(path: str | Path, **overrides: Any) -> PipelineConfig:
    """Read a YAML pipeline file; each block remembers its file:line, and a relative ``output`` or input path
    is taken from the file's folder."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigurationError(f"pipeline file {path} not found")
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigurationError(f"{path}{line}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise ConfigurationError(f"{path}:1: a pipeline file is a mapping with 'output' and 'blocks'")
    lines: list[int] = []
    for key, value in getattr(node, "value", []):
        if key.value == "blocks" and hasattr(value, "value") and isinstance(value.value, list):
            lines = [item.start_mark.line + 1 for item in value.value]
    data.update({k: v for k, v in overrides.items() if v is not None})
    base = path.parent
    if "output" in data and not Path(os.path.expanduser(str(data["output"]))).is_absolute():
        data["output"] = base / data["output"]
    try:
        config = PipelineConfig(**data)
    except Exception as exc:  # pydantic's ValidationError, made one readable line per problem
        errors = getattr(exc, "errors", None)
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors()) if errors else str(exc)
        raise ConfigurationError(f"{path}: {detail}") from None
    for i, block in enumerate(config.blocks):
        if isinstance(block, BlockConfig):
            block.where = f"{path}:{lines[i]}" if i < len(lines) else str(path)
            _relative_paths(block, base)
    return config


def _relative_paths(block: BlockConfig, base: Path) -> None:
    """Input paths and tokenizer folders in a pipeline file are relative to that file."""
    for key in ("paths", "tokenizer"):
        value = block.options.get(key)
        if isinstance(value, str) and not Path(os.path.expanduser(value)).is_absolute() and (base / value).exists():
            block.options[key] = str(base / value)
        elif isinstance(value, list):
            block.options[key] = [str(base / v) if not Path(os.path.expanduser(str(v))).is_absolute() else v
                                  for v in value]
        elif key == "paths" and isinstance(value, str) and not Path(os.path.expanduser(value)).is_absolute():
            block.options[key] = str(base / value)  # a glob


def build_block(cfg: BlockConfig | Block) -> Block:
    """A block from its registered name (through the plugin manager) and options."""
    if isinstance(cfg, Block):
        return cfg
    from hanlin.plugin_manager import plugins

    table = plugins().data_blocks()
    where = f"{cfg.where}: " if cfg.where else ""
    if cfg.name not in table:
        raise ConfigurationError(f"{where}unknown data block {cfg.name!r}; known: {', '.join(sorted(table))} "
                                 "(`hanlin data blocks` lists them)")
    try:
        block = table[cfg.name].factory(**cfg.options)
    except TypeError as exc:
        raise ConfigurationError(f"{where}block {cfg.name!r}: {exc}") from None
    except ConfigurationError as exc:
        raise ConfigurationError(f"{where}block {cfg.name!r}: {exc}") from None
    return block


def stages(blocks: list[Block]) -> list[tuple[GlobalBlock | None, list[Block], GlobalBlock | None]]:
    """Split [source, ...] at global blocks: each stage is (global applied first, map blocks, global keyed last)."""
    if not blocks or blocks[0].kind != "source":
        raise ConfigurationError("a pipeline starts with a reader block (jsonl, parquet, text, html, chat)")
    if any(b.kind == "source" for b in blocks[1:]):
        raise ConfigurationError("a pipeline has one reader block, first")
    out: list[tuple[GlobalBlock | None, list[Block], GlobalBlock | None]] = []
    before: GlobalBlock | None = None
    current: list[Block] = []
    for b in blocks[1:]:
        if isinstance(b, GlobalBlock):
            out.append((before, current, b))
            before, current = b, []
        else:
            current.append(b)
    out.append((before, current, None))
    return out


def _timed(it: Iterable[Document], cell: list[float]) -> Iterator[Document]:
    """Pass items through, adding the time spent producing them (this block and all upstream) to ``cell``."""
    it = iter(it)
    while True:
        t = time.perf_counter()
        try:
            doc = next(it)
        except StopIteration:
            cell[0] += time.perf_counter() - t
            return
        cell[0] += time.perf_counter() - t
        yield doc


def _read_jsonl(path: Path) -> Iterator[Document]:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            yield Document(row["id"], row["text"], row["metadata"])


class Pipeline:
    """A configured pipeline; ``run()`` executes it (resuming) and returns the report."""

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config
        self.blocks = [build_block(b) for b in config.blocks]
        self.stages = stages(self.blocks)
        self.run_dir = Path(os.path.expanduser(str(config.output)))

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> Pipeline:
        return cls(load_pipeline(path, **overrides))

    @classmethod
    def from_blocks(cls, blocks: list[Block | dict[str, Any] | str], output: str | Path, **options: Any) -> Pipeline:
        return cls(PipelineConfig(output=Path(output), blocks=blocks, **options))

    @property
    def source(self) -> Reader:
        return self.blocks[0]  # type: ignore[return-value]

    def num_tasks(self) -> int:
        return len(self.source.files())

    def stage_dir(self, s: int) -> Path:
        return self.run_dir / "work" / f"stage-{s}"

    def done_path(self, s: int, t: int) -> Path:
        return self.stage_dir(s) / f"task-{t:05d}.done.json"

    def global_path(self, s: int) -> Path:
        return self.run_dir / "work" / f"global-{s}.json"

    # ---- one task -----------------------------------------------------------------------------------------------
    def run_task(self, s: int, t: int) -> dict[str, Any]:
        """Run stage ``s`` on input ``t``; write its outputs and its done marker; return its counts."""
        before, maps, after = self.stages[s]
        ctx = TaskContext(t, self.run_dir, self.config.on_error)
        chain: list[Block] = ([self.source] if s == 0 else []) + ([before] if before else []) + maps
        for b in chain:
            b.open(ctx)
        if before is not None:
            before.removed = self._removed(s - 1)
        stream: Iterable[Document] = (self.source.read(self.source.files()[t]) if s == 0
                                      else _read_jsonl(self.stage_dir(s - 1) / f"task-{t:05d}.jsonl"))
        cells: list[list[float]] = []
        if s == 0:
            cells.append([0.0])
            stream = _timed(stream, cells[-1])
        for b in chain[1:] if s == 0 else chain:
            cells.append([0.0])
            stream = _timed(b(stream), cells[-1])
        folder = self.stage_dir(s)
        folder.mkdir(parents=True, exist_ok=True)
        try:
            if after is None:
                for _ in stream:
                    pass
            else:
                ids, keys = [], []
                tmp = folder / f"task-{t:05d}.jsonl.tmp"
                with open(tmp, "w", encoding="utf-8") as fh:
                    for doc in stream:
                        fh.write(json.dumps(doc.as_dict(), ensure_ascii=False) + "\n")
                        ids.append(doc.id)
                        keys.append(after.key(doc))
                with open(folder / f"task-{t:05d}.keys.pkl.tmp", "wb") as kf:
                    pickle.dump((ids, keys), kf)
                os.replace(folder / f"task-{t:05d}.keys.pkl.tmp", folder / f"task-{t:05d}.keys.pkl")
                os.replace(tmp, folder / f"task-{t:05d}.jsonl")
        except BaseException:
            for b in chain:
                b.abort()
            raise
        for b in chain:
            b.commit()
        prev = 0.0
        for b, cell in zip(chain, cells):
            b.stats.seconds, prev = cell[0] - prev, cell[0]
        result = {"stage": s, "task": t, "blocks": [b.stats.as_dict() for b in chain]}
        tmp = self.done_path(s, t).with_suffix(".tmp")
        tmp.write_text(json.dumps(result))
        os.replace(tmp, self.done_path(s, t))
        return result

    def _removed(self, s: int) -> dict[str, str]:
        return json.loads(self.global_path(s).read_text())["removed"]

    # ---- the whole run -----------------------------------------------------------------------------------------
    def resolve_global(self, s: int) -> None:
        """Resolve the global block that ends stage ``s`` over every task's keys (skipped if already done)."""
        if self.global_path(s).is_file():
            return
        block = self.stages[s][2]
        assert block is not None
        ids: list[str] = []
        keys: list[Any] = []
        for t in range(self.num_tasks()):
            with open(self.stage_dir(s) / f"task-{t:05d}.keys.pkl", "rb") as fh:
                i, k = pickle.load(fh)
            ids.extend(i)
            keys.extend(k)
        started = time.perf_counter()
        removed = block.resolve(ids, keys)
        tmp = self.global_path(s).with_suffix(".tmp")
        tmp.write_text(json.dumps({"block": block.name, "docs": len(ids), "removed": removed,
                                   "seconds": round(time.perf_counter() - started, 4)}))
        os.replace(tmp, self.global_path(s))

    def run(self, workers: int | None = None, executor: str | None = None,
            progress: Callable[[str], None] | None = None) -> dict[str, Any]:
        from hanlin.plugins.data.executors import get_executor

        started = time.perf_counter()
        n = self.num_tasks()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._check_fingerprint()
        run_executor = get_executor(executor or self.config.executor, workers or self.config.workers)
        skipped = ran = 0
        try:
            for s in range(len(self.stages)):
                pending = [t for t in range(n) if not self.done_path(s, t).is_file()]
                skipped += n - len(pending)
                ran += len(pending)
                if progress:
                    progress(f"stage {s + 1}/{len(self.stages)}: {len(pending)} task(s) to run, "
                             f"{n - len(pending)} already done")
                run_executor.map(self, s, pending)
                if self.stages[s][2] is not None:
                    self.resolve_global(s)
        finally:
            run_executor.close()
        for b in self.blocks:
            b.finalize(self.run_dir, n)
        for s in range(len(self.stages) - 1):  # intermediate shards served their purpose; done markers stay
            for path in [*self.stage_dir(s).glob("task-*.jsonl"), *self.stage_dir(s).glob("task-*.keys.pkl")]:
                path.unlink()
        report = self.report(seconds=time.perf_counter() - started, tasks_run=ran, tasks_skipped=skipped)
        tmp = self.run_dir / "report.json.tmp"
        tmp.write_text(json.dumps(report, indent=1, ensure_ascii=False))
        os.replace(tmp, self.run_dir / "report.json")
        return report

    def fingerprint(self) -> dict[str, Any]:
        """What decides the outputs (blocks, options, inputs, on_error): a resumed run must have the same."""
        blocks = [{"name": b.name, "options": b.options} if isinstance(b, BlockConfig) else {"name": b.name,
                  "object": type(b).__qualname__} for b in self.config.blocks]
        return json.loads(json.dumps({"blocks": blocks, "on_error": self.config.on_error,
                                      "inputs": [str(f) for f in self.source.files()]}, default=repr))

    def _check_fingerprint(self) -> None:
        path = self.run_dir / "work" / "pipeline.json"
        mine = self.fingerprint()
        if path.is_file():
            if json.loads(path.read_text()) != mine:
                raise ConfigurationError(f"{self.run_dir} holds a run of a different pipeline (blocks, options or "
                                         f"inputs changed; see {path}); give a new output folder or delete it")
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(mine, indent=1))

    def report(self, **extra: Any) -> dict[str, Any]:
        """Counts per block, summed over every task's done marker, in pipeline order."""
        totals: dict[str, BlockStats] = {}
        order: list[str] = []
        for s in range(len(self.stages)):
            for t in range(self.num_tasks()):
                path = self.done_path(s, t)
                if not path.is_file():
                    raise DataError(f"{path} missing: the run did not finish; run it again to resume")
                for i, entry in enumerate(json.loads(path.read_text())["blocks"]):
                    key = f"{s}.{i}"
                    if key not in totals:
                        totals[key] = BlockStats(entry["name"])
                        order.append(key)
                    totals[key].merge(BlockStats.from_dict(entry))
        blocks = [totals[k].as_dict() for k in order]
        docs_in = blocks[0]["docs_in"] if blocks else 0
        docs_out = blocks[-1]["docs_out"] if blocks else 0
        return {"pipeline": self.config.name, "tasks": self.num_tasks(), "docs_in": docs_in, "docs_out": docs_out,
                "blocks": blocks, **{k: round(v, 3) if isinstance(v, float) else v for k, v in extra.items()}}
