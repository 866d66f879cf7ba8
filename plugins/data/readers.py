"""Readers: the source blocks. Each lists its input files (one pipeline task per file) and turns one file into
Documents, naming every bad input by file:line (broken JSON, undecodable bytes, an empty document, a missing
column) and skipping it (counted, with examples) or stopping the run, as ``on_error`` says."""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from hanlin.errors import ConfigurationError
from hanlin.plugins.data.document import Block, DataError, Document

DEFAULT_EXTENSIONS = {"text": (".txt", ".md", ".rst"), "html": (".html", ".htm")}


def expand_paths(paths: str | Path | Iterable[str | Path], extensions: tuple[str, ...]) -> list[Path]:
    """Files named by ``paths``: files as given, folders walked (files with ``extensions``), globs expanded.
    Sorted, so task numbers (and output shard names) are the same on every run."""
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    out: set[Path] = set()
    for item in items:
        p = Path(os.path.expanduser(str(item)))
        if p.is_dir():
            out.update(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in extensions)
        elif p.is_file():
            out.add(p)
        else:
            matches = [Path(m) for m in glob.glob(str(p), recursive=True) if Path(m).is_file()]
            if not matches:
                raise ConfigurationError(f"no input files match {str(item)!r}: give a file, a folder or a glob")
            out.update(matches)
    return sorted(out)


class Reader(Block):
    """A source block: ``files()`` are its tasks, ``read(path)`` yields that file's documents."""

    kind = "source"
    extensions: tuple[str, ...] = ()

    def __init__(self, paths: str | list[str], *, text_key: str = "text", id_key: str | None = "id") -> None:
        super().__init__()
        self.paths, self.text_key, self.id_key = paths, text_key, id_key
        self._files: list[Path] | None = None

    def files(self) -> list[Path]:
        if self._files is None:
            self._files = expand_paths(self.paths, self.extensions)
            if not self._files:
                raise ConfigurationError(f"{self.name}: no input files under {self.paths!r} "
                                         f"(looked for {', '.join(self.extensions) or 'any file'})")
        return self._files

    def rel(self, path: Path) -> str:
        """The file's name relative to the inputs' common folder: ids stay the same wherever the data is moved."""
        files = self.files()
        base = Path(os.path.commonpath([str(f.parent) for f in files])) if files else path.parent
        try:
            return str(path.relative_to(base))
        except ValueError:
            return str(path)

    def bad(self, where: str, reason: str, doc: Document | None = None) -> None:
        """Bad input at ``where`` (file:line): stop the run, or count it and move on."""
        if self.ctx is not None and self.ctx.on_error == "stop":
            raise DataError(f"{where}: {reason} (set on_error: skip to count and skip such input)")
        self.stats.docs_in += 1
        self.stats.drop(doc, reason.split(" (")[0], where, detail=reason)

    def emit(self, doc: Document, where: str) -> Document | None:
        """Count a document read; an empty one is bad input."""
        if not doc.text.strip():
            self.bad(where, "empty document", doc)
            return None
        self.stats.docs_in += 1
        self.stats.docs_out += 1
        return doc

    def read(self, path: Path) -> Iterator[Document]:
        raise NotImplementedError

    def __call__(self, docs: Iterable[Document]) -> Iterator[Document]:
        for path in self.files():
            yield from self.read(path)


def _decode(raw: bytes) -> tuple[str | None, str]:
    try:
        return raw.decode("utf-8"), ""
    except UnicodeDecodeError as exc:
        return None, f"undecodable bytes (byte 0x{raw[exc.start]:02x} at column {exc.start + 1} is not UTF-8)"


class JsonlReader(Reader):
    """One JSON object per line; the text under ``text_key``, the id under ``id_key`` (else file:line)."""

    name = "jsonl"
    extensions = (".jsonl", ".json")

    def row_doc(self, row: dict[str, Any], where: str) -> Document | str:
        """The document a row holds, or why it holds none."""
        if self.text_key not in row:
            return f"missing column {self.text_key!r} (the row has {', '.join(sorted(row)) or 'no keys'})"
        text = row[self.text_key]
        if not isinstance(text, str):
            return f"column {self.text_key!r} is {type(text).__name__}, not a string"
        rid = row.get(self.id_key) if self.id_key else None
        meta = {k: v for k, v in row.items() if k not in (self.text_key, self.id_key, "metadata")}
        if isinstance(row.get("metadata"), dict):  # a document written by write_jsonl: its metadata comes back
            meta = {**row["metadata"], **meta}
        meta["source"] = where
        return Document(str(rid) if rid is not None else where, text, meta)

    def read(self, path: Path) -> Iterator[Document]:
        name = self.rel(path)
        with open(path, "rb") as fh:
            for n, raw in enumerate(fh, 1):
                where = f"{name}:{n}"
                if not raw.strip():
                    continue
                text, why = _decode(raw)
                if text is None:
                    self.bad(where, why)
                    continue
                try:
                    row = json.loads(text)
                except json.JSONDecodeError as exc:
                    self.bad(where, f"broken JSON ({exc.msg.removesuffix(' at')} at column {exc.colno})")
                    continue
                if not isinstance(row, dict):
                    self.bad(where, f"not a JSON object (a {type(row).__name__})")
                    continue
                doc = self.row_doc(row, where)
                if isinstance(doc, str):
                    self.bad(where, doc)
                elif (kept := self.emit(doc, where)) is not None:
                    yield kept


class ChatReader(JsonlReader):
    """Chat or hanlin-trace JSONL (``messages``, or a trace's ``model_view``): the text is the conversation as
    ``role: content`` paragraphs, and ``metadata['messages']`` keeps the turns so `data convert` can write them back."""

    name = "chat"

    def row_doc(self, row: dict[str, Any], where: str) -> Document | str:
        from hanlin.messages import Message

        source = row.get("model_view") or row
        raw = source.get("messages") if isinstance(source, dict) else None
        if not isinstance(raw, list) or not raw:
            return f"missing column 'messages' (the row has {', '.join(sorted(row)) or 'no keys'})"
        try:
            messages = [m.to_openai() for m in (Message.from_openai(m) for m in raw)]
        except Exception as exc:  # noqa: BLE001 - any malformed turn is bad input at this line
            return f"bad message ({str(exc).splitlines()[0][:200]})"
        text = "\n\n".join(f"{m['role']}: {m.get('content') or ''}" for m in messages)
        meta = {"messages": messages, "source": where}
        if source.get("tools"):
            meta["tools"] = source["tools"]
        rid = row.get(self.id_key) if self.id_key else None
        return Document(str(rid) if rid is not None else where, text, meta)


class ParquetReader(Reader):
    """Parquet files, read a row group at a time; a missing text column is bad input for the whole file."""

    name = "parquet"
    extensions = (".parquet",)

    def read(self, path: Path) -> Iterator[Document]:
        import pyarrow.parquet as pq

        name = self.rel(path)
        pf = pq.ParquetFile(path)
        columns = pf.schema_arrow.names
        if self.text_key not in columns:
            self.bad(f"{name}:0", f"missing column {self.text_key!r} (columns: {', '.join(columns)})")
            return
        n = 0
        for batch in pf.iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                n += 1
                where = f"{name}:{n}"
                text = row.pop(self.text_key)
                if text is not None and not isinstance(text, str):
                    self.bad(where, f"column {self.text_key!r} is {type(text).__name__}, not a string")
                    continue
                rid = row.pop(self.id_key, None) if self.id_key else None
                meta = row.pop("metadata", None)
                if isinstance(meta, str) and meta.startswith("{"):  # written by write_parquet: metadata comes back
                    row = {**json.loads(meta), **row}
                row["source"] = where
                doc = Document(str(rid) if rid is not None else where, text or "", row)
                if (kept := self.emit(doc, where)) is not None:
                    yield kept


class TextReader(Reader):
    """Folders of text or markdown files (``extensions``), one document per file, id = the file's relative path."""

    name = "text"

    def __init__(self, paths: str | list[str], *, extensions: list[str] | None = None) -> None:
        super().__init__(paths)
        self.extensions = tuple(e if e.startswith(".") else "." + e
                                for e in (extensions or DEFAULT_EXTENSIONS[self.name]))

    def decode(self, raw: bytes, path: Path) -> str | None:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw.count(b"\n", 0, exc.start) + 1
            col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
            self.bad(f"{self.rel(path)}:{line}",
                     f"undecodable bytes (byte 0x{raw[exc.start]:02x} at column {col} is not UTF-8)")
            return None

    def to_text(self, content: str) -> str | None:
        return content

    def read(self, path: Path) -> Iterator[Document]:
        name = self.rel(path)
        content = self.decode(path.read_bytes(), path)
        if content is None:
            return
        text = self.to_text(content)
        if text is None:
            self.bad(f"{name}:1", "no main text found in the page")
            return
        if (doc := self.emit(Document(name, text, {"source": f"{name}:1"}), f"{name}:1")) is not None:
            yield doc


class HtmlReader(TextReader):
    """HTML pages, the main text extracted by trafilatura (menus, footers and ads left out)."""

    name = "html"

    def to_text(self, content: str) -> str | None:
        import trafilatura

        return trafilatura.extract(content, include_comments=False, include_tables=True)
