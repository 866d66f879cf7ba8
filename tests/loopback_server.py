"""A real hanlin server on loopback for the server's own tests: uvicorn in a thread, serving a scripted model.

The server is what these tests examine, so the model is scripted (``hanlin.ScriptedModel``): its replies are known
in advance, which lets a test say exactly what every request must get back. ``EchoModel`` answers a chat with the
last user text and a completion with the prompt, in small streamed pieces, optionally slowly; a prompt or message
containing ``fail_on`` (``FAIL`` unless told otherwise) makes it fail half-way through its stream, as a runtime can.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hanlin import ModelError, ScriptedModel
from hanlin.chat_model import Chunk, GenerationParams
from hanlin.messages import Message, Usage


def echo(messages: list[Message], params: GenerationParams) -> str:
    last = next((m.content for m in reversed(messages) if m.role == "user"), "")
    return f"echo: {last}"


class EchoModel(ScriptedModel):
    """Echoes the last user message (chat) or the prompt (completions), ``delay`` seconds per streamed piece."""

    def __init__(self, *, delay: float = 0.0, fail_on: str | None = "FAIL", **options: Any) -> None:
        super().__init__(options.pop("outputs", echo), name=options.pop("name", "echo"), **options)
        self.delay = delay
        self.fail_on = fail_on

    def _stream(self, messages: list[Message], params: GenerationParams) -> Iterator[Chunk]:
        failing = self.fail_on is not None and any(self.fail_on in m.content for m in messages)
        for i, chunk in enumerate(super()._stream(messages, params)):
            if failing and i == 1:
                raise ModelError("the scripted model fails half-way through its reply, as asked")
            time.sleep(self.delay)
            yield chunk

    def _stream_prompt(self, prompt: str, params: GenerationParams) -> Iterator[Chunk]:
        text = f"echo: {prompt}"
        for i in range(0, len(text), 4):
            if self.fail_on is not None and self.fail_on in prompt and i >= 4:
                raise ModelError("the scripted model fails half-way through its completion, as asked")
            time.sleep(self.delay)
            yield Chunk(text=text[i:i + 4])
        yield Chunk(finish_reason="stop", usage=Usage(prompt_tokens=len(prompt.split()), completion_tokens=len(text.split())))


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """Run ``app`` with uvicorn on a free loopback port in a thread; yield its base URL; stop it afterwards."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the loopback server did not start within 30 s")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
