"""How agent events look in a terminal: streamed thoughts, marked tool calls, a clear final answer."""

from __future__ import annotations

import json
import sys
from typing import TextIO

from hanlin.events import ErrorEvent, Event, FinalAnswer, RunFinished, StepStarted, TokenDelta, ToolCallEvent, ToolResultEvent

_DIM, _BOLD, _CYAN, _GREEN, _RED, _YELLOW, _RESET = "\033[2m", "\033[1m", "\033[36m", "\033[32m", "\033[31m", "\033[33m", "\033[0m"


class EventPrinter:
    """Prints events as they arrive. Colour only when writing to a terminal."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None, *, color: bool | None = None) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.color = self.out.isatty() if color is None else color
        self._in_tokens = False

    def _c(self, code: str, text: str) -> str:
        return f"{code}{text}{_RESET}" if self.color else text

    def _end_tokens(self) -> None:
        if self._in_tokens:
            self.out.write("\n")
            self._in_tokens = False

    def __call__(self, event: Event) -> None:
        if isinstance(event, TokenDelta):
            self.out.write(self._c(_DIM, event.text))
            self._in_tokens = True
        elif isinstance(event, StepStarted):
            self._end_tokens()
            self.out.write(self._c(_BOLD, f"── step {event.step} ({event.phase}) ──") + "\n")
        elif isinstance(event, ToolCallEvent):
            self._end_tokens()
            args = json.dumps(event.call.arguments, ensure_ascii=False)
            self.out.write(self._c(_CYAN, f"→ {event.call.name}({args})") + "\n")
        elif isinstance(event, ToolResultEvent):
            self._end_tokens()
            colour = _RED if event.is_error else _GREEN
            text = event.content if len(event.content) <= 2000 else event.content[:2000] + " …[cut]"
            self.out.write(self._c(colour, f"← {event.name}: {text}") + "\n")
        elif isinstance(event, ErrorEvent):
            self._end_tokens()
            label = "retrying" if event.recoverable else "stopped"
            self.err.write(self._c(_YELLOW if event.recoverable else _RED, f"! {event.kind} ({label}): {event.message}") + "\n")
        elif isinstance(event, FinalAnswer):
            self._end_tokens()
            self.out.write(self._c(_BOLD + _GREEN, "Final answer: ") + event.text + "\n")
        elif isinstance(event, RunFinished):
            self._end_tokens()
            u = event.usage
            reuse = f", {u.prompt_tokens_reused} reused from cache" if u.prompt_tokens_reused else ""
            steps = "1 step" if event.step == 1 else f"{event.step} steps"
            self.out.write(
                self._c(_DIM, f"[{event.status} after {steps}; {u.prompt_tokens} prompt tokens{reuse}, "
                              f"{u.completion_tokens} generated]") + "\n"
            )
        self.out.flush()
