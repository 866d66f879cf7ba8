"""A small third-party-style MCP server for hanlin's MCP client tests: a notes store over stdio.

It is written the way an outside author would write one, with the mcp SDK's high-level server
(``MCPServer``, called FastMCP before mcp 2), and knows nothing about hanlin. Besides the useful tools
it has the awkward ones a client must survive: one that raises, one that is slow, one that only
succeeds when calls run concurrently, one that kills the server, one that returns non-text content,
and one whose name is not a valid hanlin tool name.

Run: ``python tests/data/mcp_notes_server.py`` (speaks MCP on stdin/stdout).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import sys
import time

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import EmbeddedResource, ImageContent, TextContent, TextResourceContents

server = MCPServer("notes")
_notes: list[dict[str, object]] = []
_stats = {"cancelled": 0}
_meetings: dict[str, int] = {}

# The smallest valid PNG (1x1, transparent): real image bytes for the non-text content test.
_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="
)


@server.tool()
def add_note(title: str, text: str, tags: list[str] | None = None) -> str:
    """Store a note and return its number.

    Args:
        title: a short title
        text: the body of the note
        tags: optional labels to find it by
    """
    _notes.append({"title": title, "text": text, "tags": tags or []})
    return f"note {len(_notes)} saved: {title}"


@server.tool()
def search_notes(query: str, limit: int = 5) -> str:
    """Find notes whose title, text or tags contain the query (case-insensitive).

    Args:
        query: the words to look for
        limit: at most this many notes
    """
    q = query.lower()
    hits = [
        f"#{i + 1} {n['title']}: {n['text']}"
        for i, n in enumerate(_notes)
        if q in str(n["title"]).lower() or q in str(n["text"]).lower() or any(q in str(t) for t in n["tags"])  # type: ignore[union-attr]
    ]
    return "\n".join(hits[:limit]) if hits else f"no notes match {query!r}"


@server.tool()
def delete_all_notes(confirm: str) -> str:
    """Delete every note. Refuses unless confirm is exactly "yes".

    Raises the SDK's ToolError, the documented way to send the client a message (any other exception reaches
    the client as a bare "Error executing tool ...").

    Args:
        confirm: must be "yes"
    """
    if confirm != "yes":
        raise ToolError(f"refusing to delete: confirm must be 'yes', got {confirm!r}")
    _notes.clear()
    return "all notes deleted"


@server.tool()
async def slow_count(seconds: float) -> str:
    """Wait, then say how many notes there are (a slow tool). A cancelled wait is counted in notes.stats.

    Args:
        seconds: how long to wait first
    """
    try:
        await anyio.sleep(seconds)
    except anyio.get_cancelled_exc_class():
        _stats["cancelled"] += 1
        raise
    return f"{len(_notes)} notes"


@server.tool()
async def meet(group: str, expected: int) -> str:
    """Wait until `expected` calls with this `group` have arrived: the first returns only if calls run concurrently.

    Args:
        group: a name for this meeting, new for each test
        expected: how many concurrent calls to wait for
    """
    _meetings[group] = _meetings.get(group, 0) + 1
    with anyio.move_on_after(10):
        while _meetings[group] < expected:
            await anyio.sleep(0.01)
    if _meetings[group] < expected:
        raise ToolError(f"only {_meetings[group]} of {expected} calls were running at once")
    return f"met {expected}"


@server.tool()
def crash(message: str) -> str:
    """Print a message to stderr and exit the whole server with code 3 (a server bug, on demand).

    Args:
        message: the last words
    """
    print(message, file=sys.stderr, flush=True)
    os._exit(3)


@server.tool()
def export_notes() -> list[TextContent | ImageContent | EmbeddedResource]:
    """Export the notes as text, a thumbnail image and an embedded JSON resource."""
    return [
        TextContent(type="text", text=f"{len(_notes)} notes exported"),
        ImageContent(type="image", data=base64.b64encode(_PNG).decode(), mime_type="image/png"),
        EmbeddedResource(
            type="resource",
            resource=TextResourceContents(uri="notes://all", mime_type="application/json", text=str(len(_notes))),
        ),
    ]


@server.tool(name="notes.stats")
def stats() -> str:
    """This server's pid and counters as JSON (its name has a dot, as MCP allows and hanlin does not)."""
    return json.dumps({"pid": os.getpid(), **_stats})


if __name__ == "__main__":
    if os.environ.get("NOTES_STUBBORN"):  # a badly behaved server: ignores SIGTERM and lingers after stdin closes
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    server.run("stdio")
    if os.environ.get("NOTES_STUBBORN"):
        time.sleep(120)
