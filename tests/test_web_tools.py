"""web_search and web_fetch: a real BM25 index over real files, the real ddgs stack (pointed at a closed
loopback port, or with its network call replaced by sample answers), and a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import http.server
import importlib.util
import ipaddress
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from hanlin import Agent, ConfigurationError, ScriptedModel, get_plugin_manager, load_tool
from hanlin.plugins.tools.search_backends import LocalIndexBackend, SearchHit, split_passages
from hanlin.plugins.tools.url_guard import URLGuard, URLRefused, carried_ipv4
from hanlin.plugins.tools.web_fetch import WebFetcher, strip_html

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("ddgs", "httpx", "trafilatura", "bm25s")),
    reason="pip install 'hanlin[tools]'",
)

# ---- documents for the local index -------------------------------------------------------------------
KAKAPO_MD = """# Birds of New Zealand

New Zealand has many unusual birds, shaped by millions of years without land mammals.

## Kiwi

The kiwi is a small flightless bird that lays a very large egg for its body size.

## Kakapo

The kakapo is a large, flightless, nocturnal parrot. It is the heaviest parrot in the world
and can live for up to 90 years. Males gather at leks and make booming calls at night.
"""
RUST_TXT = "Rust language notes\n\n" + "Ownership and borrowing rules are checked at compile time. " * 3 + (
    "\n\nRust has no garbage collector: memory is freed when its owner goes out of scope.\n"
)
COFFEE_HTML = """<html><head><title>Coffee brewing</title><script>var tracking = "kakapo parrot";</script></head>
<body><nav>Home | Parrots | Shop</nav><article><h1>Brewing coffee</h1>
<p>Pour-over coffee needs water at about 93 degrees Celsius and a medium-fine grind.</p></article></body></html>"""


@pytest.fixture()
def docs(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "kakapo.md").write_text(KAKAPO_MD)
    (folder / "sub" / "rust.txt").write_text(RUST_TXT)
    (folder / "coffee.html").write_text(COFFEE_HTML)
    (folder / ".hidden").mkdir()
    (folder / ".hidden" / "secret.md").write_text("# Secret\n\nThe kakapo password is hunter2.\n")
    (folder / "image.png").write_bytes(b"\x89PNG kakapo")
    return folder


def search(tool, query: str):
    return tool.invoke({"query": query})


@pytest.mark.parametrize("ranker", ["bm25s", "builtin"])
def test_local_backend_ranks_the_right_document_first(docs: Path, ranker: str) -> None:
    tool = load_tool("web_search", backend="local", index_dir=docs, ranker=ranker)
    result = search(tool, "heaviest parrot")
    assert not result.is_error
    assert result.data[0]["url"] == (docs / "kakapo.md").resolve().as_uri()
    assert result.data[0]["title"] == "Birds of New Zealand"
    # the snippet is the matching passage, not the head of the file
    assert "heaviest parrot in the world" in result.data[0]["snippet"]
    assert "unusual birds" not in result.data[0]["snippet"]
    # numbered, compact: "1. title" / url / snippet
    lines = result.content.splitlines()
    assert lines[0] == "1. Birds of New Zealand" and lines[1].strip().startswith("file://")
    assert len(result.data) == 1  # the script in coffee.html mentions parrots: scripts are not indexed

    rust = search(tool, "garbage collector")
    assert rust.data[0]["url"].endswith("/sub/rust.txt") and rust.data[0]["title"] == "Rust language notes"
    assert "no garbage collector" in rust.data[0]["snippet"] and "Ownership" not in rust.data[0]["snippet"]
    coffee = search(tool, "water temperature for coffee")
    assert coffee.data[0]["title"] == "Coffee brewing" and "93 degrees" in coffee.data[0]["snippet"]
    assert "Home | Parrots" not in coffee.data[0]["snippet"]


def test_local_backend_no_match_empty_query_and_hidden_files(docs: Path) -> None:
    tool = load_tool("web_search", backend="local", index_dir=docs)
    none = search(tool, "zebra migration")
    assert not none.is_error and none.content.startswith('no results for "zebra migration"') and none.data == []
    assert search(tool, "the of and").content.startswith("no results for")  # stopwords only
    empty = search(tool, "   ")
    assert empty.is_error and "query is empty" in empty.content
    assert "hunter2" not in search(tool, "kakapo password").content  # dot-folders are not indexed


def test_local_index_follows_changes_and_respects_max_results(docs: Path) -> None:
    backend = LocalIndexBackend(docs)
    assert backend.search("espresso", 5) == []
    (docs / "espresso.md").write_text("# Espresso\n\nEspresso is coffee brewed by forcing hot water through a puck.\n")
    hits = backend.search("espresso coffee water", 5)
    assert [Path(h.url).name for h in hits][:2] == ["espresso.md", "coffee.html"]
    assert len(backend.search("espresso coffee water", 1)) == 1


def test_long_documents_are_split_into_bounded_passages() -> None:
    passages = split_passages("# Title\n\n" + "A sentence about nothing much at all. " * 60 + "\n\n" + "word " * 500)
    assert len(passages) > 3 and all(len(p) <= 600 for p in passages)


def test_web_search_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="unknown web_search backend 'bing'"):
        load_tool("web_search", backend="bing")
    with pytest.raises(ConfigurationError, match="needs index_dir"):
        load_tool("web_search", backend="local")
    with pytest.raises(ConfigurationError, match="is not a folder"):
        load_tool("web_search", backend="local", index_dir=tmp_path / "missing")
    with pytest.raises(ConfigurationError, match="max_results must be an integer from 1 to 20"):
        load_tool("web_search", max_results=0)
    with pytest.raises(ConfigurationError, match="object with search"):
        load_tool("web_search", backend=object())
    spec = get_plugin_manager().tools()["web_search"]
    assert spec.default is False and get_plugin_manager().tools()["web_fetch"].default is False


def test_custom_backend_object_and_its_failures() -> None:
    class Intranet:
        description = "the intranet"

        def __init__(self, fail: bool) -> None:
            self.fail = fail

        def search(self, query: str, max_results: int) -> list[SearchHit]:
            if self.fail:
                raise RuntimeError("index server down")
            return [SearchHit(f"Page {i}", f"https://intra/{i}", f"about {query}") for i in range(10)]

    tool = load_tool("web_search", backend=Intranet(False), max_results=2)
    assert tool.description.startswith("Search the intranet")
    assert search(tool, "vpn").content == "1. Page 0\n   https://intra/0\n   about vpn\n2. Page 1\n   https://intra/1\n   about vpn"
    broken = search(load_tool("web_search", backend=Intranet(True)), "vpn")
    assert broken.is_error and broken.content == "the search backend failed: RuntimeError: index server down"


# ---- ddgs ---------------------------------------------------------------------------------------------
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddgs_live_call_failing_becomes_an_error_observation() -> None:
    # The real ddgs stack, sent through a proxy on a closed loopback port: fails like an offline machine, but
    # deterministically and without touching the network.
    tool = load_tool("web_search", proxy=f"http://127.0.0.1:{closed_port()}", timeout=5)
    started = time.perf_counter()
    result = search(tool, "kakapo parrot")
    assert time.perf_counter() - started < 5
    assert result.is_error and result.content.startswith("the web search failed: ")
    assert "internet may be unreachable" in result.content


SAMPLE = [
    {"title": "Kākāpō - Wikipedia", "href": "https://en.wikipedia.org/wiki/Kakapo", "body": "The  kākāpō is a\n parrot."},
    {"title": "dup", "href": "https://en.wikipedia.org/wiki/Kakapo", "body": "same url again"},
    {"title": "no url", "body": "dropped"},
    {"title": "", "href": "https://doc.org/kakapo", "body": "x" * 1000},
    {"title": "Third", "href": "https://third.example/", "body": "c"},
    {"title": "Fourth", "href": "https://fourth.example/", "body": "d"},
]


def test_ddgs_results_are_normalised(monkeypatch: pytest.MonkeyPatch) -> None:
    from ddgs import DDGS

    seen: dict = {}

    def fake_text(self, query, **kwargs):
        seen.update(kwargs, query=query)
        return SAMPLE

    monkeypatch.setattr(DDGS, "text", fake_text)
    result = search(load_tool("web_search", max_results=3, region="de-de"), "  kakapo   parrot ")
    assert seen == {"query": "kakapo parrot", "max_results": 3, "region": "de-de", "safesearch": "moderate",
                    "backend": "auto"}
    assert [h["url"] for h in result.data] == ["https://en.wikipedia.org/wiki/Kakapo", "https://doc.org/kakapo",
                                              "https://third.example/"]
    assert result.data[0] == {"title": "Kākāpō - Wikipedia", "url": "https://en.wikipedia.org/wiki/Kakapo",
                              "snippet": "The kākāpō is a parrot."}
    assert result.data[1]["title"] == "https://doc.org/kakapo"  # no title: the URL stands in
    assert len(result.data[1]["snippet"]) <= 300 and result.data[1]["snippet"].endswith("…")
    assert result.content.startswith("1. Kākāpō - Wikipedia\n   https://en.wikipedia.org/wiki/Kakapo\n   The kākāpō")


@pytest.mark.parametrize(("error", "expected", "is_error"), [
    ("RatelimitException", "rate-limiting requests", True),
    ("TimeoutException", "timed out after 7 s", True),
    ("DDGSException", 'no results for "kakapo"', False),  # how ddgs reports an empty result
])
def test_ddgs_failures_become_observations(monkeypatch: pytest.MonkeyPatch, error: str, expected: str,
                                           is_error: bool) -> None:
    import ddgs.exceptions
    from ddgs import DDGS

    exc = getattr(ddgs.exceptions, error)("No results found." if error == "DDGSException" else "202 Ratelimit")

    def fail(self, query, **kwargs):
        raise exc

    monkeypatch.setattr(DDGS, "text", fail)
    result = search(load_tool("web_search", timeout=7), "kakapo")
    assert result.is_error is is_error and expected in result.content


# ---- a real HTTP server -------------------------------------------------------------------------------
ARTICLE = """<!doctype html><html><head><title>The Kakapo | Bird Facts</title>
<style>body { color: red }</style><script>var secret = "TRACKING_CODE_123"; document.write("ad");</script></head>
<body><header><nav><ul><li><a href="/">Home</a></li><li><a href="/shop">Shop our store</a></li>
<li><a href="/subscribe">Subscribe to our newsletter</a></li></ul></nav></header>
<main><article><h1>The Kakapo</h1>
<p>The kakapo is a large, flightless, nocturnal parrot endemic to New Zealand. It is the heaviest parrot in the world,
and males can weigh up to four kilograms.</p>
<p>Kakapo breed only in years when the rimu trees produce abundant fruit, which happens every two to four years.
Conservation workers track every living bird.</p>
<p>The species was close to extinction in the 1990s; intensive management has since brought the population above
two hundred birds.</p></article></main>
<footer>Copyright 2024 Bird Facts Ltd. All rights reserved.</footer></body></html>"""


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def send(self, status: int, body: bytes, content_type: str | None, headers: dict | None = None) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def redirect(self, status: int, location: str) -> None:
        self.send(status, b"", None, {"Location": location})

    def do_GET(self) -> None:
        try:
            self.route()
        except (BrokenPipeError, ConnectionResetError):  # the client stopped reading on purpose (size cap)
            pass

    def route(self) -> None:
        path = self.path
        if path == "/article":
            self.send(200, ARTICLE.encode(), "text/html; charset=utf-8")
        elif path == "/footer-only":
            self.send(200, b'<html><body><div id="footer">Opening hours: nine to five</div></body></html>', "text/html")
        elif path == "/plain":
            self.send(200, "Plain text: café au lait.\nSecond line.".encode("latin-1"), "text/plain; charset=iso-8859-1")
        elif path == "/data.json":
            self.send(200, b'{"name":"kakapo","weight_kg":4,"tags":["parrot","nocturnal"]}', "application/json")
        elif path == "/image.png":
            self.send(200, b"\x89PNG\r\n\x1a\n" + bytes(200), "image/png")
        elif path == "/untyped":
            self.send(200, bytes(range(256)) * 4, None)
        elif path == "/big":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            for _ in range(300):  # 3 MB, sent in 10 kB pieces
                self.wfile.write(b"a" * 9999 + b" ")
        elif path == "/drip":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            for _ in range(40):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.1)
        elif path == "/slow":
            time.sleep(2)
            self.send(200, b"late", "text/plain")
        elif path == "/missing":
            self.send(404, b"nope", "text/plain")
        elif path == "/crash":
            self.send(500, b"oops", "text/plain")
        elif path == "/r1":
            self.redirect(302, f"http://127.0.0.1:{self.server.server_port}/r2")
        elif path == "/r2":
            self.redirect(301, "r3")  # relative
        elif path == "/r3":
            self.redirect(307, "/plain")
        elif path == "/loop":
            self.redirect(302, "/loop")
        elif path.startswith("/to/"):
            self.redirect(302, path[len("/to/"):])
        else:
            self.send(404, b"", "text/plain")


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


@pytest.fixture()
def fetch():
    fetchers: list[WebFetcher] = []

    def make(**config):
        config.setdefault("allow_private", True)
        fetcher = WebFetcher(**config)
        fetchers.append(fetcher)
        tool = fetcher.tools()[0]
        return lambda url: tool.invoke({"url": url})

    yield make
    for fetcher in fetchers:
        fetcher.close()


def test_html_article_becomes_its_main_text(server: str, fetch) -> None:
    result = fetch()(f"{server}/article")
    assert not result.is_error and result.data["extractor"] == "trafilatura"
    assert result.content.startswith(f"URL: {server}/article\nTitle: The Kakapo | Bird Facts\n\n")
    for sentence in ("The kakapo is a large, flightless, nocturnal parrot endemic to New Zealand.",
                     "rimu trees produce abundant fruit", "brought the population above two hundred birds."):
        assert sentence in result.content
    for junk in ("TRACKING_CODE", "document.write", "color: red", "Subscribe to our newsletter", "Shop our store",
                 "All rights reserved"):
        assert junk not in result.content


def test_html_without_main_content_falls_back_to_tag_strip(server: str, fetch) -> None:
    result = fetch()(f"{server}/footer-only")
    assert not result.is_error and result.data["extractor"] == "strip"
    assert "Opening hours: nine to five" in result.content
    assert strip_html("<p>a<script>x()</script>b</p><nav>menu</nav><p>c &amp; d</p>") == ("", "ab\n\nc & d")


def test_a_broken_trafilatura_install_degrades_to_the_tag_strip(server: str, fetch, monkeypatch) -> None:
    get = fetch()  # installed (its spec is found) ...
    monkeypatch.setitem(sys.modules, "trafilatura", None)  # ... but `import trafilatura` fails, as without lxml_html_clean
    result = get(f"{server}/article")
    assert not result.is_error and result.data["extractor"] == "strip"
    assert "The kakapo is a large, flightless, nocturnal parrot endemic to New Zealand. It is the heaviest" in (
        result.content)
    for junk in ("TRACKING_CODE", "color: red", "Subscribe to our newsletter", "All rights reserved"):
        assert junk not in result.content


def test_plain_text_json_and_refused_types(server: str, fetch) -> None:
    get = fetch()
    plain = get(f"{server}/plain")
    assert not plain.is_error and plain.content.endswith("\n\nPlain text: café au lait.\nSecond line.")
    data = get(f"{server}/data.json")
    assert not data.is_error
    assert '{\n  "name": "kakapo",\n  "weight_kg": 4,\n  "tags": [\n    "parrot",' in data.content
    image = get(f"{server}/image.png")
    assert image.is_error and image.content == (f"{server}/image.png is image/png, which web_fetch cannot read; "
                                                "it reads HTML pages, plain text and JSON")
    untyped = get(f"{server}/untyped")
    assert untyped.is_error and "binary data of unknown type" in untyped.content


def test_size_caps(server: str, fetch) -> None:
    result = fetch(max_bytes=100_000, max_chars=1000)(f"{server}/big")
    assert not result.is_error
    assert result.data["bytes_truncated"] and result.data["chars"] == 100_000 and result.data["cut"]
    assert result.content.endswith("[text cut: showing the first 1000 of 100000 characters; the page is larger "
                                   "than 100000 bytes; only the first 100000 were read]")
    assert len(result.content) < 1300
    article = fetch(max_chars=200)(f"{server}/article")
    assert "[text cut: showing the first" in article.content and not article.data["bytes_truncated"]


def test_http_errors_and_timeouts_are_observations(server: str, fetch) -> None:
    get = fetch()
    missing = get(f"{server}/missing")
    assert missing.is_error and missing.content.startswith(f"HTTP 404 Not Found for {server}/missing")
    crash = get(f"{server}/crash")
    assert crash.is_error and crash.content == f"HTTP 500 Internal Server Error for {server}/crash"
    started = time.perf_counter()
    slow = fetch(timeout=0.5)(f"{server}/slow")
    drip = fetch(timeout=1)(f"{server}/drip")  # bytes keep coming, but the whole fetch has one deadline
    assert time.perf_counter() - started < 3
    assert slow.is_error and "timed out after 0.5 s" in slow.content
    assert drip.is_error and "timed out after 1 s" in drip.content
    refused = get(f"http://127.0.0.1:{closed_port()}/")
    assert refused.is_error and refused.content.startswith("could not connect to the host of")


@pytest.fixture()
def header_dripper():
    """A real loopback server that answers with a status line and then one header byte every 0.1 s for up to
    15 s: every single read gets a byte in time, so only one deadline over the whole fetch can stop it."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def drip(conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Drip: ")
                until = time.monotonic() + 15
                while not stop.is_set() and time.monotonic() < until:
                    conn.sendall(b"a")
                    time.sleep(0.1)
                conn.sendall(b"\r\nContent-Length: 4\r\n\r\nlate")
            except OSError:  # the client hung up: that is the point
                pass

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=drip, args=(conn,), daemon=True).start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    acceptor.join(5)
    listener.close()


@pytest.mark.parametrize("config", [{"allow_private": True},
                                    {"allow_private": False, "allow_networks": ["127.0.0.1/32"]}],
                         ids=["guard-off", "guard-pinned"])
def test_a_server_dripping_its_headers_is_cut_at_the_deadline(header_dripper: str, fetch, config) -> None:
    started = time.perf_counter()
    result = fetch(timeout=1, **config)(f"{header_dripper}/")
    elapsed = time.perf_counter() - started
    assert result.is_error and "timed out after 1 s" in result.content, result.content
    assert elapsed < 2.5, f"the fetch ran {elapsed:.1f} s past a 1 s deadline"


def test_redirect_chain_is_followed_and_bounded(server: str, fetch) -> None:
    result = fetch()(f"{server}/r1")
    assert not result.is_error
    assert result.content.startswith(f"URL: {server}/plain (redirected from {server}/r1)\n")
    assert result.data["redirects"] == [f"{server}/r1", f"{server}/r2", f"{server}/r3"]
    loop = fetch(max_redirects=3)(f"{server}/loop")
    assert loop.is_error and "redirected more than 3 times" in loop.content


# ---- the SSRF guard -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("url", "expected"), [
    ("http://127.0.0.1/", "is a loopback address"),
    ("http://localhost/admin", "'localhost' (it resolves to "),
    ("http://10.0.0.1/", "is a private-network address"),
    ("http://169.254.169.254/latest/meta-data/", "is a link-local address"),
    ("http://[::1]/", "is a loopback address"),
    ("http://0x7f000001/", "'0x7f000001' (it resolves to 127.0.0.1) is a loopback address"),
    ("http://2130706433/", "(it resolves to 127.0.0.1) is a loopback address"),
    ("http://0177.0.0.1/", "(it resolves to 127.0.0.1) is a loopback address"),
    ("http://[::ffff:127.0.0.1]/", "loopback address (inside the IPv6 address"),
    ("http://[::ffff:a9fe:a9fe]/", "link-local address (inside the IPv6 address"),
    # 6to4, Teredo, IPv4-compatible and NAT64 addresses carry an IPv4 address a relay or gateway delivers to
    ("http://[2002:a9fe:a9fe::]/", "link-local address (inside the IPv6 address 2002:a9fe:a9fe::, as its 6to4"),
    ("http://[2002:7f00:1::1]/", "loopback address (inside the IPv6 address 2002:7f00:1::1, as its 6to4"),
    ("http://[2002:a00:1::]/", "private-network address (inside the IPv6 address 2002:a00:1::, as its 6to4"),
    ("http://[2001:0:4136:e378:8000:63bf:5601:5601]/", "link-local address (inside the IPv6 address "
     "2001:0:4136:e378:8000:63bf:5601:5601, as its Teredo client address)"),
    ("http://[::a9fe:a9fe]/", "link-local address (inside the IPv6 address ::a9fe:a9fe, as its IPv4-compatible"),
    ("http://[::ffff:10.1.2.3]/", "private-network address (inside the IPv6 address ::ffff:a01:203, as its "
     "IPv4-mapped"),
    ("http://[64:ff9b::a9fe:a9fe]/", "link-local address (inside the IPv6 address 64:ff9b::a9fe:a9fe, as its NAT64"),
    ("http://[64:ff9b:1::a9fe:a9fe]/", "is a local-use NAT64 address"),
    ("http://0.0.0.0:8080/", "is an unspecified address"),
    ("http://224.0.0.1/", "is a multicast address"),
    ("http://100.64.0.1/", "not publicly routable"),
    ("http://[fe80::1]/", "is a link-local address"),
    ("http://[fd00::1]/", "is a private-network address"),
    ("file:///etc/passwd", "the scheme 'file:' is not allowed; only http:// and https://"),
    ("ftp://example.com/pub/file.txt", "the scheme 'ftp:' is not allowed"),
    ("example.com/page", "has no scheme; write the full address, e.g. 'https://example.com/page'"),
])
def test_default_settings_refuse_non_public_targets(url: str, expected: str) -> None:
    fetcher = WebFetcher()  # defaults: no private addresses
    result = fetcher.tools()[0].invoke({"url": url})
    fetcher.close()
    assert result.is_error and expected in result.content
    if "scheme" not in expected:
        assert result.content.startswith("refused") and "allow_private=True" in result.content


FAKE_DNS = {"public.example": ["93.184.216.34"], "evil.example": ["10.0.0.5"],
            "mixed.example": ["93.184.216.34", "127.0.0.1"], "docs.internal": ["127.0.0.1"]}


def fake_resolver(host: str, port: int) -> list[str]:
    if host not in FAKE_DNS:
        raise socket.gaierror(-2, "Name or service not known")
    return FAKE_DNS[host]


def test_per_hop_guard_with_an_injected_resolver() -> None:
    guard = URLGuard(resolver=fake_resolver)
    assert guard.check_url("https://public.example/a?b=1") == ("public.example", 443)
    with pytest.raises(URLRefused, match=r"'evil.example' \(it resolves to 10.0.0.5\) is a private-network"):
        guard.check_url("http://evil.example/")
    with pytest.raises(URLRefused, match=r"resolves to 127.0.0.1\) is a loopback"):
        guard.check_url("http://mixed.example/")  # one bad address is enough
    with pytest.raises(URLRefused, match="does not resolve"):
        guard.check_url("http://nowhere.example/")
    assert URLGuard(allow_private=True, resolver=fake_resolver).check_url("http://evil.example:8080/") == (
        "evil.example", 8080)
    opened = URLGuard(allow_networks=["10.0.0.0/24"], resolver=fake_resolver)
    assert opened.check_url("http://evil.example/")  # the operator opened exactly that network
    with pytest.raises(URLRefused, match="loopback"):
        opened.check_url("http://127.0.0.1/")
    with pytest.raises(ConfigurationError, match="not an IP network"):
        URLGuard(allow_networks=["intranet"])


def test_ipv4_inside_ipv6_is_unwrapped_whichever_way_the_address_arrives() -> None:
    teredo = "2001:0:4136:e378:8000:63bf:5601:5601"  # server 65.54.227.120, client 169.254.169.254 (obfuscated)
    tunnelled = {"sixtofour.example": ["2002:a9fe:a9fe::1"], "teredo.example": [teredo],
                 "public6to4.example": ["2002:5db8:d822::1"]}
    guard = URLGuard(resolver=lambda host, port: tunnelled[host])
    with pytest.raises(URLRefused, match=r"resolves to 2002:a9fe:a9fe::1\) is a link-local address \(inside"):
        guard.check_url("http://sixtofour.example/latest/meta-data/")
    with pytest.raises(URLRefused, match="as its Teredo client address"):
        guard.check_url("http://teredo.example/")
    assert guard.check_url("http://public6to4.example/") == ("public6to4.example", 80)  # a public host inside
    assert [(form, str(ip)) for form, ip in carried_ipv4(ipaddress.ip_address(teredo))] == [
        ("Teredo client", "169.254.169.254"), ("Teredo server", "65.54.227.120")]
    assert carried_ipv4(ipaddress.ip_address("2606:4700::1111")) == []  # a plain IPv6 address carries nothing


def test_redirect_to_a_private_host_is_refused_at_that_hop(server: str, fetch) -> None:
    # 127.0.0.1 is opened for the test server only; every other non-public address stays closed.
    get = fetch(allow_private=False, allow_networks=["127.0.0.1/32"], resolver=fake_resolver)
    assert not get(f"{server}/plain").is_error
    for target, expected in (("http://10.0.0.1/admin", "'10.0.0.1' is a private-network address"),
                             ("http://169.254.169.254/latest/meta-data/", "is a link-local address"),
                             ("http://evil.example/", "'evil.example' (it resolves to 10.0.0.5)"),
                             ("file:///etc/passwd", "the scheme 'file:' is not allowed")):
        result = get(f"{server}/to/{target}")
        assert result.is_error and result.content.startswith(f"refused '{target}'") and expected in result.content


def test_connections_go_only_to_the_addresses_the_guard_checked(server: str, fetch) -> None:
    port = server.rsplit(":", 1)[1]
    # docs.internal exists only in the injected resolver: reaching the server proves the connection used the
    # guard's answer rather than a second lookup of its own
    pinned = fetch(allow_private=False, allow_networks=["127.0.0.1/32"], resolver=fake_resolver)
    ok = pinned(f"http://docs.internal:{port}/plain")
    assert not ok.is_error and "café au lait" in ok.content
    answers = iter([["93.184.216.34"], ["127.0.0.1"]])  # DNS rebinding: public when checked, loopback when used
    rebinding = fetch(allow_private=False, resolver=lambda host, p: next(answers))
    result = rebinding(f"http://rebind.example:{port}/plain")
    assert result.is_error and "'rebind.example' (it resolves to 127.0.0.1) is a loopback address" in result.content


def test_web_fetch_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="max_bytes must be a number >= 1024"):
        load_tool("web_fetch", max_bytes=10)
    with pytest.raises(ConfigurationError, match=r"unknown web_fetch option\(s\) \['follow'\]; it takes timeout"):
        load_tool("web_fetch", follow=True)
    with pytest.raises(ConfigurationError, match="unknown web_search option"):
        load_tool("web_search", backend="local", index_dir=".", region="de-de")


# ---- end to end ---------------------------------------------------------------------------------------
def test_agent_searches_the_local_index_and_answers_from_the_hit(docs: Path) -> None:
    def script(messages, params):
        last = messages[-1].content
        if not last.startswith("Observation:"):
            return ('Thought: I should search the documents.\nAction: web_search\n'
                    'Action Input: {"query": "heaviest parrot"}')
        url = next(line.strip() for line in last.splitlines() if line.strip().startswith("file://"))
        fact = "it can live for up to 90 years" if "90 years" in last else "unknown"
        return f"Thought: the first hit answers it.\nFinal Answer: The kakapo; {fact} (source: {url})"

    model = ScriptedModel(script)
    result = Agent(model, [load_tool("web_search", backend="local", index_dir=docs)]).run(
        "Which parrot is the heaviest, and how long can it live?")
    assert result.status == "answered"
    assert result.output == (f"The kakapo; it can live for up to 90 years (source: "
                             f"{(docs / 'kakapo.md').resolve().as_uri()})")
    tool_message = next(m for m in result.messages if m.role == "tool")
    assert tool_message.content.startswith("1. Birds of New Zealand\n") and not tool_message.is_error
