"""The assistant app's plugin: ``hanlin assistant`` and the ``assistant`` evaluation dataset."""

from __future__ import annotations

from typing import Any

from hanlin import ComponentSpec, hookimpl

DESCRIPTION = ("Knowledge assistant, 198 chat messages over 7 installed packages' docs: answer-or-silence P/R/F1, "
               "correctness, citation precision, retrieval-only ablation")


@hookimpl
def register_commands(cli: Any) -> None:
    from hanlin.plugins.apps.assistant.cli import add_assistant_command

    add_assistant_command(cli)


def _dataset(subset: str | None = None, **options: Any) -> Any:
    from hanlin.plugins.apps.assistant.evaluation import AssistantDataset

    return AssistantDataset(subset, **options)


@hookimpl
def register_evaluators(register: Any) -> None:
    register(ComponentSpec(name="assistant", factory=_dataset, description=DESCRIPTION))


@hookimpl
def register_routes(app: Any) -> None:
    from hanlin.plugins.apps.assistant.routes import register

    register(app)
