"""The research app's plugin: the ``hanlin research`` command (its code loads only when the CLI starts)."""

from __future__ import annotations

from typing import Any

from hanlin import hookimpl


@hookimpl
def register_commands(cli: Any) -> None:
    from hanlin.plugins.apps.research.cli import add_research_command

    add_research_command(cli)
