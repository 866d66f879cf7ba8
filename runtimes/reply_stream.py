"""Sampled tokens -> text deltas -> the chunks a ChatModel streams; shared by the HF runtimes (transformers, gpu)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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

    def __init__(self, tokenizer: Any, stop: list[str], plan: Any = None, heal: str = "") -> None:
        from hanlin.runtimes.text_stream import StopScanner
        from hanlin.runtimes.tool_calls import ToolPlan

        self.scanner, self.text = StopScanner(list(stop)), Detokenizer(tokenizer)
        self.plan = plan or ToolPlan()
        self.reply = self.plan.reply()
        self.calls: list[Any] = []
        self.healing = heal  # what is left of a healed prompt tail (see token_healing): written again, not shown

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
        delta = self.text.add(token)
        if self.healing and delta:
            cut = min(len(self.healing), len(delta))
            self.healing, delta = self.healing[cut:], delta[cut:]
        yield from self._emit(self.scanner.feed_text(delta))

    def close(self, finish: str, usage: Any) -> Any:
        """The held-back tail, the parsed rest of the reply, then the final chunk with usage and tool calls."""
        from hanlin import Chunk

        yield from self._emit(self.scanner.feed_text(self.text.flush()) + self.scanner.finish())
        rest, calls = self.reply.finish()
        rest, self.calls, withheld = self.plan.settle(rest, calls)
        rest = self.reply.add_note(rest, withheld)
        if rest:
            yield Chunk(text=rest)
        yield Chunk(finish_reason="tool_calls" if self.calls else finish, usage=usage, tool_calls=self.calls)
