"""The MCP plugin: any MCP server's tools as hanlin tools, and hanlin's tools as an MCP server.

- ``load_tools(["mcp"], command="npx", args=["-y", "some-mcp-server"])`` starts the server over stdio and
  offers its tools (see ``mcp_client``).
- ``hanlin mcp serve --tool calculator`` serves registered hanlin tools to any MCP client over stdio
  (see ``mcp_server``; the commands are in ``mcp_cli``).

This module is imported by every ``import hanlin`` user through the built-in plugin list, so it imports
neither mcp nor its own client/server modules at the top: they load when a tool is built or the command runs.
"""

from __future__ import annotations

from typing import Any

from hanlin.errors import ConfigurationError
from hanlin.hookspecs import hookimpl
from hanlin.specs import ToolSpec


def make_mcp_tools(**config: Any) -> Any:
    """The factory behind ``load_tools(["mcp"], command=..., args=[...], env=..., cwd=..., prefix=..., timeout=...)``."""
    if not config.get("command"):
        raise ConfigurationError(
            "the 'mcp' tool needs command=... (and usually args=[...]): the MCP server to start over stdio, "
            "e.g. load_tools(['mcp'], command='python', args=['my_server.py'])"
        )
    from hanlin.plugins.integrations.mcp_client import load_mcp_tools

    return load_mcp_tools(**config)


@hookimpl
def register_tools(register: Any) -> None:
    register(ToolSpec(
        name="mcp", factory=make_mcp_tools,
        description="The tools of an MCP server started over stdio (command=..., args=[...]); pip install 'hanlin[mcp]'.",
        default=False,  # needs a server to point at
    ))


@hookimpl
def register_commands(cli: Any) -> None:
    from hanlin.plugins.integrations.mcp_cli import mcp_cli

    cli.add_typer(mcp_cli(), name="mcp")
