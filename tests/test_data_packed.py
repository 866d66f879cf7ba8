"""The packed token format: exact layout on disk, sequences across shard boundaries, documents back whole."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hanlin.errors import ConfigurationError
from hanlin.plugins.data.packed import PackedDataset, PackedWriter


def test_layout_sequences_and_doc_starts_are_exact(tmp_path):
    docs = [[5, 6, 7], [8], [9, 10, 11, 12, 13], [14, 15]]
    with PackedWriter(tmp_path, tokenizer="tok", seq_len=4, eos_id=0, vocab_size=100, shard_tokens=6) as w:
        for d in docs:
            w.add(d)
        w.add([])  # empty: nothing written
    meta = json.loads((tmp_path / "meta.json").read_text())
    # shard 0: [5 6 7 0 8 0] (6 tokens reached -> cut), shard 1: [9..13 0] (cut again), shard 2: [14 15 0]
    assert meta["format"] == "hanlin-packed-v1" and meta["dtype"] == "uint16" and meta["seq_len"] == 4
    assert [(s["num_tokens"], s["num_docs"]) for s in meta["shards"]] == [(6, 2), (6, 1), (3, 1)]
    assert np.fromfile(tmp_path / "tokens-00000.bin", dtype=np.uint16).tolist() == [5, 6, 7, 0, 8, 0]
    assert np.load(tmp_path / "docs-00000.npy").tolist() == [0, 4]
    ds = PackedDataset(tmp_path)
    assert len(ds) == 3  # 15 tokens // 4
    assert ds[0].tolist() == [5, 6, 7, 0] and ds[1].tolist() == [8, 0, 9, 10] and ds[2].tolist() == [11, 12, 13, 0]
    assert ds[-1].tolist() == ds[2].tolist()
    # global starts: 0, 4, 6, 12 -> seq0 {0}, seq1 {0, 2}, seq2 {} (12 is in seq 3, not complete)
    assert [ds.doc_starts(i).tolist() for i in range(3)] == [[0], [0, 2], []]
    assert [d.tolist() for d in ds.documents()] == docs
    with pytest.raises(IndexError):
        ds[3]
    assert not list(tmp_path.glob("*.tmp"))


def test_large_vocab_uses_uint32_and_bad_ids_are_refused(tmp_path):
    w = PackedWriter(tmp_path / "a", tokenizer="t", seq_len=2, eos_id=1, vocab_size=100_000)
    w.add([70_000, 99_999])
    w.close()
    ds = PackedDataset(tmp_path / "a")
    assert ds.meta["dtype"] == "uint32" and ds[0].tolist() == [70_000, 99_999]
    w = PackedWriter(tmp_path / "b", tokenizer="t", seq_len=2, eos_id=1, vocab_size=10)
    with pytest.raises(ConfigurationError, match="token id 10 is outside"):
        w.add([3, 10])
    with pytest.raises(ConfigurationError, match="eos_id 10"):
        PackedWriter(tmp_path / "c", tokenizer="t", seq_len=2, eos_id=10, vocab_size=10)


def test_damaged_folder_is_reported(tmp_path):
    with PackedWriter(tmp_path, tokenizer="t", seq_len=2, eos_id=0, vocab_size=10) as w:
        w.add([1, 2, 3])
    with open(tmp_path / "tokens-00000.bin", "ab") as fh:
        fh.write(b"\0\0")
    with pytest.raises(ConfigurationError, match="expected 8 bytes"):
        PackedDataset(tmp_path)
    with pytest.raises(ConfigurationError, match="not found"):
        PackedDataset(tmp_path / "nothing")
