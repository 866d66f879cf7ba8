"""The research app's plugin: the ``hanlin research`` command and its routes in ``hanlin serve`` (each loads only
when the CLI or the server starts)."""

from __future__ import annotations

from typing import Any

from hanlin import ComponentSpec, hookimpl


@hookimpl
def register_commands(cli: Any) -> None:
    from hanlin.plugins.apps.research.cli import add_research_command

    add_research_command(cli)


@hookimpl
def register_routes(app: Any) -> None:
    from hanlin.plugins.apps.research.routes import register

    register(app)


def _dataset(subset: str | None = None, **options: Any) -> Any:
    from hanlin.plugins.apps.research.dataset import ResearchDataset

    return ResearchDataset(subset, **options)


@hookimpl
def register_evaluators(register: Any) -> None:
    register(ComponentSpec(name="research", factory=_dataset, description=(
        "Multi-hop research: the shipped two-document questions over the installed packages' docs, hanlin research "
        "vs a single ReAct agent (correctness, citation validity, document recall, wall time)")))
