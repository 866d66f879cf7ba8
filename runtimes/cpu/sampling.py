"""Token sampling on llama.cpp with a grammar checked *after* sampling, not before.

llama.cpp's grammar sampler tests every vocabulary entry against the grammar
at every step (49k-151k strings), which makes constrained decoding ~35%
slower. Most of the time the token the model would pick anyway is allowed, so
we sample without the grammar first, ask the grammar about that one token,
and only when it is rejected run the full grammar pass and resample. The
distribution sampled from is the same as grammar-first; the work is not.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Iterator
from typing import Any

import numpy as np


class GrammarFirstSampler:
    """Samples token after token from ``llm``'s context; ``grammar`` (GBNF text) may be None."""

    def __init__(self, llm: Any, vocab: Any, grammar: str | None, *, temperature: float, top_k: int, top_p: float,
                 min_p: float, repeat_penalty: float, frequency_penalty: float = 0.0,
                 presence_penalty: float = 0.0) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self._llm = llm
        self._vocab = vocab
        self._chain = llm._init_sampler(
            temp=temperature, top_k=top_k, top_p=top_p, min_p=min_p, repeat_penalty=repeat_penalty,
            frequency_penalty=frequency_penalty, presence_penalty=presence_penalty,
        )
        self._grammar = None
        if grammar is not None:
            self._grammar = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode("utf-8"), b"root")
            if not self._grammar:
                raise ValueError("llama.cpp could not parse the grammar")
        self._one = (llama_cpp.llama_token_data * 1)()
        self._one_array = llama_cpp.llama_token_data_array(data=self._one, size=1, selected=-1, sorted=False)
        self._n_vocab = llm.n_vocab()
        self.resampled = 0  # how often the grammar overruled the free choice

    def _allowed(self, token: int) -> bool:
        self._one[0].id, self._one[0].logit, self._one[0].p = token, 1.0, 0.0
        self._one_array.size, self._one_array.selected, self._one_array.sorted = 1, -1, False
        self._lib.llama_sampler_apply(self._grammar, ctypes.byref(self._one_array))
        return not math.isinf(self._one[0].logit)

    def _resample_with_grammar(self) -> int:
        lib = self._lib
        logits = np.ctypeslib.as_array(lib.llama_get_logits_ith(self._llm._ctx.ctx, -1), shape=(self._n_vocab,))
        candidates = self._llm._candidates
        candidates.copy_logits(logits)
        candidates.candidates.selected = -1
        pointer = ctypes.byref(candidates.candidates)
        lib.llama_sampler_apply(self._grammar, pointer)
        lib.llama_sampler_apply(self._chain.sampler, pointer)
        chosen = candidates.candidates.selected
        token = int(candidates.candidates_data.id[chosen])
        lib.llama_sampler_accept(self._chain.sampler, token)
        return token

    def activate(self, grammar: str, prefix: list[int]) -> bool:
        """Switch a grammar on mid-reply (lazy tool-call grammar): ``prefix`` is the text already written from
        where the grammar starts, re-tokenized. Each token is checked before the grammar accepts it (llama.cpp
        aborts the process on accepting a piece its grammar rejects); False, and no grammar, when the text so far
        is not a prefix the grammar allows.
        """
        if self._grammar is not None:
            return False
        handle = self._lib.llama_sampler_init_grammar(self._vocab, grammar.encode("utf-8"), b"root")
        if not handle:
            raise ValueError("llama.cpp could not parse the grammar")
        self._grammar = handle
        for token in prefix:
            if not self._allowed(token):
                self._lib.llama_sampler_free(handle)
                self._grammar = None
                return False
            self._lib.llama_sampler_accept(handle, token)
        return True

    def complete(self, eog: int) -> bool:
        """Whether the grammar has matched a whole root, i.e. it would let generation end here."""
        return self._grammar is not None and self._allowed(eog)

    def deactivate(self) -> None:
        """Back to free sampling (a lazy grammar whose call is complete; the next call switches one on again)."""
        if self._grammar is not None:
            self._lib.llama_sampler_free(self._grammar)
            self._grammar = None

    def next_token(self) -> int:
        token = self._chain.sample(self._llm._ctx, -1)  # samples and accepts into the chain
        if self._grammar is not None:
            if not self._allowed(token):
                self.resampled += 1
                token = self._resample_with_grammar()
            self._lib.llama_sampler_accept(self._grammar, token)
        return token

    def close(self) -> None:
        if self._grammar is not None:
            self._lib.llama_sampler_free(self._grammar)
            self._grammar = None
        self._chain.close()


def decode(llm: Any, sampler: GrammarFirstSampler, suffix: list[int], max_tokens: int) -> Iterator[int]:
    """Evaluate the prompt suffix, then yield sampled tokens, evaluating each before the next."""
    llm.eval(suffix)
    for _ in range(max_tokens):
        token = sampler.next_token()
        yield token
        llm.eval([token])
