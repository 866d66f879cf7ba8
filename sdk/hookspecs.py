"""The hooks a hanlin plugin can implement: one registration callback per kind.

Each hook receives a ``register`` function and calls it once per thing the
plugin provides, so one plugin can add any number of models or tools without
returning lists, and hanlin can attribute each registration to its plugin.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT = "hanlin"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Register = Callable[..., Any]

KINDS = ("models", "runtimes", "tools", "protocols", "finetuners", "evaluators", "data", "quantizers")
# Hooks that extend hanlin itself rather than register a component of some kind.
EXTENSION_HOOKS = ("register_commands", "register_routes")


@hookspec
def register_models(register: Register) -> None:
    """Call ``register(ModelSpec(...))`` for each model this plugin knows how to locate."""


@hookspec
def register_runtimes(register: Register) -> None:
    """Call ``register(RuntimeSpec(...))`` for each inference backend."""


@hookspec
def register_tools(register: Register) -> None:
    """Call ``register(tool)`` with a Tool, or ``register(ToolSpec(...))`` for a configurable one."""


@hookspec
def register_protocols(register: Register) -> None:
    """Call ``register(ProtocolClass)`` for each agent protocol (a class with a ``name``)."""


@hookspec
def register_finetuners(register: Register) -> None:
    """Call ``register(ComponentSpec(...))`` for each training method."""


@hookspec
def register_evaluators(register: Register) -> None:
    """Call ``register(ComponentSpec(...))`` for each dataset or metric."""


@hookspec
def register_data(register: Register) -> None:
    """Call ``register(ComponentSpec(...))`` for each data block (reader, cleaner, filter, dedup, writer, packer).

    The factory takes the block's options as keyword arguments and returns a callable
    ``Iterable[Document] -> Iterable[Document]``, so a pipeline file names blocks from any plugin.
    """


@hookspec
def register_quantizers(register: Register) -> None:
    """Call ``register(ComponentSpec(...))`` for each quantization method (``q4_k_m`` through llama.cpp, ``awq-w4``...)."""


@hookspec
def register_commands(cli: Any) -> None:
    """Add sub-commands to the ``hanlin`` CLI: ``cli`` is the typer app (e.g. ``cli.add_typer(kb_app, name="kb")``).

    Called only when the CLI starts, so a plugin's command code (and its imports) costs nothing to API users.
    """


@hookspec
def register_routes(app: Any) -> None:
    """Add HTTP routes to ``hanlin serve``: ``app`` is the FastAPI application (e.g. ``app.include_router(router)``).

    Called once when the server is built, after its own routes and its API-key check are in place, so an app's
    routes sit behind the same key. Apps put their routes under ``/v1/<app>/`` and their pages under ``/ui/<app>``.
    """
