"""A streaming response that cleans up however it ends: finished, failed, or the client gone before it started.

Starlette cancels a streaming response when the client disconnects. If that happens before the body generator has
started (the first write still pending), the generator's own ``finally`` never runs, and whatever it was to release
(an admission slot, a running agent) stays held. ``ClosingStreamingResponse`` runs ``on_end`` in its own ``finally``
and closes the body generator there, so its ``finally`` blocks run now rather than at garbage collection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send


class ClosingStreamingResponse(StreamingResponse):
    """Streams ``content``; afterwards, whatever happened, calls ``on_end()`` and closes ``content``."""

    def __init__(self, content: AsyncIterator[str], on_end: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.on_end = on_end

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_end()
            closer = getattr(self.body_iterator, "aclose", None)
            if closer is not None:
                await closer()
