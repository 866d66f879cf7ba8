"""Paged KV blocks: allocation with reference counts, and prefix caching by block hash.

A full block is identified by a hash of its tokens chained with the hash of the block before it. Freed blocks keep
their hash and stay findable until the allocator reuses them (least recently freed first), which is what lets the
steps of an agent run, or many requests with one system prompt, skip the prefill of what an earlier request
already computed.

The cache is shared by every client of ``hanlin serve``, so a hit must never hand one request the keys and values
of another's different tokens (vLLM's CVE-2025-25183 came from Python's ``hash`` on a prefix cache). Two
guards: the hash is SHA-256 of the parent's digest and the tokens' bytes, so nobody can craft a collision; and a
hit is verified anyway: the block must hold the same tokens and have been computed after the same parent block,
in the same life of that block (every registration gets a fresh version number, so a child computed after a
parent that was since evicted and reused never matches again).
"""

from __future__ import annotations

import hashlib
import itertools
from array import array
from collections import OrderedDict
from collections.abc import Sequence


def block_hash(previous: bytes | None, tokens: Sequence[int]) -> bytes:
    """SHA-256 of the parent block's digest (none for the first block) and the tokens as int64 bytes."""
    return hashlib.sha256((previous or b"") + array("q", tokens).tobytes()).digest()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"need at least one block of at least one token, got {num_blocks} x {block_size}")
        self.num_blocks, self.block_size = num_blocks, block_size
        self.refs = [0] * num_blocks
        self.hash_of: list[bytes | None] = [None] * num_blocks
        # what a registered block holds: (parent block or -1, the parent's version then, its tokens)
        self.content: list[tuple[int, int, tuple[int, ...]] | None] = [None] * num_blocks
        self.version = [0] * num_blocks
        self._versions = itertools.count(1)
        self.cached: dict[bytes, int] = {}  # hash -> block
        # free blocks holding no prefix come first, then the cached ones, least recently freed first
        self.free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        self.num_uncached_free = num_blocks
        self.hits = 0  # prompt tokens served from the prefix cache to admitted requests (metrics and tests)

    @property
    def num_free(self) -> int:
        return len(self.free)

    def allocate(self) -> int:
        """A free block, one that holds no cached prefix if there is any (else the least recently freed)."""
        if not self.free:
            raise RuntimeError("no free KV block")  # the scheduler checks num_free first; reaching this is a bug
        block, _ = self.free.popitem(last=False)
        old = self.hash_of[block]
        if old is None:
            self.num_uncached_free -= 1
        elif self.cached.get(old) == block:
            del self.cached[old]
        self.hash_of[block], self.content[block] = None, None
        self.refs[block] = 1
        return block

    def match_prefix(self, tokens: list[int], limit: int) -> tuple[list[int], bytes | None]:
        """Cached blocks for the longest run of full blocks of ``tokens[:limit]``; takes a reference on each.
        Returns (blocks, hash of the last matched block)."""
        blocks: list[int] = []
        h: bytes | None = None
        parent, parent_version = -1, 0
        bs = self.block_size
        for start in range(0, limit - limit % bs, bs):
            chunk = tuple(tokens[start : start + bs])
            nh = block_hash(h, chunk)
            block = self.cached.get(nh)
            if block is None or self.content[block] != (parent, parent_version, chunk):
                break
            if self.refs[block] == 0:
                self.free.pop(block, None)
            self.refs[block] += 1
            blocks.append(block)
            h, parent, parent_version = nh, block, self.version[block]
        return blocks, h

    def register(self, block: int, h: bytes, tokens: Sequence[int], parent: int | None) -> None:
        """``block`` is now full of ``tokens``, computed after ``parent`` (the sequence's block before it), and its
        chained hash is ``h``: make it findable."""
        self.hash_of[block] = h
        self.version[block] = next(self._versions)
        after = (-1, 0) if parent is None else (parent, self.version[parent])
        self.content[block] = (*after, tuple(tokens))
        self.cached[h] = block  # the newest wins: an older block under this key may hang off an evicted parent

    def release(self, blocks: list[int]) -> None:
        for block in reversed(blocks):  # a sequence's tail blocks are the least likely to be shared: reuse first
            self.refs[block] -= 1
            if self.refs[block] == 0:
                self.free[block] = None
                if self.hash_of[block] is None:
                    self.free.move_to_end(block, last=False)  # an unhashed block holds nothing worth keeping
                    self.num_uncached_free += 1
