"""The two per-token pieces of the decode loop: picking the next token, and turning tokens into text deltas.

Sampling defaults mirror the cpu runtime's (top_k 40, top_p 0.95, min_p 0.05
when sampling; greedy at temperature 0) so the same GenerationParams mean the
same thing on either backend. Sampling runs on the CPU with a seeded
generator, so a seed gives the same tokens whatever device the model is on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEFAULT_TOP_K = 40
DEFAULT_TOP_P = 0.95
DEFAULT_MIN_P = 0.05


def sample_token(logits: Any, temperature: float, top_k: int | None, top_p: float | None, generator: Any) -> int:
    """The next token from one position's logits (1-D tensor)."""
    import torch

    if temperature == 0:
        return int(torch.argmax(logits))
    logits = logits.float().cpu() / temperature
    k = DEFAULT_TOP_K if top_k is None else top_k  # 0 means no top-k cut, as in llama.cpp
    if 0 < k < logits.numel():
        kth = torch.topk(logits, k).values[-1]
        logits = logits.masked_fill(logits < kth, -torch.inf)
    probs = torch.softmax(logits, dim=-1)
    probs = probs.masked_fill(probs < DEFAULT_MIN_P * probs.max(), 0.0)
    p = DEFAULT_TOP_P if top_p is None else top_p
    if p < 1:
        ordered, index = torch.sort(probs, descending=True)
        keep = (torch.cumsum(ordered, dim=-1) - ordered) < p * ordered.sum()  # the top token is always kept
        probs = torch.zeros_like(probs).scatter(0, index[keep], ordered[keep])
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))


@dataclass(slots=True)
class Detokenizer:
    """Text deltas from a growing token list, decoding only a short window per token.

    Decoding each token alone breaks characters split across byte tokens and
    the leading-space rules of sentencepiece tokenizers; decoding the whole
    list every step is quadratic. So decode the window since the last emitted
    boundary, emit what it adds, and hold back while it ends in an incomplete
    character (U+FFFD).
    """

    tokenizer: Any
    tokens: list[int] = field(default_factory=list)
    _prefix: int = 0  # window start: context so the next token decodes with the right spacing
    _read: int = 0  # tokens before this index have been emitted

    def _text(self, start: int, end: int | None = None) -> str:
        return self.tokenizer.decode(
            self.tokens[start:end], skip_special_tokens=False, clean_up_tokenization_spaces=False
        )

    def add(self, token: int) -> str:
        self.tokens.append(token)
        before = self._text(self._prefix, self._read)
        after = self._text(self._prefix)
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self.tokens)
        return after[len(before) :]

    def flush(self) -> str:
        """Whatever is still held back at the end of generation (an incomplete character shows as U+FFFD)."""
        if self._read == len(self.tokens):
            return ""
        out = self._text(self._prefix)[len(self._text(self._prefix, self._read)) :]
        self._prefix = self._read = len(self.tokens)
        return out


class ReplyStream:
    """Sampled tokens -> the chunks a ChatModel streams, shared by the HF runtimes (transformers, gpu).

    Stop strings are held back until they are ruled out (never emitted); with tools offered, text from a possible
    call on is held too and parsed for calls at the end (``hanlin.runtimes.tool_calls``).
    """

    def __init__(self, tokenizer: Any, stop: list[str], plan: Any = None) -> None:
        from hanlin.runtimes.text_stream import StopScanner
        from hanlin.runtimes.tool_calls import ToolPlan

        self.scanner, self.text = StopScanner(list(stop)), Detokenizer(tokenizer)
        self.reply = (plan or ToolPlan()).reply()
        self.calls: list[Any] = []

    @property
    def stopped(self) -> bool:
        return self.scanner.stopped

    @property
    def num_tokens(self) -> int:
        return len(self.text.tokens)

    def _emit(self, delta: str) -> Any:
        from hanlin import Chunk

        shown = self.reply.feed(delta) if delta else ""
        if shown:
            yield Chunk(text=shown)

    def add(self, token: int) -> Any:
        """Chunks for one more token (none while text is held back)."""
        yield from self._emit(self.scanner.feed_text(self.text.add(token)))

    def close(self, finish: str, usage: Any) -> Any:
        """The held-back tail, the parsed rest of the reply, then the final chunk with usage and tool calls."""
        from hanlin import Chunk

        yield from self._emit(self.scanner.feed_text(self.text.flush()) + self.scanner.finish())
        rest, self.calls = self.reply.finish()
        if rest:
            yield Chunk(text=rest)
        yield Chunk(finish_reason="tool_calls" if self.calls else finish, usage=usage, tool_calls=self.calls)
