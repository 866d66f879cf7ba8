"""Turn a stream of token bytes into text deltas that never show a stop sequence.

Shared by the runtimes that decode token by token. Bytes go through an
incremental UTF-8 decoder (a multi-byte character may span tokens), and the
last few characters are held back while they could still be the start of a
stop sequence, so a stop string split across tokens is never emitted.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field


@dataclass(slots=True)
class StopScanner:
    stops: list[str]
    _decoder: codecs.IncrementalDecoder = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))
    _pending: str = ""
    stopped: bool = False

    def feed(self, data: bytes) -> str:
        """Add a token's bytes; return the text that is now safe to emit ('' after a stop)."""
        if self.stopped:
            return ""
        self._pending += self._decoder.decode(data)
        return self._release()

    def feed_text(self, text: str) -> str:
        """Like ``feed`` for runtimes whose tokenizer already produced text."""
        if self.stopped:
            return ""
        self._pending += text
        return self._release()

    def finish(self) -> str:
        """End of generation: flush whatever is held back (minus a stop sequence, if one completes)."""
        if self.stopped:
            return ""
        self._pending += self._decoder.decode(b"", final=True)
        out = self._release()
        if not self.stopped:
            out, self._pending = out + self._pending, ""
        return out

    def _release(self) -> str:
        hits = [(i, s) for s in self.stops if s and (i := self._pending.find(s)) >= 0]
        if hits:
            cut = min(i for i, _ in hits)
            out, self._pending, self.stopped = self._pending[:cut], "", True
            return out
        keep = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self._pending)), 0, -1):
                if self._pending.endswith(stop[:n]):
                    keep = max(keep, n)
                    break
        split = len(self._pending) - keep
        out, self._pending = self._pending[:split], self._pending[split:]
        return out
