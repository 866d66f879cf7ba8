"""Format conversion for the rest of hanlin: any reader's documents -> the JSONL the finetuners take (chat records
``{"messages": [...]}`` or text records ``{"text": ...}``), and chat/trace JSONL -> documents (jsonl/parquet).

A document read by the ``chat`` reader keeps its turns in ``metadata['messages']``, so chat -> documents -> chat
gives back the same messages. Plain documents become text records, or, with ``prompt_key``, a user turn (that
metadata field) and an assistant turn (the text).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from hanlin.errors import ConfigurationError
from hanlin.plugins.data.document import Document, TaskContext
from hanlin.plugins.data.pipeline import build_block, BlockConfig

Target = Literal["chat", "jsonl", "parquet"]


def to_record(doc: Document, prompt_key: str | None = None, system: str | None = None) -> dict[str, Any]:
    """The finetuners' record for one document (see hanlin.plugins.finetuners.records)."""
    if doc.metadata.get("messages"):
        row: dict[str, Any] = {"messages": doc.metadata["messages"]}
        if doc.metadata.get("tools"):
            row["tools"] = doc.metadata["tools"]
        return row
    if prompt_key is not None:
        prompt = doc.metadata.get(prompt_key)
        if not isinstance(prompt, str) or not prompt.strip():
            raise ConfigurationError(f"{doc.metadata.get('source', doc.id)}: no {prompt_key!r} field to use as the "
                                     "user turn")
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}, {"role": "assistant", "content": doc.text}]
        return {"messages": messages}
    return {"text": doc.text}


def convert(inputs: list[str], output: str | Path, *, reader: str = "jsonl", to: Target = "chat",
            reader_options: dict[str, Any] | None = None, prompt_key: str | None = None,
            on_error: Literal["skip", "stop"] = "skip") -> dict[str, Any]:
    """Read ``inputs`` with any registered reader and write one file: chat/text records (``to="chat"``), or
    documents as JSONL/Parquet. Returns counts (read, written, skipped with reasons)."""
    block = build_block(BlockConfig(name=reader, options={"paths": inputs, **(reader_options or {})}))
    if block.kind != "source":
        raise ConfigurationError(f"{reader!r} is not a reader block; use jsonl, parquet, text, html or chat")
    output = Path(os.path.expanduser(str(output)))
    output.parent.mkdir(parents=True, exist_ok=True)
    block.open(TaskContext(0, output.parent, on_error))
    tmp = output.with_name(output.name + ".tmp")
    try:
        written = _write(block, tmp, to, prompt_key)
    except BaseException:
        tmp.unlink(missing_ok=True)  # no half file left behind
        raise
    os.replace(tmp, output)
    stats = block.stats.as_dict()
    return {"read": stats["docs_in"], "written": written, "skipped": stats["dropped"], "examples": stats["examples"],
            "output": str(output)}


def _write(block: Any, tmp: Path, to: Target, prompt_key: str | None) -> int:
    written = 0
    if to == "parquet":
        from hanlin.plugins.data.writers import ParquetWriter

        writer = ParquetWriter()
        writer._tmp = tmp
        for _ in writer.write_rows(block(())):
            written += 1
    else:
        with open(tmp, "w", encoding="utf-8") as fh:
            for doc in block(()):
                row = to_record(doc, prompt_key) if to == "chat" else doc.as_dict()
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                written += 1
    return written
