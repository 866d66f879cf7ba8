"""Paged KV blocks: allocation with reference counts, and prefix caching by block hash.

A full block is identified by a hash of its tokens chained with the hash of the block before it, so equal hashes
mean equal prefixes. Freed blocks keep their hash and stay findable until the allocator reuses them (least
recently freed first), which is what lets the steps of an agent run, or many requests with one system prompt,
skip the prefill of what an earlier request already computed.
"""

from __future__ import annotations

from collections import OrderedDict


def block_hash(previous: int | None, tokens: list[int]) -> int:
    return hash((previous, tuple(tokens)))


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"need at least one block of at least one token, got {num_blocks} x {block_size}")
        self.num_blocks, self.block_size = num_blocks, block_size
        self.refs = [0] * num_blocks
        self.hash_of: list[int | None] = [None] * num_blocks
        self.cached: dict[int, int] = {}  # hash -> block
        self.free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        self.hits = 0  # tokens served from the prefix cache (for metrics and tests)

    @property
    def num_free(self) -> int:
        return len(self.free)

    def allocate(self) -> int:
        if not self.free:
            raise RuntimeError("no free KV block")  # the scheduler checks num_free first; reaching this is a bug
        block, _ = self.free.popitem(last=False)
        old = self.hash_of[block]
        if old is not None and self.cached.get(old) == block:
            del self.cached[old]
        self.hash_of[block] = None
        self.refs[block] = 1
        return block

    def match_prefix(self, tokens: list[int], limit: int) -> tuple[list[int], int | None]:
        """Cached blocks for the longest run of full blocks of ``tokens[:limit]``; takes a reference on each.
        Returns (blocks, hash of the last matched block)."""
        blocks: list[int] = []
        h: int | None = None
        bs = self.block_size
        for start in range(0, limit - limit % bs, bs):
            nh = block_hash(h, tokens[start : start + bs])
            block = self.cached.get(nh)
            if block is None:
                break
            if self.refs[block] == 0:
                self.free.pop(block, None)
            self.refs[block] += 1
            blocks.append(block)
            h = nh
        self.hits += len(blocks) * bs
        return blocks, h

    def register(self, block: int, h: int) -> None:
        """``block`` is now full and its content hashes to ``h``: make it findable."""
        self.hash_of[block] = h
        self.cached.setdefault(h, block)

    def release(self, blocks: list[int]) -> None:
        for block in reversed(blocks):  # a sequence's tail blocks are the least likely to be shared: reuse first
            self.refs[block] -= 1
            if self.refs[block] == 0:
                self.free[block] = None
                if self.hash_of[block] is None:
                    self.free.move_to_end(block, last=False)  # an unhashed block holds nothing worth keeping
