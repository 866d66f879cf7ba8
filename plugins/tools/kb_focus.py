"""The sentences of the found passages that answer the query, for a reader that cannot pick them out itself.

A passage is the unit of retrieval, but one passage of a policy or a product sheet holds every number of its
section: a small model asked for four hotel nights' cost got the travel policy's limits and wrote
"140 + 45 + 0.30". Naming the passage's best-matching line first gives the reader the fact it asked for before the
ones it did not (extractive compression, as RECOMP and sentence-window retrieval do, scored by the index's own
backend so it needs nothing new).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hanlin.plugins.tools.kb_docs import Chunk

# A sentence ends at . ! or ? followed by space and a capital, digit or quote; a list item or a line of its own is
# one sentence whatever its punctuation ("- Weight: 212 grams.").
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_ABBREVIATION = re.compile(r"(?:^|\s)(?:[A-Z][a-z]{0,2}|[A-Z](?:\.[A-Z])+|etc|approx|no|vs)\.$")  # Ms. Dr. U.S.
_BULLET = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")


@dataclass(frozen=True, slots=True)
class Sentence:
    text: str
    where: str  # the passage it came from (source › heading)


def sentences(text: str) -> list[str]:
    """``text`` cut into sentences: list items whole, paragraphs (joined across their line breaks) at sentence ends."""
    out: list[str] = []
    paragraph: list[str] = []

    def flush() -> None:
        if paragraph:
            pieces: list[str] = []
            for piece in (s.strip() for s in _SENTENCE_END.split(" ".join(paragraph))):
                if pieces and _ABBREVIATION.search(pieces[-1]) and piece:  # "Ms. Okafor" is one sentence
                    pieces[-1] += " " + piece
                elif piece:
                    pieces.append(piece)
            out.extend(pieces)
            paragraph.clear()

    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            flush()
        elif _BULLET.match(line):
            flush()
            out.append(_BULLET.sub("", line).strip())
        else:
            paragraph.append(stripped)
    flush()
    return out


def best_sentences(query: str, passages: Sequence[Chunk], score: Callable[[str, list[str]], Sequence[float]],
                   margin: float, limit: int = 2) -> list[Sentence]:
    """The sentences of ``passages`` that ``score`` ranks within ``margin`` of the best for ``query``, best first
    (ties keep the passages' order, the better passage first); none when more than ``limit`` are.

    A margin rather than a count: "the office's floors and desks per floor" needs two lines, "the hotel limit" one,
    and shown its neighbour "Meals: at most 45 euros per day." as well the default model priced four hotel nights
    as "140 * 4 + 45 * 4". But a query that matches many lines alike ("orbit 7 sensor", "Lumen Harbor policy
    limits") asked about the section, not a line: cut to its best three lines, the firmware version the model was
    after was not among them, so then the caller shows the passages whole.

    A query for two things joined by one "and" also gets each side's best line, where that is within twice the
    margin of the best: for "Lumen Harbor office has how many floors and desks per floor?" MiniLM put "The Harbor
    office has 3 floors." 0.101 below "Each floor has 28 desks, ...", just past the margin, though it is the best
    line for "Lumen Harbor office has how many floors" alone (kb-09; no other query of four protocols' runs changed).

    Each sentence is scored under its passage's heading: "Weight: 212 grams." alone says nothing about a sensor,
    and MiniLM ranked "The Orbit 7 measures PM2.5 ..." above it for "Orbit 7 sensor weight"; as "Orbit 7 sensor:
    product sheet: Weight: 212 grams." it ranks first (0.80 against 0.64).
    """
    found = [(Sentence(s, chunk.where), f"{chunk.heading}: {s}" if chunk.heading else s)
             for chunk in passages for s in sentences(chunk.text)]
    if not found:
        return []
    texts = [scored for _, scored in found]
    scores = [float(x) for x in score(query, texts)]
    order = sorted(range(len(found)), key=lambda i: -scores[i])
    close = [i for i in order if scores[i] >= scores[order[0]] - margin]
    if len(close) > limit:
        return []
    for part in query_parts(query):  # "floors and desks per floor": each part's best line, if near the best
        part_scores = [float(x) for x in score(part, texts)]
        best = max(range(len(found)), key=lambda i: part_scores[i])
        if best not in close and scores[best] >= scores[order[0]] - PART_MARGIN * margin:
            close.append(best)
    return [found[i][0] for i in sorted(close, key=lambda i: -scores[i])]


PART_MARGIN = 2.0  # a part's best line is shown within twice the margin of the whole query's best
_AND = re.compile(r"\s+and\s+", re.I)
_WORD = re.compile(r"[^\W\d_]{3,}")


def query_parts(query: str) -> list[str]:
    """The two sides of a query that asks for two things joined by one "and", each holding two or more words of three
    letters or more; none otherwise (a longer query, such as a whole task, is no pair of facts)."""
    parts = [p.strip(" ?.") for p in _AND.split(query)]
    return parts if len(parts) == 2 and all(len(_WORD.findall(p)) >= 2 for p in parts) else []
