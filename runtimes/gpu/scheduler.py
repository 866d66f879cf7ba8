"""Who runs in the next step: continuous batching under a token budget, with chunked prefill and preemption.

Every step, running sequences go first (their decodes, one token each, then the chunks of prefills in progress),
then waiting requests are admitted in arrival order while the budget and the KV blocks last. A long prompt is cut
into chunks, so it never stalls the decodes of the others; while requests wait, a prefill in progress takes at most
half the budget, so a short request arriving behind a long prompt starts at the next step instead of after the
whole prompt (and the long one still advances every step). New requests join at any step. When blocks run out, the
most recently admitted sequence not already in this step's batch is preempted: its blocks are freed and it is
recomputed later from its tokens (prompt and what it generated), first in line.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from hanlin.runtimes.gpu.block_manager import BlockManager, block_hash
from hanlin.runtimes.gpu.sequence import Sequence, Status


@dataclass(slots=True)
class Scheduled:
    seq: Sequence
    num_tokens: int  # new tokens computed for it this step


class Scheduler:
    def __init__(self, blocks: BlockManager, max_batch_tokens: int = 2048, max_seqs: int = 256) -> None:
        self.blocks, self.max_batch_tokens, self.max_seqs = blocks, max_batch_tokens, max_seqs
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.preemptions = 0

    def add(self, seq: Sequence) -> None:
        blocks_needed = -(-(len(seq.tokens) + seq.params.max_tokens) // self.blocks.block_size)
        if blocks_needed > self.blocks.num_blocks:
            raise ValueError(
                f"a request of {len(seq.tokens)} prompt + {seq.params.max_tokens} new tokens needs {blocks_needed} KV "
                f"blocks but the cache has {self.blocks.num_blocks}; lower max_tokens or give the cache more memory"
            )
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def _blocks_for(self, seq: Sequence, n: int) -> int:
        return max(-(-(seq.num_computed + n) // self.blocks.block_size) - len(seq.blocks), 0)

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.release(seq.blocks)
        seq.blocks, seq.num_computed, seq.last_hash, seq.num_hashed_blocks = [], 0, None, 0
        seq.status = Status.WAITING
        self.waiting.appendleft(seq)
        self.preemptions += 1

    def _victim(self, batch: list[Scheduled]) -> Sequence:
        """The most recently admitted running sequence not already in this step's batch. A sequence in the batch
        must keep its blocks (the step writes into them), and the one asking for room is never in it, so there
        is always a candidate: at worst the asker itself."""
        taken = {id(item.seq) for item in batch}
        return next(s for s in reversed(self.running) if id(s) not in taken)

    def schedule(self) -> list[Scheduled]:
        budget = self.max_batch_tokens
        out: list[Scheduled] = []
        # Decodes first (one token each), then the chunks of prefills in progress: a long prompt admitted earlier
        # never takes the budget that the running decodes need, so short requests keep streaming beside it.
        order = sorted(self.running, key=lambda s: s.to_compute > 1)
        for seq in order:
            if seq not in self.running:  # preempted below to make room for an older one
                continue
            n = min(seq.to_compute, budget)
            if n > 1 and self.waiting:  # a prefill in progress leaves room for the requests waiting behind it
                n = min(n, max(self.max_batch_tokens // 2, 1))
            if n <= 0:
                continue
            need = self._blocks_for(seq, n)
            while need > self.blocks.num_free:
                victim = self._victim(out)
                self._preempt(victim)
                if victim is seq:
                    break
            if seq.status is not Status.RUNNING:
                continue
            seq.blocks.extend(self.blocks.allocate() for _ in range(need))
            out.append(Scheduled(seq, n))
            budget -= n
        while self.waiting and budget > 0 and len(self.running) < self.max_seqs:
            seq = self.waiting[0]
            if not seq.blocks:
                # Reuse cached full blocks of the prefix; at least one token must still be computed for logits.
                seq.blocks, seq.last_hash = self.blocks.match_prefix(seq.tokens, len(seq.tokens) - 1)
                seq.num_hashed_blocks = len(seq.blocks)
                seq.num_computed = seq.cached_tokens = len(seq.blocks) * self.blocks.block_size
            n = min(seq.to_compute, budget)
            need = self._blocks_for(seq, n)
            if need > self.blocks.num_free:
                # Give back the prefix blocks it took: a waiting sequence must not hold blocks others need.
                self.blocks.release(seq.blocks)
                seq.blocks, seq.num_computed, seq.last_hash, seq.num_hashed_blocks = [], 0, None, 0
                seq.cached_tokens = 0
                if not self.running and not out:  # nothing will ever free blocks: fail loudly, never hang
                    raise RuntimeError("the KV cache cannot hold a single request; give it more memory")
                break
            self.waiting.popleft()
            self.blocks.hits += seq.cached_tokens  # counted once admitted: a match given back above is no hit
            seq.blocks.extend(self.blocks.allocate() for _ in range(need))
            seq.status = Status.RUNNING
            self.running.append(seq)
            out.append(Scheduled(seq, n))
            budget -= n
        return out

    def computed(self, item: Scheduled) -> None:
        """After the step ran: advance the sequence and make its newly full blocks findable by later requests."""
        seq = item.seq
        seq.num_computed += item.num_tokens
        bs = self.blocks.block_size
        while (seq.num_hashed_blocks + 1) * bs <= seq.num_computed:
            i = seq.num_hashed_blocks
            chunk = seq.tokens[i * bs : (i + 1) * bs]
            seq.last_hash = block_hash(seq.last_hash, chunk)
            self.blocks.register(seq.blocks[i], seq.last_hash, chunk, seq.blocks[i - 1] if i else None)
            seq.num_hashed_blocks += 1

    def finish(self, seq: Sequence, reason: str) -> None:
        seq.status, seq.finish_reason = Status.FINISHED, reason
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.blocks.release(seq.blocks)
        seq.blocks = []
