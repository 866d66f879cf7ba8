"""Prompt log-probabilities on llama.cpp, batched, each shared context evaluated once.

llama-cpp-python's ``Llama`` keeps the logits of the last token only, unless it is built with ``logits_all``,
which then computes and copies a vocabulary-wide row for every prompt position (measured: 5x slower than this on
HellaSwag). So scoring runs on a second llama.cpp context over the same loaded weights (no second copy of the
model; the generation context and its KV cache, which agent runs reuse, stay untouched), fed through our own
``llama_batch``:

- requests are grouped by their context tokens (the choices of one question share one);
- each context is decoded once in its own sequence, asking for the logits of its last token only;
- its KV cells are shared (``llama_memory_seq_cp``, a unified cache: no copy) with one sequence per continuation,
  and all continuations of a chunk go through one decode, asking logits only where a continuation token is
  predicted.

A chunk holds as many groups as fit ``chunk_tokens`` KV cells and ``max_seqs`` sequences; the cache is cleared
between chunks. Small chunks keep attention cheap (every token of a decode looks at the chunk's cells, masked).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hanlin.runtimes.scoring import ScoredIds

CHUNK_TOKENS = 1024  # KV cells per chunk (measured best on 2 CPU cores for HellaSwag)
MAX_SEQS = 64


@dataclass(slots=True)
class _Entry:
    token: int
    pos: int
    seq: int
    on_logits: Callable[[np.ndarray], None] | None  # called with this position's logits row, when wanted


class LlamaScorer:
    """Owns the scoring context; created on first use by ``LlamaChatModel.score``, freed before the model."""

    def __init__(self, llm: Any, n_threads: int, *, chunk_tokens: int = CHUNK_TOKENS, max_seqs: int = MAX_SEQS) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self.n_ctx = llm.n_ctx()
        self.n_vocab = llm.n_vocab()
        self.chunk_tokens, self.max_seqs = min(chunk_tokens, self.n_ctx), max_seqs
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = self.n_ctx  # one request may be as long as the generation context allows
        params.n_batch = params.n_ubatch = min(512, self.n_ctx)
        params.n_seq_max = max_seqs
        params.kv_unified = True  # sequences share cells: seq_cp of a context costs nothing
        params.n_threads = params.n_threads_batch = n_threads
        self._ctx = llama_cpp.llama_init_from_model(llm._model.model, params)
        if not self._ctx:
            raise MemoryError(f"llama.cpp could not create a scoring context of {self.n_ctx} tokens")
        self._mem = llama_cpp.llama_get_memory(self._ctx)
        self._n_batch = params.n_batch
        self._batch = llama_cpp.llama_batch_init(self._n_batch, 0, 1)
        self._pending: list[_Entry] = []

    # ---- the batch ---------------------------------------------------------------------------
    def _add(self, entry: _Entry) -> None:
        self._pending.append(entry)
        if len(self._pending) == self._n_batch:
            self._flush()

    def _flush(self) -> None:
        """Decode what is pending; hand each wanted logits row to its callback before the next decode overwrites it."""
        if not self._pending:
            return
        b, lib = self._batch, self._lib
        for i, e in enumerate(self._pending):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = e.token, e.pos, 1, e.on_logits is not None
            b.seq_id[i][0] = e.seq
        b.n_tokens = len(self._pending)
        code = lib.llama_decode(self._ctx, b)
        if code != 0:
            self._pending.clear()
            raise RuntimeError(f"llama_decode returned {code} while scoring")
        for i, e in enumerate(self._pending):
            if e.on_logits is not None:
                e.on_logits(np.ctypeslib.as_array(lib.llama_get_logits_ith(self._ctx, i), shape=(self.n_vocab,)))
        self._pending.clear()

    # ---- scoring -----------------------------------------------------------------------------
    def score(self, pairs: Sequence[ScoredIds]) -> list[list[float]]:
        out: list[list[float]] = [[math.nan] * len(p.targets) for p in pairs]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, p in enumerate(pairs):
            groups.setdefault(tuple(p.ids[: p.start]), []).append(i)
        split = [(context, members[s : s + self.max_seqs - 1])  # one context sequence + its continuations
                 for context, members in groups.items() for s in range(0, len(members), self.max_seqs - 1)]
        chunk: list[tuple[tuple[int, ...], list[int]]] = []
        cells = seqs = 0
        for context, members in split:
            need = len(context) + sum(len(pairs[i].targets) for i in members)
            if need > self.n_ctx:  # too long together: each request alone (the caller checked each fits)
                for i in members:
                    self._score_chunk([(context, [i])], pairs, out)
                continue
            if chunk and (cells + need > self.chunk_tokens or seqs + 1 + len(members) > self.max_seqs):
                self._score_chunk(chunk, pairs, out)
                chunk, cells, seqs = [], 0, 0
            chunk.append((context, members))
            cells, seqs = cells + need, seqs + 1 + len(members)
        if chunk:
            self._score_chunk(chunk, pairs, out)
        return out

    def _score_chunk(self, chunk: list[tuple[tuple[int, ...], list[int]]], pairs: Sequence[ScoredIds],
                     out: list[list[float]]) -> None:
        lib = self._lib
        lib.llama_memory_clear(self._mem, True)
        for g, (context, members) in enumerate(chunk):  # phase 1: every context once, logits of its last token
            for pos, token in enumerate(context):
                last = pos == len(context) - 1
                self._add(_Entry(token, pos, g, self._setter(pairs, out, members, 0) if last else None))
        self._flush()
        seq = len(chunk)
        for g, (context, members) in enumerate(chunk):  # phase 2: the continuations, on copies of their context
            for i in members:
                lib.llama_memory_seq_cp(self._mem, g, seq, -1, -1)
                targets = pairs[i].targets
                for k, token in enumerate(targets[:-1]):  # the last token predicts nothing that is scored
                    self._add(_Entry(token, len(context) + k, seq, self._setter(pairs, out, [i], k + 1)))
                seq += 1
        self._flush()
        lib.llama_memory_clear(self._mem, True)

    @staticmethod
    def _setter(pairs: Sequence[ScoredIds], out: list[list[float]], members: list[int],
                k: int) -> Callable[[np.ndarray], None]:
        """Record the log-probability of target k of each member from one logits row."""

        def take(row: np.ndarray) -> None:
            top = float(row.max())
            log_z = top + math.log(float(np.exp(row - top, dtype=np.float32).sum(dtype=np.float64)))
            for i in members:
                out[i][k] = float(row[pairs[i].targets[k]]) - log_z

        return take

    def close(self) -> None:
        if self._ctx:
            self._lib.llama_batch_free(self._batch)
            self._lib.llama_free(self._ctx)
            self._ctx = None
