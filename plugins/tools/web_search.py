"""The `web_search` tool: a query in, a short numbered list of hits out.

The observation is written for a small model with a small context: numbered
results, each a title, a URL and one snippet, nothing else. Every way a search
can go wrong (offline, rate-limited, timed out, a broken backend) comes back
as an error observation the model can act on; an empty result is not an
error, just "no results for ...", so the model rephrases instead of giving up.

Backends live in ``search_backends``: ``backend="ddgs"`` (live web, default),
``backend="local"`` with ``index_dir=...`` (BM25 over a folder of documents),
or any object with ``search(query, max_results)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from hanlin import ConfigurationError, Tool, ToolResult, ToolSpec, hookimpl
from hanlin.plugins.tools.search_backends import (
    DDGSBackend,
    LocalIndexBackend,
    SearchBackend,
    SearchFailed,
    SearchHit,
    shorten,
)

BACKENDS = ("ddgs", "local")
MAX_RESULTS_LIMIT = 20


def format_hits(hits: list[SearchHit]) -> str:
    """Numbered results: the title on the number's line, URL and snippet indented under it."""
    blocks = []
    for n, hit in enumerate(hits, start=1):
        lines = [f"{n}. {hit.title}", f"   {hit.url}"]
        if hit.snippet:
            lines.append(f"   {hit.snippet}")
        blocks.append("\n".join(lines))
    return "\n".join(blocks)


class WebSearch:
    """One configured search tool: a backend, how many hits, and the formatting."""

    def __init__(self, backend: SearchBackend, *, max_results: int = 5, timeout: float | None = 30.0) -> None:
        self.backend = backend
        self.max_results = max_results
        self.timeout = timeout

    def web_search(self, query: Annotated[str, Field(max_length=400)]) -> ToolResult:
        """Search and return the top results, numbered, each with its title, URL and a snippet of the matching
        text. Read a result in full with web_fetch if it is a web page.

        Args:
            query: What to search for, a few keywords, e.g. "kakapo parrot lifespan".
        """
        query = " ".join(query.split())
        if not query:
            return ToolResult.error("the search query is empty; give a few keywords, e.g. \"kakapo parrot\"")
        try:
            hits = list(self.backend.search(query, self.max_results))[: self.max_results]
        except SearchFailed as exc:
            return ToolResult.error(str(exc))
        except Exception as exc:  # a third-party backend's own failure: still an observation, never a crash
            return ToolResult.error(f"the search backend failed: {shorten(f'{type(exc).__name__}: {exc}', 300)}")
        if not hits:
            return ToolResult(content=f"no results for \"{query}\"; try other or fewer keywords", data=[])
        return ToolResult(content=format_hits(hits), data=[hit.as_dict() for hit in hits])

    def tool(self) -> Tool:
        where = getattr(self.backend, "description", None) or "with the configured backend"
        description = (f"Search {where} and return the top results, numbered, each with its title, URL and a "
                       "snippet of the matching text.")
        return Tool(self.web_search, name="web_search", description=description, timeout=self.timeout)


def make_backend(backend: str | SearchBackend = "ddgs", *, index_dir: str | Path | None = None, timeout: float = 10.0,
                 snippet_chars: int = 300, **options: Any) -> SearchBackend:
    """A backend from a name and its options, or the object given, checked to have ``search``."""
    if not isinstance(backend, str):
        if not callable(getattr(backend, "search", None)):
            raise ConfigurationError(
                f"web_search backend must be 'ddgs', 'local' or an object with search(query, max_results), "
                f"got {type(backend).__name__}"
            )
        if options or index_dir is not None:
            raise ConfigurationError(f"options {sorted(options) + (['index_dir'] if index_dir else [])} only apply "
                                     "to the built-in backends, not to a backend object")
        return backend
    if backend == "ddgs":
        if index_dir is not None:
            raise ConfigurationError("index_dir is for backend='local'; the ddgs backend searches the live web")
        allowed = {"region", "safesearch", "proxy", "engines"}
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise ConfigurationError(f"unknown web_search option(s) {unknown} for backend 'ddgs'; "
                                     f"it takes {sorted(allowed | {'timeout', 'snippet_chars', 'max_results'})}")
        return DDGSBackend(timeout=timeout, snippet_chars=snippet_chars, **options)
    if backend == "local":
        if index_dir is None:
            raise ConfigurationError("backend='local' needs index_dir=<a folder of .md/.txt/.html documents>")
        unknown = sorted(set(options) - {"ranker"})
        if unknown:
            raise ConfigurationError(f"unknown web_search option(s) {unknown} for backend 'local'; "
                                     "it takes index_dir, ranker, snippet_chars, max_results")
        return LocalIndexBackend(index_dir, snippet_chars=snippet_chars, **options)
    raise ConfigurationError(f"unknown web_search backend {backend!r}; use one of {', '.join(BACKENDS)} "
                             "or pass an object with search(query, max_results)")


def make_web_search(backend: str | SearchBackend = "ddgs", *, max_results: int = 5, timeout: float = 10.0,
                    **options: Any) -> Tool:
    """The ToolSpec factory: ``load_tool("web_search", backend="local", index_dir="docs/")``."""
    if not isinstance(max_results, int) or not 1 <= max_results <= MAX_RESULTS_LIMIT:
        raise ConfigurationError(f"max_results must be an integer from 1 to {MAX_RESULTS_LIMIT}, got {max_results!r}")
    if not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ConfigurationError(f"timeout must be a positive number of seconds, got {timeout!r}")
    chosen = make_backend(backend, timeout=timeout, **options)
    # ddgs waits on several engines in turn; the tool's own limit is a backstop above the backend's.
    return WebSearch(chosen, max_results=max_results, timeout=timeout * 2 + 5).tool()


@hookimpl
def register_tools(register: Any) -> None:
    register(ToolSpec(
        name="web_search", factory=make_web_search,
        description="Search the web (ddgs) or a local folder of documents (BM25) and return numbered hits: "
                    "title, URL, snippet.",
        default=False,  # reaches the internet (or needs an index folder): an app opts in
    ))
