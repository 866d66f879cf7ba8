"""hanlin tools as an MCP server over stdio, for any MCP client (an IDE, a desktop app, another agent).

``serve_tools(tools)`` lists each tool with its JSON schema and runs calls through ``Tool.ainvoke``, so
the server gives exactly the guarantees the agent loop gets: arguments validated and coerced by the
tool's own model, sync tools run off the event loop (calls proceed concurrently), timeouts enforced,
and every failure returned as an ``isError`` result carrying the message instead of a protocol error
the client's model would never see. ``hanlin mcp serve`` is the command-line front (``mcp_cli``).

The low-level mcp ``Server`` is used rather than ``MCPServer``: the tools already have schemas and
validation, and ``MCPServer`` would rebuild both from Python signatures.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hanlin.tools import Tool, ToolResult, as_tools


def to_mcp_result(result: ToolResult) -> Any:
    """A ToolResult as an MCP CallToolResult: the text, links to the files it produced, and isError."""
    import mcp.types as types

    content: list[Any] = [types.TextContent(type="text", text=result.content)]
    for artifact in result.artifacts:
        path = Path(artifact).resolve()
        content.append(types.ResourceLink(type="resource_link", uri=path.as_uri(), name=path.name))
    return types.CallToolResult(content=content, is_error=result.is_error)


def build_server(tools: Any, name: str = "hanlin") -> Any:
    """An mcp low-level ``Server`` offering ``tools`` (Tools, Toolkits or typed functions)."""
    from hanlin.plugins.integrations.mcp_client import require_mcp

    require_mcp()
    import mcp.types as types
    from mcp.server.lowlevel import Server
    from mcp.shared.exceptions import MCPError

    from hanlin import __version__

    offered: list[Tool] = as_tools(tools)
    by_name = {t.name: t for t in offered}
    listing = [types.Tool(name=t.name, description=t.description, input_schema=t.parameters) for t in offered]

    async def on_list_tools(ctx: Any, params: Any) -> Any:
        return types.ListToolsResult(tools=listing)

    async def on_call_tool(ctx: Any, params: Any) -> Any:
        tool = by_name.get(params.name)
        if tool is None:  # the spec makes an unknown tool a protocol error, not a tool result
            raise MCPError(code=types.INVALID_PARAMS,
                           message=f"unknown tool {params.name!r}; this server has: {', '.join(by_name) or '(none)'}")
        return to_mcp_result(await tool.ainvoke(params.arguments or {}))

    return Server(name, version=__version__, on_list_tools=on_list_tools, on_call_tool=on_call_tool)


def serve_tools(tools: Any, name: str = "hanlin") -> None:
    """Serve ``tools`` over stdio until the client closes stdin; then release what the tools hold.

    stdout belongs to the protocol: the mcp SDK points file descriptor 1 at stderr while serving, so a
    tool that prints cannot corrupt the stream.
    """
    import anyio
    from mcp.server.stdio import stdio_server

    offered = as_tools(tools)
    server = build_server(offered, name)

    async def main() -> None:
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())

    try:
        anyio.run(main)
    finally:
        for kit in {id(t.toolkit): t.toolkit for t in offered if t.toolkit is not None}.values():
            kit.close()


if __name__ == "__main__":  # `python -m hanlin.plugins.integrations.mcp_server TOOL...`, without the CLI
    from hanlin.loading import load_tools as _load

    serve_tools(_load(sys.argv[1:] or ["calculator"]))
