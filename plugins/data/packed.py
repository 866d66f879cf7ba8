"""The packed token format (``hanlin-packed-v1``): what `hanlin data` writes and `hanlin pretrain` reads.

Pre-training reads fixed-length sequences at random positions millions of times, so the tokens live in flat
binary shards that numpy memory-maps (no parsing, no copy), and document boundaries are kept beside them so the
trainer can restart position ids and mask attention per document. Layout of a folder::

    meta.json          {"format": "hanlin-packed-v1", "tokenizer": str, "seq_len": int, "dtype": "uint16"|"uint32",
                        "eos_id": int, "vocab_size": int,
                        "shards": [{"tokens": "tokens-00000.bin", "docs": "docs-00000.npy",
                                    "num_tokens": int, "num_docs": int}, ...]}
    tokens-NNNNN.bin   the shard's flat token stream: each document's tokens followed by ``eos_id``
    docs-NNNNN.npy     int64 start offset of each document inside that shard's stream

A document never spans two shards (so ``documents()`` reads each back whole); the sequences of the dataset are
cut from the concatenation of all shards in order, so no token is dropped except the final partial sequence.
Every file is written under a temporary name and renamed, and meta.json last: a folder with a meta.json is complete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from hanlin.errors import ConfigurationError, HanlinError

FORMAT = "hanlin-packed-v1"
DEFAULT_SHARD_TOKENS = 1 << 24  # 16M tokens: 32 MB of uint16 per shard


def _dtype_for(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def _replace(tmp: Path, final: Path) -> None:
    os.replace(tmp, final)


class PackedWriter:
    """Append documents' token ids; shards are cut at ``shard_tokens`` (after the document that crosses it)."""

    def __init__(self, folder: str | Path, *, tokenizer: str, seq_len: int, eos_id: int, vocab_size: int,
                 shard_tokens: int = DEFAULT_SHARD_TOKENS) -> None:
        if seq_len < 1:
            raise ConfigurationError(f"seq_len must be >= 1, got {seq_len}")
        if vocab_size < 1 or vocab_size > 1 << 32:
            raise ConfigurationError(f"vocab_size must be in 1..2**32, got {vocab_size}")
        if not 0 <= eos_id < vocab_size:
            raise ConfigurationError(f"eos_id {eos_id} is outside the vocabulary (0..{vocab_size - 1})")
        if shard_tokens < 1:
            raise ConfigurationError(f"shard_tokens must be >= 1, got {shard_tokens}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        if (self.folder / "meta.json").exists():
            raise ConfigurationError(f"{self.folder} already holds a packed dataset (meta.json); "
                                     "write to an empty folder or delete it first")
        self.tokenizer, self.seq_len, self.eos_id, self.vocab_size = str(tokenizer), seq_len, eos_id, vocab_size
        self.dtype = np.dtype(_dtype_for(vocab_size))
        self.shard_tokens = shard_tokens
        self.shards: list[dict[str, Any]] = []
        self._file: Any = None
        self._starts: list[int] = []
        self._n = 0  # tokens in the open shard
        self._closed = False

    def _open(self) -> None:
        name = f"tokens-{len(self.shards):05d}.bin"
        self._file = open(self.folder / (name + ".tmp"), "wb")  # noqa: SIM115 - closed in _flush
        self._starts, self._n = [], 0

    def add(self, tokens: list[int] | np.ndarray) -> None:
        """Append one document (its tokens; the eos is added here). An empty document is a no-op."""
        if self._closed:
            raise HanlinError("PackedWriter.add after close()")
        arr = np.asarray(tokens, dtype=np.int64)
        if arr.size == 0:
            return
        if arr.ndim != 1:
            raise ConfigurationError(f"a document's tokens must be a flat list of ids, got shape {arr.shape}")
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= self.vocab_size:
            bad = lo if lo < 0 else hi
            raise ConfigurationError(f"token id {bad} is outside the vocabulary (0..{self.vocab_size - 1}); "
                                     "pass the tokenizer's real vocab_size")
        if self._file is None:
            self._open()
        self._starts.append(self._n)
        np.append(arr, self.eos_id).astype(self.dtype).tofile(self._file)
        self._n += arr.size + 1
        if self._n >= self.shard_tokens:
            self._flush()

    def _flush(self) -> None:
        if self._file is None:
            return
        self._file.close()
        self._file = None
        k = len(self.shards)
        tokens, docs = f"tokens-{k:05d}.bin", f"docs-{k:05d}.npy"
        with open(self.folder / (docs + ".tmp"), "wb") as fh:
            np.save(fh, np.asarray(self._starts, dtype=np.int64))
        _replace(self.folder / (docs + ".tmp"), self.folder / docs)
        _replace(self.folder / (tokens + ".tmp"), self.folder / tokens)
        self.shards.append({"tokens": tokens, "docs": docs, "num_tokens": self._n, "num_docs": len(self._starts)})

    def close(self) -> dict[str, Any]:
        """Finish the open shard and write meta.json (last, so its presence means the folder is complete)."""
        if self._closed:
            return self.meta
        self._flush()
        self._closed = True
        self.meta = {"format": FORMAT, "tokenizer": self.tokenizer, "seq_len": self.seq_len,
                     "dtype": self.dtype.name, "eos_id": self.eos_id, "vocab_size": self.vocab_size,
                     "shards": self.shards}
        tmp = self.folder / "meta.json.tmp"
        tmp.write_text(json.dumps(self.meta, indent=1))
        _replace(tmp, self.folder / "meta.json")
        return self.meta

    def __enter__(self) -> PackedWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None:
            self.close()
        elif self._file is not None:  # leave no half shard behind; meta.json is not written
            self._file.close()
            (self.folder / f"tokens-{len(self.shards):05d}.bin.tmp").unlink(missing_ok=True)


class PackedDataset:
    """Read a packed folder: ``len()`` fixed-length sequences, ``[i]`` one of them, ``doc_starts(i)`` where
    documents begin inside it, ``documents()`` every original document back (without its eos)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        meta_path = self.folder / "meta.json"
        if not meta_path.is_file():
            raise ConfigurationError(f"{meta_path} not found: not a packed dataset (write one with `hanlin data run` "
                                     "and a pack block) or the writer did not finish")
        try:
            self.meta: dict[str, Any] = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"{meta_path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        if self.meta.get("format") != FORMAT:
            raise ConfigurationError(f"{meta_path}: format {self.meta.get('format')!r}, expected {FORMAT!r}")
        for key in ("seq_len", "dtype", "eos_id", "shards"):
            if key not in self.meta:
                raise ConfigurationError(f"{meta_path}: missing key {key!r}")
        if self.meta["dtype"] not in ("uint16", "uint32"):
            raise ConfigurationError(f"{meta_path}: dtype {self.meta['dtype']!r} must be uint16 or uint32")
        self.seq_len: int = int(self.meta["seq_len"])
        self.eos_id: int = int(self.meta["eos_id"])
        self.dtype = np.dtype(self.meta["dtype"])
        self._tokens: list[np.ndarray] = []
        starts: list[np.ndarray] = []
        bases = [0]
        for shard in self.meta["shards"]:
            path = self.folder / shard["tokens"]
            expected = int(shard["num_tokens"]) * self.dtype.itemsize
            if not path.is_file() or path.stat().st_size != expected:
                got = path.stat().st_size if path.is_file() else "missing"
                raise ConfigurationError(f"{path}: expected {expected} bytes ({shard['num_tokens']} tokens), "
                                         f"found {got}; the folder is damaged, re-run the pack step")
            self._tokens.append(np.memmap(path, dtype=self.dtype, mode="r"))
            docs = np.load(self.folder / shard["docs"])
            if len(docs) != int(shard["num_docs"]):
                raise ConfigurationError(f"{self.folder / shard['docs']}: {len(docs)} starts, meta says "
                                         f"{shard['num_docs']}")
            starts.append(docs + bases[-1])
            bases.append(bases[-1] + int(shard["num_tokens"]))
        self._bases = np.asarray(bases, dtype=np.int64)  # global offset of each shard, then the total
        self._starts = np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64)
        self.num_tokens = int(self._bases[-1])

    def __len__(self) -> int:
        return self.num_tokens // self.seq_len

    @property
    def num_docs(self) -> int:
        return len(self._starts)

    def _span(self, lo: int, hi: int) -> np.ndarray:
        """Tokens [lo, hi) of the concatenated stream, across shard boundaries."""
        parts = []
        k = int(np.searchsorted(self._bases, lo, side="right")) - 1
        while lo < hi:
            end = min(hi, int(self._bases[k + 1]))
            parts.append(self._tokens[k][lo - self._bases[k]: end - self._bases[k]])
            lo, k = end, k + 1
        return np.concatenate(parts) if len(parts) != 1 else np.array(parts[0])

    def __getitem__(self, i: int) -> np.ndarray:
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"sequence {i} out of range (dataset has {n})")
        return self._span(i * self.seq_len, (i + 1) * self.seq_len)

    def doc_starts(self, i: int) -> np.ndarray:
        """Positions in sequence ``i`` (0..seq_len-1) where a document begins, ascending (int64)."""
        if i < 0:
            i += len(self)
        lo = i * self.seq_len
        a, b = np.searchsorted(self._starts, [lo, lo + self.seq_len])
        return self._starts[a:b] - lo

    def documents(self) -> Iterator[np.ndarray]:
        """Each original document's tokens, in the order written (its trailing eos removed)."""
        for tokens, shard in zip(self._tokens, self.meta["shards"]):
            docs = np.load(self.folder / shard["docs"])
            ends = np.append(docs[1:], len(tokens))
            for s, e in zip(docs, ends):
                yield np.array(tokens[s: e - 1])
