"""What plugins register: small typed records, one per kind.

They are plain dataclasses holding callables, so registering is cheap and
nothing heavy (weights, torch, a kernel) is touched until someone asks for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from hanlin.chat_model import ChatModel
    from hanlin.tools import Tool

ModelFormat = Literal["gguf", "hf", "remote"]


@dataclass(slots=True)
class ModelSpec:
    """A model hanlin can find on this machine.

    ``locate`` returns the weights path (a .gguf file or an HF folder), doing
    any one-time assembly, or raises ``ModelNotInstalledError`` naming the pip
    command. ``installed`` answers cheaply, without assembling anything.
    """

    name: str
    format: ModelFormat
    locate: Callable[[], Path]
    installed: Callable[[], bool]
    description: str = ""
    package: str | None = None  # the pip requirement that provides the weights
    size_bytes: int | None = None
    chat_template: bool = True  # False for base models: they get a plain completion prompt
    tool_call_style: str | None = None  # how the model writes native tool calls ("hermes", ...), if at all
    provenance: str = ""
    aliases: tuple[str, ...] = ()
    default_params: dict[str, Any] = field(default_factory=dict)
    where: Callable[[], str] | None = None  # where the weights are (or will be), cheaply, for listings


@dataclass(slots=True)
class RuntimeSpec:
    """An inference backend: which formats it serves and how it loads a model.

    ``available`` returns None when the runtime can run here, or a sentence
    saying what is missing (usually the extra to install). Lower ``priority``
    wins when several runtimes serve the same format.
    """

    name: str
    formats: frozenset[str]
    load: Callable[..., ChatModel]  # load(spec: ModelSpec, path: Path, **config)
    available: Callable[[], str | None]
    description: str = ""
    extra: str = ""
    priority: int = 100
    # True for runtimes that serve models by a name someone else resolves (a remote endpoint): load_model then
    # hands them the name as it is instead of looking it up in the local model catalog.
    accepts_any_name: bool = False


@dataclass(slots=True)
class ToolSpec:
    """A tool that needs configuration (a workspace, a kernel pool) before it exists.

    ``factory(**config)`` returns a Tool, a Toolkit, or a list of Tools.
    """

    name: str
    factory: Callable[..., Any]
    description: str = ""
    default: bool = False  # offered to `hanlin run` when no --tool is given

    def build(self, **config: Any) -> list[Tool]:
        from hanlin.tools import as_tools

        return as_tools(self.factory(**config))


@dataclass(slots=True)
class ComponentSpec:
    """A finetuner or evaluator: a name, what it does, and a factory that builds it."""

    name: str
    factory: Callable[..., Any]
    description: str = ""
