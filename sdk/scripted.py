"""ScriptedModel: a real ChatModel whose outputs are written in advance.

It exists to test agent logic and to write docs without weights: it honours
stop sequences and streams its text in small pieces like a real runtime, so the
code under test cannot tell the difference in shape. It is never a stand-in for
"the model works".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence

from hanlin.chat_model import Capabilities, ChatModel, Chunk, Completion, GenerationParams
from hanlin.errors import ModelError
from hanlin.messages import Message, ToolCall, Usage

Reply = str | Completion
ScriptFunction = Callable[[list[Message], GenerationParams], Reply]


class ScriptedModel(ChatModel):
    """Replays ``outputs`` one per call, or asks ``outputs(messages, params)`` for each reply.

    A reply may be a plain string or a ``Completion`` (to script native tool
    calls). When a list runs out the model raises ``ModelError`` rather than
    inventing text. ``calls`` records every prompt it was given.
    """

    def __init__(
        self,
        outputs: Sequence[Reply] | ScriptFunction,
        *,
        name: str = "scripted",
        native_tools: bool = True,
        constraints: frozenset[str] = frozenset({"json_schema", "grammar"}),
        chunk_size: int = 4,
    ) -> None:
        self.name = name
        self._fn = outputs if callable(outputs) else None
        self._outputs = list(outputs) if not callable(outputs) else []
        self._chunk_size = max(1, chunk_size)
        self.capabilities = Capabilities(constraints=constraints, native_tools=native_tools)
        self.calls: list[tuple[list[Message], GenerationParams]] = []

    def _next_reply(self, messages: list[Message], params: GenerationParams) -> Completion:
        self.calls.append((list(messages), params))
        if self._fn is not None:
            reply = self._fn(messages, params)
        else:
            index = len(self.calls) - 1
            if index >= len(self._outputs):
                raise ModelError(
                    f"ScriptedModel {self.name!r} was called {index + 1} times but has only "
                    f"{len(self._outputs)} scripted outputs; add more outputs or pass a function"
                )
            reply = self._outputs[index]
        if isinstance(reply, str):
            reply = Completion(text=reply)
        return reply

    def _stream(self, messages: list[Message], params: GenerationParams) -> Iterator[Chunk]:
        reply = self._next_reply(messages, params)
        text, finish = _apply_stop(reply.text, params.stop)
        prompt_tokens = sum(_count_tokens(m.content) for m in messages)
        for i in range(0, len(text), self._chunk_size):
            yield Chunk(text=text[i : i + self._chunk_size])
        tool_calls: list[ToolCall] = reply.tool_calls
        finish_reason = "tool_calls" if tool_calls else (finish or reply.finish_reason)
        usage = reply.usage  # a scripted Completion may state its usage (e.g. to test a full context)
        if not (usage.prompt_tokens or usage.completion_tokens):
            usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=_count_tokens(text),
                          prompt_tokens_evaluated=prompt_tokens, prompt_tokens_reused=0)
        yield Chunk(tool_calls=tool_calls, finish_reason=finish_reason, usage=usage)


def _apply_stop(text: str, stop: list[str]) -> tuple[str, str | None]:
    cut = min((i for s in stop if s and (i := text.find(s)) >= 0), default=None)
    return (text, None) if cut is None else (text[:cut], "stop")


def _count_tokens(text: str) -> int:
    """A rough count (words and punctuation) so usage numbers are plausible, not exact."""
    return len(re.findall(r"\w+|[^\w\s]", text))
