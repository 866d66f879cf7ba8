"""Decode steps replayed from CUDA graphs.

A decode step of a small model is dozens of tiny kernels; launched one by one from Python, the launches cost
more than the work at small batch sizes. Each padded batch size is captured once (1, 2, 4, 8, then steps of 16
up to ``max_seqs``) over static input buffers; a step copies its inputs into the buffers of the smallest size
that fits and replays the graph. Everything the captured code reads is fixed at capture: the buffers' addresses,
the block-table width and the attention grid (sized for ``max_context``, so no host read of the lengths).

Padding rows must not disturb real sequences: their key/value go to a scratch slot in a block the engine keeps
out of the allocator, and their context is that one slot. With ``capture=False`` the same padded path runs
eagerly; that is how it is tested on machines without a GPU (the capture itself needs one).
"""

from __future__ import annotations

import torch

from hanlin.runtimes.gpu.layers import StepBatch


def graph_sizes(max_seqs: int) -> list[int]:
    sizes = [s for s in (1, 2, 4, 8) if s <= max_seqs]
    sizes += list(range(16, max_seqs + 1, 16))
    if sizes[-1] < max_seqs:
        sizes.append(max_seqs)
    return sizes


class DecodeGraphs:
    def __init__(self, model: object, kv: list[tuple[torch.Tensor, torch.Tensor]], *, max_seqs: int,
                 max_blocks_per_seq: int, block_size: int, scratch_slot: int, capture: bool = True) -> None:
        self.model, self.kv = model, kv
        self.sizes = graph_sizes(max_seqs)
        self.block_size, self.scratch_slot = block_size, scratch_slot
        self.max_context = max_blocks_per_seq * block_size
        device = kv[0][0].device
        n = self.sizes[-1]
        self.input_ids = torch.zeros(n, dtype=torch.int64, device=device)
        self.positions = torch.zeros(n, dtype=torch.int64, device=device)
        self.slots = torch.full((n,), scratch_slot, dtype=torch.int64, device=device)
        self.cu_seqlens = torch.arange(n + 1, dtype=torch.int32, device=device)
        self.context_lens = torch.ones(n, dtype=torch.int32, device=device)
        self.block_tables = torch.zeros(n, max_blocks_per_seq, dtype=torch.int32, device=device)
        self.logits_rows = torch.arange(n, dtype=torch.int64, device=device)
        self.scratch_block = scratch_slot // block_size
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.captured = False
        if capture:
            self._capture_all()

    def _static_batch(self, size: int) -> StepBatch:
        return StepBatch(
            input_ids=self.input_ids[:size], positions=self.positions[:size], slots=self.slots[:size],
            cu_seqlens_q=self.cu_seqlens[: size + 1], context_lens=self.context_lens[:size],
            block_tables=self.block_tables[:size], decode_only=True, logits_rows=self.logits_rows[:size],
            max_context=self.max_context,
        )

    def _reset_padding(self) -> None:
        """Every row a harmless one-token sequence living in the scratch block."""
        self.slots.fill_(self.scratch_slot)
        self.context_lens.fill_(1)
        self.positions.zero_()
        self.block_tables.zero_()
        self.block_tables[:, 0] = self.scratch_block

    def _capture_all(self) -> None:
        self._reset_padding()
        pool = None
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for size in reversed(self.sizes):  # largest first: smaller graphs reuse its memory pool
                batch = self._static_batch(size)
                for _ in range(2):  # compile the Triton kernels and settle the allocator outside the capture
                    self.model.forward(batch, self.kv)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool, stream=stream):
                    out = self.model.forward(batch, self.kv)
                pool = graph.pool()
                self.graphs[size] = (graph, out)
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        self.captured = True

    def fits(self, batch: StepBatch) -> bool:
        width = batch.block_tables.shape[1]
        return (batch.decode_only and batch.input_ids.shape[0] <= self.sizes[-1]
                and width <= self.block_tables.shape[1] and batch.logits_rows.shape[0] == batch.input_ids.shape[0])

    def run(self, batch: StepBatch) -> torch.Tensor:
        """Logits of a decode batch through the padded static buffers (replayed when captured)."""
        n = batch.input_ids.shape[0]
        size = next(s for s in self.sizes if s >= n)
        self._reset_padding()
        self.input_ids[:n].copy_(batch.input_ids)
        self.positions[:n].copy_(batch.positions)
        self.slots[:n].copy_(batch.slots)
        self.context_lens[:n].copy_(batch.context_lens)
        width = batch.block_tables.shape[1]
        self.block_tables[:n, :width].copy_(batch.block_tables)
        if self.captured:
            graph, out = self.graphs[size]
            graph.replay()
        else:
            out = self.model.forward(self._static_batch(size), self.kv)
        return out[:n]
