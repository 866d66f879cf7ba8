"""Reading the pages behind search results: the lines of a result's document that best match the question.

Why: the local index shows one window of one passage per document, the best for the whole query. For a multi-hop
node that is often the wrong part of the right page: "what is the test client of Starlette built on?" found
starlette.md but showed its example code (where "starlette" is frequent), not the feature line "Test client built
on `httpx2`." A searcher that reads the page ranks the page's own lines against its question (weighting a word by
how rare it is in that page, so the page's own name counts for little) and is shown the best few, each verbatim and
citable on its own.
"""

from __future__ import annotations

import math
from pathlib import Path
from urllib.parse import unquote, urlparse

from hanlin.plugins.apps.research.citations import Ledger, Passage
from hanlin.plugins.apps.research.grounding import BLOCKS, SPLIT, prose
from hanlin.plugins.tools.search_backends import read_document, tokenize

MAX_LINE_CHARS = 300
MIN_WORDS = 4


def document_lines(url: str) -> list[str]:
    """The non-trivial lines of a local document (``file://`` URL), bullets and heading marks removed; ``[]`` for a
    page that is not a readable local file (live web results are read with web_fetch, not here)."""
    parsed = urlparse(url)
    if parsed.scheme != "file":
        return []
    path = Path(unquote(parsed.path))
    if not path.is_file():
        return []
    _, text = read_document(path)
    lines = []
    # a paragraph wrapped over several lines (most reStructuredText descriptions) is read as its sentences, not
    # as broken lines; code, badges, link lists and headings are not read (grounding.prose): the line is kept as
    # the document has it (the citation check looks for it there), whitespace folded
    for raw in SPLIT.split(BLOCKS.sub("\n\n", text)):
        line = " ".join(raw.strip().lstrip("*->").split())
        if len(line.split()) >= MIN_WORDS and prose(line) and line[:MAX_LINE_CHARS] not in lines:
            lines.append(line[:MAX_LINE_CHARS])
    return lines


def best_lines(url: str, question: str, k: int = 2, skip: str = "") -> list[str]:
    """The ``k`` lines of the document that share the most question words, each word weighted by its rarity in
    the document (idf over lines); lines already inside ``skip`` (the snippet shown) are left out."""
    lines = document_lines(url)
    terms = set(tokenize(question))
    if not lines or not terms:
        return []
    tokens = [set(tokenize(line)) for line in lines]
    df = {t: sum(t in tok for tok in tokens) for t in terms}
    weight = {t: math.log((len(lines) + 1) / (df[t] + 0.5)) for t in terms if df[t]}
    skipped = " ".join(skip.split())
    scored = []
    for i, (line, tok) in enumerate(zip(lines, tokens)):
        matched = [t for t in weight if t in tok]
        if len(matched) < 2 or line in skipped:
            continue
        scored.append((-sum(weight[t] for t in matched), i, line))
    return [line for _, _, line in sorted(scored)[:k]]


def read_pages(ledger: Ledger, local: dict[int, int], query: str, k: int = 2) -> str:
    """Read the documents of the results shown so far (``local``: result number -> ledger number) and add their
    ``k`` best lines for ``query`` as further numbered results; returns those results' text ("" if none)."""
    shown = []
    for number in sorted(local):
        passage = ledger.get(local[number])
        if passage is not None:
            shown.append(passage)
    blocks = []
    for passage in shown:
        for line in best_lines(passage.url, query, k, skip=passage.text):
            g = ledger.add(Passage(url=passage.url, title=passage.title, text=line))
            if g in local.values():
                continue
            n = len(local) + 1
            local[n] = g
            blocks.append(f"[{n}] {passage.title}: {line}")
    return "\n".join(blocks)
