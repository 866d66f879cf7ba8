"""Token bookkeeping of prompt scoring (``ChatModel.score``), shared by the cpu, gpu and transformers runtimes.

Each runtime owns its tokenizer and its forward pass; what must be the same everywhere is which tokens are scored.
The continuation's tokens are those of ``context + continuation`` past the context's own tokens, as
lm-evaluation-harness counts them; where the tokenizer merges across the boundary (the context's last token
changes once text follows it), the two texts are tokenized apart so the context keeps its tokens. The same pair
then gives the same tokens on every runtime that shares a tokenizer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hanlin.errors import ConfigurationError


@dataclass(frozen=True, slots=True)
class ScoredIds:
    """One request as tokens: ``ids`` is context then continuation; ``start`` is where the continuation begins."""

    ids: list[int]
    start: int

    @property
    def targets(self) -> list[int]:
        return self.ids[self.start :]

    @property
    def rows(self) -> range:
        """Positions whose next-token prediction scores a continuation token (the last context token's first)."""
        return range(self.start - 1, len(self.ids) - 1)


def pair_ids(context: str, continuation: str, tokenize: Callable[[str], list[int]],
             tokenize_piece: Callable[[str], list[int]]) -> ScoredIds:
    """``tokenize`` reads a whole text (adding BOS where the model wants one); ``tokenize_piece`` reads text that
    follows other text (no BOS)."""
    ctx = tokenize(context)
    full = tokenize(context + continuation)
    if full[: len(ctx)] != ctx or len(full) == len(ctx):
        full = ctx + tokenize_piece(continuation)
    if not ctx or len(full) == len(ctx):
        raise ConfigurationError(f"the context {context[:40]!r} or the continuation {continuation[:40]!r} tokenized "
                                 "to no tokens; give each some text")
    return ScoredIds(full, len(ctx))


def length_batches(items: Sequence[ScoredIds], max_tokens: int) -> list[list[int]]:
    """Indices of ``items`` grouped into batches of similar length (longest first, so the first batch shows the
    memory peak at once), each padded batch holding at most ``max_tokens`` tokens (one item always fits)."""
    order = sorted(range(len(items)), key=lambda i: -len(items[i].ids))
    batches: list[list[int]] = []
    for i in order:
        if batches and len(items[batches[-1][0]].ids) * (len(batches[-1]) + 1) <= max_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches
