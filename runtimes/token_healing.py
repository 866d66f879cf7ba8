"""Token healing for raw prompts that end in whitespace, on every local runtime.

Byte-level BPE glues a word's leading space to the word (" return", " Paris"), so a prompt that ends in its own
indentation or in a space ends in tokens the model has hardly seen in that place: SmolLM2 continued "The capital of
France is " with "21st-century Paris", and a model pre-trained by examples/pretrain_tiny.py continued
"def read_config(path):\\n    " with "1):". An editor's completion request ends in indentation all the time.

So the whitespace tokens at the end of the prompt come off, and the model writes that text again in the split it
would choose, held to it (a grammar on cpu and gpu, a token mask on transformers); what it writes past the tail is
the reply. Only whitespace is healed: a prompt that ends in a word means that word.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

MOST_TOKENS = 8  # a longer run of whitespace tokens is taken as meant


def whitespace_tail(tokens: Sequence[int], text: Callable[[int], Any], most: int = MOST_TOKENS) -> int:
    """How many tokens at the end of ``tokens`` are whitespace only (``text(token)`` is its str or bytes), at most
    ``most`` and never the whole prompt. A token with no text (BOS, a special token) ends the tail."""
    n = 0
    while n < min(most, len(tokens) - 1):
        piece = text(tokens[-1 - n])
        if not piece or not piece.isspace():
            break
        n += 1
    return n


def heals(params: Any) -> bool:
    """Whether a raw completion with these parameters may be healed: not under the caller's own constraint. Stop
    strings are fine: every runtime cuts the rewritten tail before it looks for them (a one-line completion with
    stop "\\n" after a prompt ending in indentation is the common case)."""
    return params.constraint is None


def split_tail(tokens: Sequence[int], text: Callable[[int], Any], params: Any) -> tuple[list[int], Any]:
    """(the prompt's tokens without their whitespace tail, the tail's text joined as ``text`` gives it: str or
    bytes), or (all the tokens, None) when there is nothing to heal or ``params`` rule it out."""
    n = whitespace_tail(tokens, text) if heals(params) else 0
    if not n:
        return list(tokens), None
    pieces = [text(t) for t in tokens[-n:]]
    return list(tokens[:-n]), pieces[0][:0].join(pieces)


def healing_grammar(tail: str) -> str:
    """GBNF (read by llama.cpp and xgrammar alike) for a reply that starts by writing ``tail`` again."""
    from hanlin.grammar import gbnf_literal

    return f"root ::= {gbnf_literal(tail)} rest\nrest ::= [^\\x00]*"


class TailMask:
    """The token mask for a runtime without grammars (transformers): while ``rest`` of the tail is still to be
    written, only tokens whose text continues it, or covers it and goes on, keep their logits."""

    def __init__(self, vocab: Sequence[str]) -> None:
        self.vocab = vocab

    def apply(self, logits: Any, rest: str) -> Any:
        import torch

        allowed = [i for i, t in enumerate(self.vocab) if t and (rest.startswith(t) or t.startswith(rest))]
        masked = torch.full_like(logits, float("-inf"))
        index = torch.tensor(allowed, dtype=torch.long, device=logits.device)
        masked[..., index] = logits[..., index]
        return masked
