"""Search backends for the `web_search` tool: one small interface, a live one and an offline one.

The interface is a single method, ``search(query, max_results) -> list[SearchHit]``,
so anything that can answer a query (an intranet search API, a vector store)
plugs in. A backend raises ``SearchFailed`` with a sentence for the model when
it cannot answer; returning ``[]`` means "searched, found nothing".

- ``DDGSBackend``: the ddgs metasearch library, live on the internet.
- ``LocalIndexBackend``: BM25 over a folder of .md/.txt/.html documents, for
  machines without internet, tests, and "search our docs" agents. Documents
  are split into passages and ranked by their best passage, so the snippet a
  model sees is the text that matched, not the top of the file.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import re
import textwrap
import threading
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from hanlin import ConfigurationError, HanlinError, ToolError

log = logging.getLogger(__name__)

DOC_SUFFIXES = (".md", ".markdown", ".txt", ".html", ".htm")
PASSAGE_CHARS = 600  # long paragraphs are split into passages of about this size at sentence ends


@dataclass(frozen=True, slots=True)
class SearchHit:
    """One result, the same shape whatever the backend."""

    title: str
    url: str
    snippet: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


@runtime_checkable
class SearchBackend(Protocol):
    """Anything with ``search(query, max_results)``; ``description`` (optional) says what it searches."""

    def search(self, query: str, max_results: int) -> list[SearchHit]: ...


class SearchFailed(HanlinError):
    """A backend could not answer; the message is written for the model (what happened, what to do)."""


def shorten(text: str, limit: int) -> str:
    """Collapse whitespace and cut at a word boundary with an ellipsis."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit // 2 else cut).rstrip(" ,;:") + "…"


# ---- ddgs ---------------------------------------------------------------------------------------------
def normalize_ddgs(rows: Any, max_results: int, snippet_chars: int = 300) -> list[SearchHit]:
    """ddgs result dicts (title / href / body) as SearchHits: no empty or repeated URLs, tidy text."""
    hits: list[SearchHit] = []
    seen: set[str] = set()
    for row in rows or []:
        if not isinstance(row, dict):
            continue
        url = str(row.get("href") or row.get("url") or "").strip()
        if not url or url in seen:
            continue
        seen.add(url)
        title = " ".join(str(row.get("title") or "").split()) or url
        hits.append(SearchHit(title=title, url=url, snippet=shorten(str(row.get("body") or ""), snippet_chars)))
        if len(hits) >= max_results:
            break
    return hits


class DDGSBackend:
    """Live web search through ddgs (several engines behind one API; no API key)."""

    description = "the web"

    def __init__(self, *, timeout: float = 10.0, region: str = "us-en", safesearch: str = "moderate",
                 proxy: str | None = None, engines: str = "auto", snippet_chars: int = 300) -> None:
        if importlib.util.find_spec("ddgs") is None:
            raise ToolError("web_search with backend='ddgs' needs the ddgs package: pip install 'hanlin[tools]'")
        self.timeout, self.region, self.safesearch = timeout, region, safesearch
        self.proxy, self.engines, self.snippet_chars = proxy, engines, snippet_chars

    def search(self, query: str, max_results: int) -> list[SearchHit]:
        from ddgs import DDGS
        from ddgs.exceptions import DDGSException, RatelimitException, TimeoutException

        try:
            rows = DDGS(proxy=self.proxy, timeout=self.timeout).text(  # type: ignore[arg-type]
                query, max_results=max_results, region=self.region, safesearch=self.safesearch, backend=self.engines
            )
        except RatelimitException as exc:
            raise SearchFailed(f"the search provider is rate-limiting requests ({_brief(exc)}); wait before "
                               "searching again, or answer from what you already know") from None
        except TimeoutException as exc:
            raise SearchFailed(f"the search timed out after {self.timeout:g} s ({_brief(exc)}); try again "
                               "later or with a shorter query") from None
        except DDGSException as exc:
            if "no results found" in str(exc).lower():
                return []
            raise SearchFailed(f"the web search failed: {_brief(exc)}. The internet may be unreachable from "
                               "here; answer without searching or try again later") from None
        return normalize_ddgs(rows, max_results, self.snippet_chars)


def _brief(exc: BaseException, limit: int = 200) -> str:
    return shorten(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, limit)


# ---- local BM25 index ---------------------------------------------------------------------------------
_STOPWORDS = frozenset(
    "a an and are as at be been but by can could did do does doing for from had has have how i if in into is it its "
    "me my no not of on or our should so than that the their them then there these they this those to too was we "
    "were what when where which while who whom why will with would you your".split()
)


def tokenize(text: str) -> list[str]:
    """Lower-case words minus stop words, with a crude suffix strip so 'watering' meets 'water' (shared by the
    local search index and the knowledge base's BM25 backend)."""
    out = []
    for word in re.findall(r"\w+", text.lower()):
        if len(word) < 2 or word in _STOPWORDS:
            continue
        for suffix in ("ing", "ed", "es", "s"):
            if len(word) > len(suffix) + 3 and word.endswith(suffix) and not word.endswith("ss"):
                word = word[: -len(suffix)]
                break
        out.append(word)
    return out


class _OwnBM25:
    """Okapi BM25 (k1=1.5, b=0.75) over an inverted index: the fallback when bm25s is not installed."""

    def __init__(self, docs: list[list[str]], k1: float = 1.5, b: float = 0.75) -> None:
        self.k1, self.b, self.n = k1, b, len(docs)
        self.lengths = [len(d) for d in docs]
        self.avg = sum(self.lengths) / max(1, self.n)
        self.postings: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for i, doc in enumerate(docs):
            for term, tf in Counter(doc).items():
                self.postings[term].append((i, tf))

    def scores(self, query: list[str]) -> list[float]:
        out = [0.0] * self.n
        for term in set(query):
            posting = self.postings.get(term, [])
            if not posting:
                continue
            idf = math.log(1 + (self.n - len(posting) + 0.5) / (len(posting) + 0.5))
            for i, tf in posting:
                norm = tf + self.k1 * (1 - self.b + self.b * self.lengths[i] / self.avg)
                out[i] += idf * tf * (self.k1 + 1) / norm
        return out


class _Bm25sRanker:
    def __init__(self, docs: list[list[str]]) -> None:
        import bm25s

        self.retriever = bm25s.BM25()
        self.retriever.index(docs, show_progress=False)

    def scores(self, query: list[str]) -> list[float]:
        return [float(s) for s in self.retriever.get_scores(query)]


@dataclass(slots=True)
class _Doc:
    path: Path
    title: str


def read_document(path: Path) -> tuple[str, str]:
    """(title, text) of a .md/.txt/.html file; HTML is reduced to its visible text."""
    raw = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix.lower() in (".html", ".htm"):
        from hanlin.plugins.tools.web_fetch import strip_html

        title, text = strip_html(raw)
        return title or path.stem, text
    first = next((line.strip() for line in raw.splitlines() if line.strip()), "")
    if path.suffix.lower() in (".md", ".markdown"):
        heading = next((line.lstrip("#").strip() for line in raw.splitlines() if re.match(r"#{1,6}\s", line)), "")
        return heading or path.stem, raw
    return (first if 0 < len(first) <= 80 else path.stem), raw


def split_passages(text: str, size: int = PASSAGE_CHARS) -> list[str]:
    """Paragraphs, short ones (headings) joined to what follows, long ones split at sentence ends."""
    text = re.sub(r"^(#{1,6}[ \t].*)$", "\n\\1\n", text, flags=re.M)  # a markdown heading is its own paragraph
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()]
    merged: list[str] = []
    carry = ""
    for para in paragraphs:
        heading = re.match(r"#{1,6}\s+(.*)", para)
        if heading:  # a markdown heading labels the section that follows: "Kakapo: The kakapo is ..."
            para = heading.group(1).rstrip(":") + ":"
        para = f"{carry} {para}".strip() if carry else para
        carry = ""
        if len(para) < 80:
            carry = para
            continue
        merged.append(para)
    if carry:
        if merged and len(merged[-1]) + len(carry) < size:
            merged[-1] += " " + carry
        else:
            merged.append(carry)
    passages: list[str] = []
    for para in merged:
        chunk = ""
        sentences = re.split(r"(?<=[.!?])\s+", para)
        # a run-on "sentence" (a table row, a minified line) is broken at spaces so no passage grows unbounded
        pieces = [piece for s in sentences for piece in (textwrap.wrap(s, size) if len(s) > size else [s])]
        for sentence in pieces:
            if chunk and len(chunk) + len(sentence) + 1 > size:
                passages.append(chunk)
                chunk = ""
            chunk = f"{chunk} {sentence}".strip()
        if chunk:
            passages.append(chunk)
    return passages


def best_window(passage: str, query_terms: list[str], limit: int) -> str:
    """The part of ``passage`` around its first query term, at most ``limit`` characters."""
    text = " ".join(passage.split())
    if len(text) <= limit:
        return text
    lowered = text.lower()
    starts = [m.start() for t in query_terms if (m := re.search(rf"\b{re.escape(t)}", lowered))]
    start = max(0, min(starts) - limit // 4) if starts else 0
    if start:
        space = text.find(" ", start)
        start = space + 1 if 0 <= space < start + 30 else start
    window = shorten(text[start:], limit - (1 if start else 0))
    return ("…" + window) if start else window


class LocalIndexBackend:
    """BM25 over the documents in ``index_dir`` (recursively); the index is rebuilt when a file changes."""

    def __init__(self, index_dir: str | Path, *, ranker: Literal["auto", "bm25s", "builtin"] = "auto",
                 snippet_chars: int = 300, max_file_bytes: int = 5_000_000) -> None:
        self.root = Path(index_dir).expanduser()
        if not self.root.is_dir():
            raise ConfigurationError(f"web_search index_dir {str(self.root)!r} is not a folder; point it at a "
                                     f"folder of {', '.join(DOC_SUFFIXES)} files")
        if ranker not in ("auto", "bm25s", "builtin"):
            raise ConfigurationError(f"ranker must be 'auto', 'bm25s' or 'builtin', got {ranker!r}")
        if ranker == "bm25s" and importlib.util.find_spec("bm25s") is None:
            raise ToolError("ranker='bm25s' needs the bm25s package: pip install 'hanlin[tools]'")
        if ranker == "auto":
            ranker = "bm25s" if importlib.util.find_spec("bm25s") is not None else "builtin"
        self.ranker_name = ranker
        self.snippet_chars, self.max_file_bytes = snippet_chars, max_file_bytes
        self.description = f"the local documents in {self.root.name or self.root}"
        self._signature: tuple[Any, ...] | None = None
        self._docs: list[_Doc] = []
        self._passages: list[tuple[int, str]] = []  # (doc index, passage text)
        self._ranker: Any = None
        self._lock = threading.Lock()

    def _files(self) -> list[Path]:
        return sorted(
            p for p in self.root.rglob("*")
            if p.suffix.lower() in DOC_SUFFIXES and p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(self.root).parts)
        )

    def refresh(self) -> None:
        """Re-index if any document was added, removed or changed since the last search."""
        files = self._files()
        signature = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files)
        with self._lock:
            if signature == self._signature:
                return
            docs, passages = [], []
            for path in files:
                if path.stat().st_size > self.max_file_bytes:
                    log.warning("web_search: skipping %s (larger than %d bytes)", path, self.max_file_bytes)
                    continue
                title, text = read_document(path)
                docs.append(_Doc(path=path.resolve(), title=title))
                passages += [(len(docs) - 1, p) for p in split_passages(text)]
            passages = [(d, p) for d, p in passages if tokenize(p)]
            tokens = [tokenize(p) for _, p in passages]
            ranker = None
            if tokens:
                ranker = _Bm25sRanker(tokens) if self.ranker_name == "bm25s" else _OwnBM25(tokens)
            self._docs, self._passages, self._ranker, self._signature = docs, passages, ranker, signature

    def search(self, query: str, max_results: int) -> list[SearchHit]:
        self.refresh()
        terms = tokenize(query)
        with self._lock:
            if not terms or self._ranker is None:
                return []
            scores = self._ranker.scores(terms)
            best: dict[int, tuple[float, int]] = {}  # doc -> (score, passage index)
            for i, score in enumerate(scores):
                doc = self._passages[i][0]
                if score > 0 and score > best.get(doc, (0.0, -1))[0]:
                    best[doc] = (score, i)
            ranked = sorted(best.items(), key=lambda item: -item[1][0])[:max_results]
            return [
                SearchHit(title=self._docs[doc].title, url=self._docs[doc].path.as_uri(),
                          snippet=best_window(self._passages[i][1], terms, self.snippet_chars))
                for doc, (_, i) in ranked
            ]
