"""Tokenize-and-pack: the block that turns documents into ``hanlin-packed-v1`` token shards for pre-training.

Each task tokenizes its own documents into ``<path>/parts/task-NNNNN/`` (so the expensive part runs on every
worker); when the run ends, ``finalize`` links the parts' shards into ``<path>/`` under one numbering, in task
order, and writes the single meta.json the trainer reads. Documents pass through unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from hanlin.errors import ConfigurationError
from hanlin.plugins.data.document import Block, Document, TaskContext
from hanlin.plugins.data.packed import DEFAULT_SHARD_TOKENS, FORMAT, PackedWriter
from hanlin.plugins.data.writers import out_dir

_TOKENIZERS: dict[str, Any] = {}


def load_tokenizer(ref: str | Path) -> Any:
    """A ``tokenizers.Tokenizer`` from an HF tokenizer folder (its tokenizer.json) or a tokenizer.json file;
    cached per process."""
    key = str(ref)
    if key not in _TOKENIZERS:
        from tokenizers import Tokenizer

        path = Path(os.path.expanduser(key))
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise ConfigurationError(f"tokenizer {key!r}: no tokenizer.json there; give an HF tokenizer folder "
                                     "(e.g. a model folder written by save_pretrained) or a tokenizer.json file")
        _TOKENIZERS[key] = Tokenizer.from_file(str(file))
    return _TOKENIZERS[key]


def eos_of(ref: str | Path, tokenizer: Any) -> int:
    """The eos id named by the folder's tokenizer_config.json (or special_tokens_map.json)."""
    path = Path(os.path.expanduser(str(ref)))
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        cfg = path / name if path.is_dir() else path.parent / name
        if cfg.is_file():
            tok = json.loads(cfg.read_text()).get("eos_token")
            tok = tok.get("content") if isinstance(tok, dict) else tok
            if isinstance(tok, str) and tokenizer.token_to_id(tok) is not None:
                return int(tokenizer.token_to_id(tok))
    raise ConfigurationError(f"tokenizer {str(ref)!r} names no eos_token in tokenizer_config.json; "
                             "give the pack block eos_token: <token> or eos_id: <int>")


class PackBlock(Block):
    """Tokenize each document (no special tokens added; the eos goes between documents) into packed shards of
    ``seq_len``-token sequences under ``path``."""

    name = "pack"

    def __init__(self, tokenizer: str, seq_len: int = 1024, path: str = "packed", eos_token: str | None = None,
                 eos_id: int | None = None, shard_tokens: int = DEFAULT_SHARD_TOKENS, batch_size: int = 256) -> None:
        super().__init__()
        self.tokenizer_ref, self.seq_len, self.path = str(tokenizer), seq_len, path
        self.eos_token, self.eos_id, self.shard_tokens, self.batch_size = eos_token, eos_id, shard_tokens, batch_size
        self._writer: PackedWriter | None = None

    def _eos(self, tok: Any) -> int:
        if self.eos_id is not None:
            return int(self.eos_id)
        if self.eos_token is not None:
            found = tok.token_to_id(self.eos_token)
            if found is None:
                raise ConfigurationError(f"pack: eos_token {self.eos_token!r} is not in the tokenizer's vocabulary")
            return int(found)
        return eos_of(self.tokenizer_ref, tok)

    def open(self, ctx: TaskContext) -> None:
        super().open(ctx)
        tok = load_tokenizer(self.tokenizer_ref)
        part = out_dir(ctx.run_dir, self.path) / "parts" / f"task-{ctx.task:05d}"
        if part.exists():  # left by a killed run: this task starts over
            shutil.rmtree(part)
        self._writer = PackedWriter(part, tokenizer=self.tokenizer_ref, seq_len=self.seq_len,
                                    eos_id=self._eos(tok), vocab_size=tok.get_vocab_size(),
                                    shard_tokens=self.shard_tokens)

    def commit(self) -> None:
        if self._writer is not None:
            self._writer.close()

    def _flush(self, batch: list[Document]) -> Iterator[Document]:
        tok, writer = load_tokenizer(self.tokenizer_ref), self._writer
        assert writer is not None
        for doc, enc in zip(batch, tok.encode_batch([d.text for d in batch], add_special_tokens=False)):
            self.stats.docs_in += 1
            if not enc.ids:
                self.stats.drop(doc, "no tokens")
                continue
            writer.add(enc.ids)
            self.stats.docs_out += 1
            yield doc

    def __call__(self, docs: Iterable[Document]) -> Iterator[Document]:
        batch: list[Document] = []
        for doc in docs:
            batch.append(doc)
            if len(batch) >= self.batch_size:
                yield from self._flush(batch)
                batch = []
        yield from self._flush(batch)

    def finalize(self, run_dir: Path, num_tasks: int) -> None:
        merge_parts(out_dir(run_dir, self.path), num_tasks)


def merge_parts(folder: Path, num_tasks: int) -> dict[str, Any]:
    """Link every task's shards into ``folder`` under one numbering (task order) and write its meta.json.
    Idempotent: a merge killed half way is simply done again."""
    parts = [folder / "parts" / f"task-{t:05d}" for t in range(num_tasks)]
    if (folder / "meta.json").is_file() and not any(p.exists() for p in parts):
        return json.loads((folder / "meta.json").read_text())
    metas = []
    for p in parts:
        if not (p / "meta.json").is_file():
            raise ConfigurationError(f"{p}: this task's packed part is missing or unfinished; re-run the pipeline")
        metas.append(json.loads((p / "meta.json").read_text()))
    shards = []
    for p, m in zip(parts, metas):
        for s in m["shards"]:
            k = len(shards)
            new = {**s, "tokens": f"tokens-{k:05d}.bin", "docs": f"docs-{k:05d}.npy"}
            for key in ("tokens", "docs"):
                (folder / new[key]).unlink(missing_ok=True)
                os.link(p / s[key], folder / new[key])
            shards.append(new)
    first = metas[0]
    if any(m["dtype"] != first["dtype"] or m["eos_id"] != first["eos_id"] for m in metas):
        raise ConfigurationError(f"{folder}: parts were packed with different tokenizers; delete the folder and re-run")
    meta = {"format": FORMAT, "tokenizer": first["tokenizer"], "seq_len": first["seq_len"], "dtype": first["dtype"],
            "eos_id": first["eos_id"], "vocab_size": first["vocab_size"], "shards": shards}
    tmp = folder / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, folder / "meta.json")
    shutil.rmtree(folder / "parts")
    return meta
