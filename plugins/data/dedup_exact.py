"""Exact dedup: documents with the same (normalised) text are one; the one with the smallest id stays."""

from __future__ import annotations

import re

from hanlin.plugins.data.document import Document, GlobalBlock

_SPACE = re.compile(r"\s+")


class ExactDedup(GlobalBlock):
    """Hash each document's text (xxh3-128; ``normalize`` lowercases and collapses whitespace first) and keep the
    smallest id of each group of equal hashes."""

    name = "exact_dedup"
    label = "exact duplicate"

    def __init__(self, normalize: bool = True) -> None:
        super().__init__()
        self.normalize = normalize

    def key(self, doc: Document) -> bytes:
        import xxhash

        text = _SPACE.sub(" ", doc.text.lower()).strip() if self.normalize else doc.text
        return xxhash.xxh3_128_digest(text.encode("utf-8"))

    def resolve(self, ids: list[str], keys: list[bytes]) -> dict[str, str]:
        first: dict[bytes, str] = {}
        removed: dict[str, str] = {}
        for i in sorted(range(len(ids)), key=ids.__getitem__):
            keep = first.setdefault(keys[i], ids[i])
            if keep != ids[i]:
                removed[ids[i]] = keep
        return removed
