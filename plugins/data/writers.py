"""Writers: pass documents through and write them as one shard per task (``part-NNNNN.jsonl`` / ``.parquet``)
under ``path`` (relative to the run folder). Each shard is written under a temporary name and renamed when its
task completes, so a killed run never leaves a half shard that looks finished."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from hanlin.plugins.data.document import Block, Document, TaskContext


def out_dir(run_dir: Path, path: str | Path) -> Path:
    p = Path(os.path.expanduser(str(path)))
    return p if p.is_absolute() else run_dir / p


class Writer(Block):
    """Base writer: ``write_rows`` writes the task's documents to a temporary file; ``commit`` renames it."""

    suffix = ".jsonl"

    def __init__(self, path: str = "output") -> None:
        super().__init__()
        self.path = path
        self._tmp: Path | None = None
        self._final: Path | None = None

    def open(self, ctx: TaskContext) -> None:
        super().open(ctx)
        folder = out_dir(ctx.run_dir, self.path)
        folder.mkdir(parents=True, exist_ok=True)
        self._final = folder / f"part-{ctx.task:05d}{self.suffix}"
        self._tmp = folder / f"part-{ctx.task:05d}{self.suffix}.tmp"

    def commit(self) -> None:
        if self._tmp is not None and self._tmp.exists():
            os.replace(self._tmp, self._final)

    def abort(self) -> None:
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)

    def write_rows(self, docs: Iterable[Document]) -> Iterator[Document]:
        raise NotImplementedError

    def __call__(self, docs: Iterable[Document]) -> Iterator[Document]:
        for doc in self.write_rows(docs):
            self.stats.docs_in += 1
            self.stats.docs_out += 1
            yield doc


class JsonlWriter(Writer):
    """One JSON object per document: ``{"id", "text", "metadata"}`` (``flat``: metadata keys beside text)."""

    name = "write_jsonl"

    def __init__(self, path: str = "output", flat: bool = False) -> None:
        super().__init__(path)
        self.flat = flat

    def write_rows(self, docs: Iterable[Document]) -> Iterator[Document]:
        assert self._tmp is not None
        with open(self._tmp, "w", encoding="utf-8") as fh:
            for doc in docs:
                row = {**doc.metadata, "id": doc.id, "text": doc.text} if self.flat else doc.as_dict()
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                yield doc


class ParquetWriter(Writer):
    """Columns id, text and metadata (a JSON string: metadata differs from document to document)."""

    name = "write_parquet"
    suffix = ".parquet"

    def __init__(self, path: str = "output", batch_size: int = 1000) -> None:
        super().__init__(path)
        self.batch_size = batch_size

    def write_rows(self, docs: Iterable[Document]) -> Iterator[Document]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema([("id", pa.string()), ("text", pa.string()), ("metadata", pa.string())])
        rows: dict[str, list[Any]] = {"id": [], "text": [], "metadata": []}
        with pq.ParquetWriter(self._tmp, schema) as out:
            for doc in docs:
                rows["id"].append(doc.id)
                rows["text"].append(doc.text)
                rows["metadata"].append(json.dumps(doc.metadata, ensure_ascii=False))
                if len(rows["id"]) >= self.batch_size:
                    out.write_table(pa.table(rows, schema=schema))
                    rows = {k: [] for k in rows}
                yield doc
            out.write_table(pa.table(rows, schema=schema))
