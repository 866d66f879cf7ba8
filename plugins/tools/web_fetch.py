"""The `web_fetch` tool: read one web page as text a small model can use.

Why these choices:

- A model reads text, not markup: HTML goes through trafilatura's main-content
  extraction (no menus, scripts, cookie banners); when that finds nothing the
  page is reduced with a plain tag-strip, so the model never gets an empty
  answer for a page that has words. Plain text is passed as it is, JSON is
  pretty-printed, anything else (PDF, images, archives) is refused by type
  before its body is downloaded.
- A model's context is small and a server can be hostile: the body is
  streamed and reading stops at ``max_bytes``, the text is cut at
  ``max_chars`` with a note saying so, and one deadline covers the whole
  fetch: every hop's connect, headers and body, so a server dripping its
  headers a byte at a time is cut off like a slow body (``fetch_backend``).
- The URL comes from a model, which can be steered by what it reads: only
  http(s), and by default no loopback/private/link-local/... hosts
  (``url_guard``). Redirects are followed here, one hop at a time, so every
  hop is checked; connections go only to addresses the guard approved
  (IPv4 addresses hidden in 6to4, Teredo, NAT64 and mapped IPv6 included).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import threading
import time
from collections.abc import Iterable
from html.parser import HTMLParser
from typing import Annotated, Any
from urllib.parse import urljoin

from pydantic import Field

from hanlin import ConfigurationError, Tool, ToolError, ToolResult, ToolSpec, Toolkit, hookimpl
from hanlin.plugins.tools.fetch_backend import deadline_in, install_backend
from hanlin.plugins.tools.url_guard import Resolver, URLGuard, URLRefused

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 2_000_000
DEFAULT_MAX_CHARS = 6000
DEFAULT_TIMEOUT_S = 15.0
REDIRECTS = {301, 302, 303, 307, 308}
USER_AGENT = "Mozilla/5.0 (compatible; hanlin-web-fetch/0.1)"
_ACCEPT = "text/html,application/xhtml+xml,text/plain;q=0.9,application/json;q=0.9,*/*;q=0.5"

# ---- HTML to text without trafilatura ---------------------------------------------------------------
_SKIP = {"script", "style", "noscript", "template", "svg", "head", "nav", "header", "footer", "aside", "form",
         "iframe", "button", "select", "canvas", "object"}
_BLOCK = {"p", "div", "section", "article", "main", "li", "ul", "ol", "tr", "table", "br", "hr", "pre", "blockquote",
          "h1", "h2", "h3", "h4", "h5", "h6", "dd", "dt", "dl", "figcaption", "td", "th"}
_VOID = {"br", "hr", "img", "input", "meta", "link", "area", "base", "col", "embed", "source", "track", "wbr"}


class _Stripper(HTMLParser):
    """Collects visible text, skipping the parts of a page that are never content (scripts, menus, footers)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title = ""
        self._skip = 0
        self._pre = 0  # inside <pre> line breaks are content; elsewhere source newlines are just spaces
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        elif tag in _SKIP and tag not in _VOID:
            self._skip += 1
        elif tag in _BLOCK:
            self._pre += tag == "pre"
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in _SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag in _BLOCK:
            self._pre = max(0, self._pre - (tag == "pre"))
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        elif not self._skip:
            self.parts.append(data if self._pre else re.sub(r"\s+", " ", data))


def strip_html(html: str) -> tuple[str, str]:
    """(title, visible text) of an HTML document, by tag-stripping; whitespace tidied, paragraphs kept."""
    parser = _Stripper()
    try:
        parser.feed(html)
        parser.close()
    except Exception:  # html.parser is lenient; a pathological document still must not crash the tool
        pass
    lines = (re.sub(r"[ \t\r\f\v\xa0]+", " ", line).strip() for line in "".join(parser.parts).split("\n"))
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    return " ".join(parser.title.split()), text


def html_to_text(html: str, url: str | None = None) -> tuple[str, str, str]:
    """(title, main text, extractor used): trafilatura first, the tag-strip when it finds nothing."""
    title, stripped = strip_html(html)
    try:
        import trafilatura
    except ImportError as exc:  # installed but broken (e.g. lxml without lxml_html_clean): degrade, say so in logs
        log.warning("trafilatura cannot be imported (%s); web_fetch falls back to plain tag-stripping", exc)
        return title, stripped, "strip"
    try:
        text = trafilatura.extract(html, url=url, include_comments=False, include_tables=True)
    except Exception as exc:
        log.warning("trafilatura failed on %s: %s", url, exc)
        text = None
    if text and text.strip():
        return title, text.strip(), "trafilatura"
    return title, stripped, "strip"


# ---- content types ----------------------------------------------------------------------------------
def _kind(content_type: str, head: bytes) -> str | None:
    """'html', 'json', 'text', or None (not readable) for a media type, sniffing when the server sent none."""
    media = content_type.split(";")[0].strip().lower()
    if media in ("text/html", "application/xhtml+xml"):
        return "html"
    if media in ("application/json", "text/json") or media.endswith("+json"):
        return "json"
    if media.startswith("text/"):
        return "text"
    if media:
        return None
    sample = head[:1024].lstrip().lower()
    if sample.startswith((b"<!doctype html", b"<html")) or b"<body" in sample:
        return "html"
    return "text" if b"\x00" not in head[:1024] and _decodes(head[:1024]) else None


def _decodes(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError as exc:
        return exc.start >= len(data) - 3  # a multi-byte character cut at the sample's end


def _decode(body: bytes, charset: str | None, kind: str) -> str:
    if not charset and kind == "html":
        meta = re.search(rb"""<meta[^>]+charset=["']?([\w-]+)""", body[:4096], re.I)
        charset = meta.group(1).decode("ascii") if meta else None
    try:
        return body.decode(charset or "utf-8", errors="replace")
    except LookupError:
        return body.decode("utf-8", errors="replace")


def _cut(text: str, limit: int) -> tuple[str, bool]:
    if len(text) <= limit:
        return text, False
    head = text[:limit]
    space = head.rfind(" ", limit - 200)
    return (head[:space] if space > 0 else head), True


# ---- the fetcher ------------------------------------------------------------------------------------
class _Deadline(Exception):
    pass


class WebFetcher(Toolkit):
    """Fetches URLs for an agent; one httpx client, one guard, shared by the tool's calls."""

    def __init__(self, *, timeout: float = DEFAULT_TIMEOUT_S, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_chars: int = DEFAULT_MAX_CHARS, max_redirects: int = 5, allow_private: bool = False,
                 allow_networks: Iterable[str] = (), resolver: Resolver | None = None,
                 user_agent: str = USER_AGENT) -> None:
        for module in ("httpx", "trafilatura"):
            if importlib.util.find_spec(module) is None:
                raise ToolError(f"web_fetch needs {module}: pip install 'hanlin[tools]'")
        for name, value, low in (("timeout", timeout, 0.01), ("max_bytes", max_bytes, 1024),
                                 ("max_chars", max_chars, 200), ("max_redirects", max_redirects, 0)):
            if not isinstance(value, (int, float)) or value < low:
                raise ConfigurationError(f"web_fetch: {name} must be a number >= {low}, got {value!r}")
        self.timeout, self.max_bytes, self.max_chars = float(timeout), int(max_bytes), int(max_chars)
        self.max_redirects = int(max_redirects)
        self.guard = URLGuard(allow_private=allow_private, allow_networks=allow_networks, resolver=resolver)
        self.user_agent = user_agent
        self._client: Any = None
        self._lock = threading.Lock()

    # ---- plumbing ---------------------------------------------------------------------------------
    def _http(self) -> Any:
        import httpx

        with self._lock:
            if self._client is None:
                transport = httpx.HTTPTransport()
                if not install_backend(transport, self.guard):
                    log.warning("web_fetch: this httpx version hides its connection pool; addresses are checked "
                                "before each request but not pinned at connect time, and the deadline is "
                                "checked only between body chunks")
                # trust_env=False: an environment proxy would resolve names out of the guard's sight.
                self._client = httpx.Client(transport=transport, trust_env=False, follow_redirects=False,
                                            headers={"User-Agent": self.user_agent, "Accept": _ACCEPT})
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def tools(self) -> list[Tool]:
        made = Tool(self.web_fetch, name="web_fetch", timeout=self.timeout + 5)  # own deadline stops it first
        made.toolkit = self
        return [made]

    # ---- the tool -----------------------------------------------------------------------------------
    def web_fetch(self, url: Annotated[str, Field(max_length=2000)]) -> ToolResult:
        """Fetch a web page (http or https) and return its readable text; long pages are cut.

        HTML pages give their main content, plain text comes as it is, JSON pretty-printed.

        Args:
            url: The full address to read, e.g. "https://en.wikipedia.org/wiki/Kakapo".
        """
        import httpx

        chain = [url.strip()]  # every hop, so an error can name the one that failed
        try:
            return self._fetch(chain)
        except URLRefused as exc:
            return ToolResult.error(str(exc))
        except (_Deadline, httpx.TimeoutException):
            return ToolResult.error(f"fetching {chain[-1]} timed out after {self.timeout:g} s; the site is slow or "
                                    "unreachable, try another source")
        except httpx.ConnectError as exc:
            return ToolResult.error(f"could not connect to the host of {chain[-1]}: {exc}")
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            return ToolResult.error(f"fetching {chain[-1]} failed: {type(exc).__name__}: {exc}")

    def _fetch(self, chain: list[str]) -> ToolResult:
        with deadline_in(self.timeout) as deadline:  # one deadline for every hop's connect, headers and body
            return self._follow(chain, deadline)

    def _follow(self, chain: list[str], deadline: float) -> ToolResult:
        url = current = chain[0]
        while True:
            self.guard.check_url(current)
            with self._send(current, deadline) as response:
                if response.status_code in REDIRECTS and response.headers.get("location"):
                    if len(chain) > self.max_redirects:
                        return ToolResult.error(f"{url} redirected more than {self.max_redirects} times "
                                                f"(last: {current}); giving up")
                    current = urljoin(current, response.headers["location"]).split("#")[0]
                    chain.append(current)
                    continue
                return self._read(response, chain, deadline)

    def _send(self, url: str, deadline: float) -> Any:
        import httpx

        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Deadline
        client = self._http()
        return client.stream("GET", url, timeout=httpx.Timeout(remaining))

    def _read(self, response: Any, chain: list[str], deadline: float) -> ToolResult:
        final = chain[-1]
        if response.status_code >= 400:
            hint = " (the page does not exist; check the address)" if response.status_code in (404, 410) else ""
            return ToolResult.error(f"HTTP {response.status_code} {response.reason_phrase} for {final}{hint}")
        content_type = response.headers.get("content-type", "")
        if content_type and _kind(content_type, b"") is None:  # refused by its type, before any download
            return self._refuse(final, content_type)
        body, truncated = self._body(response, deadline)
        kind = _kind(content_type, body)
        if kind is None:
            return self._refuse(final, content_type)
        text = _decode(body, response.charset_encoding, kind)
        title, extractor = "", kind
        if kind == "html":
            title, text, extractor = html_to_text(text, final)
        elif kind == "json":
            try:
                text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
            except ValueError:
                pass  # cut or malformed: show it as the server sent it
        return self._observation(chain, title, text, truncated, extractor, response.status_code, content_type)

    @staticmethod
    def _refuse(url: str, content_type: str) -> ToolResult:
        shown = content_type.split(";")[0].strip() or "binary data of unknown type"
        return ToolResult.error(f"{url} is {shown}, which web_fetch cannot read; it reads HTML pages, plain text "
                                "and JSON")

    def _body(self, response: Any, deadline: float) -> tuple[bytes, bool]:
        """The (decompressed) body, at most max_bytes of it, read before the deadline: (bytes, was it cut?)."""
        chunks, size = [], 0
        for chunk in response.iter_bytes():
            if time.monotonic() > deadline:
                raise _Deadline
            chunks.append(chunk)
            size += len(chunk)
            if size > self.max_bytes:
                return b"".join(chunks)[: self.max_bytes], True
        return b"".join(chunks), False

    def _observation(self, chain: list[str], title: str, text: str, truncated: bool, extractor: str,
                     status: int, content_type: str) -> ToolResult:
        total = len(text)
        text, cut = _cut(text, self.max_chars)
        lines = [f"URL: {chain[-1]}" + (f" (redirected from {chain[0]})" if len(chain) > 1 else "")]
        if title:
            lines.append(f"Title: {title}")
        lines.append("")
        lines.append(text or "(the page has no readable text)")
        notes = []
        if cut:
            notes.append(f"text cut: showing the first {len(text)} of {total} characters")
        if truncated:
            notes.append(f"the page is larger than {self.max_bytes} bytes; only the first {self.max_bytes} were read")
        if notes:
            lines.append(f"[{'; '.join(notes)}]")
        data = {"url": chain[-1], "redirects": chain[:-1], "status": status, "content_type": content_type,
                "title": title, "extractor": extractor, "chars": total, "cut": cut, "bytes_truncated": truncated}
        return ToolResult(content="\n".join(lines), data=data)


OPTIONS = ("timeout", "max_bytes", "max_chars", "max_redirects", "allow_private", "allow_networks", "resolver",
           "user_agent")


def make_web_fetch(**config: Any) -> list[Tool]:
    """The ToolSpec factory: ``load_tool("web_fetch", allow_private=True, max_chars=4000)``."""
    unknown = sorted(set(config) - set(OPTIONS))
    if unknown:
        raise ConfigurationError(f"unknown web_fetch option(s) {unknown}; it takes {', '.join(OPTIONS)}")
    return WebFetcher(**config).tools()


@hookimpl
def register_tools(register: Any) -> None:
    register(ToolSpec(
        name="web_fetch", factory=make_web_fetch,
        description="Fetch a web page and return its readable text (HTML main content, text, JSON); size-capped, "
                    "refuses private and loopback hosts unless allowed.",
        default=False,  # it reaches the network: an app opts in
    ))
