"""What flows between data blocks: ``Document``, the per-block counts of what was dropped and why, and the base
classes every block builds on (a block is a callable ``Iterable[Document] -> Iterable[Document]``).

Documents are slots dataclasses, not pydantic models: a pipeline moves millions of them through a dozen generators,
and validation belongs at the edges (the readers and the pipeline file), not on every hop.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from hanlin.errors import HanlinError

EXAMPLES_PER_REASON = 3
EXAMPLE_CHARS = 200


class DataError(HanlinError):
    """Bad input met with ``on_error: stop`` (the message starts with file:line), or a pipeline that cannot run."""


@dataclass(slots=True)
class Document:
    """One unit of text. ``id`` is stable (``file:line`` or the input's own id) so dedup can keep the smallest id
    of a cluster whatever order shards arrive in; ``metadata['source']`` says where it came from (file:line)."""

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "metadata": self.metadata}


@dataclass(slots=True)
class BlockStats:
    """Docs in and out of one block, the reasons for every drop, and a few dropped examples per reason."""

    name: str
    docs_in: int = 0
    docs_out: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    examples: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def drop(self, doc: Document | None, reason: str, where: str = "", detail: str = "") -> None:
        """Count one dropped document under ``reason`` (a short category); keep it as an example if few are kept."""
        self.dropped[reason] += 1
        if sum(1 for e in self.examples if e["reason"] == reason) < EXAMPLES_PER_REASON:
            example = {"reason": reason, "id": doc.id if doc else "",
                       "where": where or (doc.metadata.get("source", "") if doc else ""),
                       "text": doc.text[:EXAMPLE_CHARS] if doc else ""}
            if detail:
                example["detail"] = detail
            self.examples.append(example)

    def merge(self, other: BlockStats) -> None:
        self.docs_in += other.docs_in
        self.docs_out += other.docs_out
        self.dropped.update(other.dropped)
        for e in other.examples:
            if sum(1 for x in self.examples if x["reason"] == e["reason"]) < EXAMPLES_PER_REASON:
                self.examples.append(e)
        self.seconds += other.seconds

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "docs_in": self.docs_in, "docs_out": self.docs_out,
                "dropped": dict(sorted(self.dropped.items())), "examples": self.examples,
                "seconds": round(self.seconds, 4)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BlockStats:
        return cls(data["name"], data["docs_in"], data["docs_out"], Counter(data["dropped"]),
                   list(data["examples"]), data.get("seconds", 0.0))


@dataclass(slots=True)
class TaskContext:
    """What a block may need to know about the task it runs in: its index (for output shard names), the run
    folder (where writers put their shards), and what to do with bad input."""

    task: int
    run_dir: Path
    on_error: Literal["skip", "stop"] = "skip"


class Block:
    """Base of every block. ``kind`` tells the pipeline how to schedule it: ``source`` blocks read files (one task
    per file), ``map`` blocks stream documents, ``global`` blocks (dedup) need every shard before deciding."""

    kind: ClassVar[str] = "map"
    name: str = "block"

    def __init__(self) -> None:
        self.stats = BlockStats(self.name)
        self.ctx: TaskContext | None = None

    def open(self, ctx: TaskContext) -> None:
        """Called before a task streams through this block (a fresh ``stats`` each task)."""
        self.ctx = ctx
        self.stats = BlockStats(self.name)

    def commit(self) -> None:
        """Called once the task's stream is exhausted: writers rename their temporary files here."""

    def abort(self) -> None:
        """Called when the task failed: remove temporary files."""

    def finalize(self, run_dir: Path, num_tasks: int) -> None:
        """Called once after every task of the run is done (a packer merges its per-task parts here)."""

    def __call__(self, docs: Iterable[Document]) -> Iterator[Document]:
        raise NotImplementedError


class Filter(Block):
    """A block that keeps or drops each document: ``reason(doc)`` returns None to keep, or why it dropped."""

    def reason(self, doc: Document) -> str | None:
        raise NotImplementedError

    def __call__(self, docs: Iterable[Document]) -> Iterator[Document]:
        stats = self.stats
        for doc in docs:
            stats.docs_in += 1
            why = self.reason(doc)
            if why is None:
                stats.docs_out += 1
                yield doc
            else:
                stats.drop(doc, why)


class Mapper(Block):
    """A block that rewrites each document's text (or metadata); a document left with no text is dropped."""

    def apply(self, doc: Document) -> Document:
        raise NotImplementedError

    def __call__(self, docs: Iterable[Document]) -> Iterator[Document]:
        stats = self.stats
        for doc in docs:
            stats.docs_in += 1
            doc = self.apply(doc)
            if doc.text.strip():
                stats.docs_out += 1
                yield doc
            else:
                stats.drop(doc, f"empty after {self.name}")


class GlobalBlock(Block):
    """A block that must see every shard before deciding (dedup). It runs in two passes: ``key(doc)`` for each
    document, in parallel over tasks; then ``resolve`` once over all keys, which names the documents to remove;
    then, streaming again, ``__call__`` drops those. Keys are resolved sorted by id, so the outcome does not depend
    on the order of shards or the number of workers."""

    kind = "global"
    label = "duplicate"

    def __init__(self) -> None:
        super().__init__()
        self.removed: dict[str, str] = {}

    def key(self, doc: Document) -> Any:
        raise NotImplementedError

    def resolve(self, ids: list[str], keys: list[Any]) -> dict[str, str]:
        """Given every document's id and key (in any order), map each id to remove to the id it duplicates."""
        raise NotImplementedError

    def __call__(self, docs: Iterable[Document]) -> Iterator[Document]:
        stats, removed = self.stats, self.removed
        for doc in docs:
            stats.docs_in += 1
            if doc.id in removed:
                stats.drop(doc, self.label, detail=f"duplicate of {removed[doc.id]}")
            else:
                stats.docs_out += 1
                yield doc
