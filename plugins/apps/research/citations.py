"""Citations: the passages searchers read, numbered per searcher, renumbered globally, checked before shown.

A searcher cites ``[n]`` where n is a result it was shown (its own numbering). ``Ledger`` turns those into global
numbers shared by the whole run (one passage, one number, whichever node read it first); ``finalize`` renumbers the
final answer 1..m in order of first use and builds the reference list. A number that points at nothing is dropped
from the text and reported, never shown as a reference.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

from hanlin.plugins.apps.research.events import Reference

CITATION = re.compile(r"\[(\d{1,4}(?:\s*,\s*\d{1,4})*)\]")


@dataclass(frozen=True, slots=True)
class Passage:
    url: str
    title: str
    text: str


def _numbers(group: str) -> list[int]:
    return [int(x) for x in re.split(r"\s*,\s*", group.strip())]


def remap(text: str, mapping: dict[int, int]) -> tuple[str, list[int]]:
    """Rewrite every ``[n]``/``[n, m]`` with ``mapping``; numbers missing from it are dropped and returned."""
    dropped: list[int] = []

    def sub(match: re.Match[str]) -> str:
        kept = []
        for n in _numbers(match.group(1)):
            if n in mapping:
                if mapping[n] not in kept:
                    kept.append(mapping[n])
            else:
                dropped.append(n)
        return "".join(f"[{k}]" for k in kept)

    out = CITATION.sub(sub, text)
    out = re.sub(r"[ \t]+([.,;:!?])", r"\1", re.sub(r"[ \t]{2,}", " ", out)).strip()
    return out, dropped


def cited(text: str) -> list[int]:
    """The citation numbers in ``text`` in order of first use."""
    seen: list[int] = []
    for match in CITATION.finditer(text):
        for n in _numbers(match.group(1)):
            if n not in seen:
                seen.append(n)
    return seen


def strip_citations(text: str) -> str:
    return remap(text, {})[0]


class Ledger:
    """Every passage read in the run, under one global number each (thread-safe: searchers run concurrently)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._passages: list[Passage] = []
        self._index: dict[tuple[str, str], int] = {}

    def add(self, passage: Passage) -> int:
        key = (passage.url, passage.text)
        with self._lock:
            if key not in self._index:
                self._passages.append(passage)
                self._index[key] = len(self._passages)
            return self._index[key]

    def get(self, number: int) -> Passage | None:
        with self._lock:
            return self._passages[number - 1] if 1 <= number <= len(self._passages) else None

    def __len__(self) -> int:
        with self._lock:
            return len(self._passages)

    def reference(self, number: int, shown_as: int | None = None) -> Reference:
        passage = self.get(number)
        assert passage is not None
        return Reference(number=shown_as or number, url=passage.url, title=passage.title, passage=passage.text)

    def globalize(self, text: str, local: dict[int, int]) -> tuple[str, list[int]]:
        """A searcher's answer with its own numbers (``local``: its number -> global) in global numbers."""
        return remap(text, local)

    def finalize(self, text: str, allowed: set[int] | None = None) -> tuple[str, list[Reference], list[int]]:
        """The final answer renumbered 1..m in order of first use, its reference list, and the dropped numbers.

        ``allowed``: the global numbers the writer was shown (None: any passage in the ledger)."""
        valid = [n for n in cited(text) if self.get(n) is not None and (allowed is None or n in allowed)]
        mapping = {g: i for i, g in enumerate(valid, start=1)}
        out, dropped = remap(text, mapping)
        return out, [self.reference(g, shown_as=i) for g, i in mapping.items()], dropped
