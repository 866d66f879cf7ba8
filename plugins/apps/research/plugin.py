"""The research app's plugin: the ``hanlin research`` command and its routes in ``hanlin serve`` (each loads only
when the CLI or the server starts)."""

from __future__ import annotations

from typing import Any

from hanlin import hookimpl


@hookimpl
def register_commands(cli: Any) -> None:
    from hanlin.plugins.apps.research.cli import add_research_command

    add_research_command(cli)


@hookimpl
def register_routes(app: Any) -> None:
    from hanlin.plugins.apps.research.routes import register

    register(app)
