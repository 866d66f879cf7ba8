"""The ``hanlin mcp`` commands: serve registered hanlin tools to MCP clients over stdio, and list the tools of
any MCP server as hanlin would offer them.

Kept apart from the server (``mcp_server``) and the client (``mcp_client``): those are libraries an application
calls, this is the terminal's front for both. The MCP plugin (``mcp``) imports it only when the CLI starts.
"""

from __future__ import annotations

from typing import Annotated

import typer

from hanlin.errors import HanlinError


def mcp_cli() -> typer.Typer:
    """The ``hanlin mcp`` command group."""
    app = typer.Typer(help="MCP: serve hanlin tools to MCP clients; list an MCP server's tools.", no_args_is_help=True)

    @app.command("serve")
    def serve(
        tool: Annotated[list[str] | None, typer.Option("--tool", "-t", help="A registered tool to serve (repeatable; default: the default tools).")] = None,
        name: Annotated[str, typer.Option(help="The server name MCP clients see.")] = "hanlin",
    ) -> None:
        """Serve registered hanlin tools over stdio, e.g. `hanlin mcp serve --tool calculator --tool python`."""
        from hanlin.loading import load_tools
        from hanlin.plugin_manager import plugins
        from hanlin.plugins.integrations.mcp_server import serve_tools
        from hanlin.specs import ToolSpec

        names = tool or [n for n, e in plugins().tools().items() if isinstance(e, ToolSpec) and e.default]
        try:
            tools = load_tools(names)
            if not tools:
                raise HanlinError("no tools to serve: name some with --tool (see `hanlin tools`)")
            typer.echo(f"hanlin MCP server {name!r} on stdio with tools: {', '.join(t.name for t in tools)}",
                       err=True)
            serve_tools(tools, name=name)
        except HanlinError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None

    @app.command("tools")
    def list_tools(
        command: Annotated[list[str], typer.Argument(help="The MCP server command and its arguments (after --).")],
    ) -> None:
        """Start an MCP server and list its tools as hanlin would offer them: `hanlin mcp tools -- python server.py`."""
        from hanlin.plugins.integrations.mcp_client import load_mcp_tools

        try:
            kit = load_mcp_tools(command[0], command[1:])
        except HanlinError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        try:
            for t in kit.tools():
                first = (t.description or "").strip().split("\n")[0]
                typer.echo(f"{t.name}  {first}")
        finally:
            kit.close()

    return app
