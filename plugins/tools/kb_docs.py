"""Documents for the knowledge base: finding them, reading md / txt / html / pdf into titled sections, and
cutting the sections into overlapping chunks that keep their source and heading (what a cited answer needs)."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from hanlin.errors import ConfigurationError, ToolError

SUFFIXES = {".md": "markdown", ".markdown": "markdown", ".txt": "text", ".html": "html", ".htm": "html", ".pdf": "pdf"}
KB_EXTRA = "pip install 'hanlin[kb]'"


class KnowledgeBaseError(ConfigurationError):
    """An index or document folder hanlin cannot use as given; the message says how to fix it."""


class StaleIndexError(KnowledgeBaseError):
    """The documents changed since the index was built, or it was built by a different embedder or format."""


@dataclass(slots=True)
class Chunk:
    source: str  # path relative to the documents folder, with '/'
    heading: str  # "Title › Section" (or "page 3" in a PDF); "" when the text has no heading
    text: str

    def embed_text(self) -> str:
        return f"{self.heading}\n{self.text}" if self.heading else self.text

    @property
    def where(self) -> str:
        return f"{self.source} › {self.heading}" if self.heading else self.source


# ---- documents -----------------------------------------------------------------------------------
def find_documents(root: Path) -> list[Path]:
    """Supported files under ``root``, sorted; hidden files and folders (e.g. a ``.hanlin-kb`` index) are skipped."""
    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(folder, n) for n in sorted(names)
                  if not n.startswith(".") and Path(n).suffix.lower() in SUFFIXES]
    return found


def file_hashes(root: Path) -> dict[str, str]:
    """relative path -> sha256 of the content, for every document ``find_documents`` sees."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in find_documents(root)}


def fingerprint(hashes: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()


class _HTMLText(HTMLParser):
    """HTML to markdown-like text: headings become '#' lines so one splitter serves both formats."""

    SKIP = {"script", "style", "noscript", "template", "svg", "head"}
    BLOCK = {"p", "div", "section", "article", "main", "header", "footer", "blockquote", "table", "tr", "ul", "ol",
             "dl", "dt", "dd", "pre", "figure", "figcaption", "aside", "nav", "form"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title = ""
        self._skip = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in self.SKIP:
            self._skip += 1
        elif tag == "title":
            self._in_title = True
        elif re.fullmatch(r"h[1-6]", tag):
            self.parts.append("\n\n" + "#" * int(tag[1]) + " ")
        elif tag == "li":
            self.parts.append("\n- ")
        elif tag == "br":
            self.parts.append("\n")
        elif tag in self.BLOCK:
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag == "title":
            self._in_title = False
        elif re.fullmatch(r"h[1-6]", tag) or tag in self.BLOCK:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data.strip()
        elif not self._skip:
            self.parts.append(re.sub(r"\s+", " ", data))


def html_to_text(html: str) -> str:
    parser = _HTMLText()
    parser.feed(html)
    parser.close()
    text = "".join(parser.parts)
    text = re.sub(r"[ \t]*\n[ \t]*", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    if parser.title and not re.search(r"^#", text, re.M):
        text = f"# {parser.title}\n\n{text}"
    return text


_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$")


def markdown_sections(text: str) -> list[tuple[str, str]]:
    """(heading path, body) per section; '#' lines inside fenced code are not headings."""
    sections: list[tuple[str, str]] = []
    stack: list[tuple[int, str]] = []
    body: list[str] = []
    fence: str | None = None

    def flush() -> None:
        content = "\n".join(body).strip()
        if content:
            sections.append((" › ".join(title for _, title in stack), content))
        body.clear()

    for line in text.splitlines():
        marker = line.lstrip()[:3]
        if marker in ("```", "~~~"):
            fence = None if fence == marker else (fence or marker)
        elif fence is None and (match := _HEADING.match(line)):
            flush()
            level = len(match.group(1))
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, match.group(2).strip()))
            continue
        body.append(line)
    flush()
    return sections


def pdf_sections(path: Path) -> list[tuple[str, str]]:
    try:
        from pypdf import PdfReader
    except ImportError:
        raise ToolError(f"reading PDF files needs pypdf: {KB_EXTRA}") from None
    reader = PdfReader(str(path))
    if reader.is_encrypted and not reader.decrypt(""):
        raise KnowledgeBaseError("the PDF is encrypted")
    pages = [(f"page {i}", page.extract_text() or "") for i, page in enumerate(reader.pages, 1)]
    return [(heading, text) for heading, text in pages if text.strip()]


def read_sections(path: Path) -> list[tuple[str, str]]:
    kind = SUFFIXES[path.suffix.lower()]
    if kind == "pdf":
        return pdf_sections(path)
    text = path.read_text(encoding="utf-8", errors="replace")
    if kind == "html":
        return markdown_sections(html_to_text(text))
    return markdown_sections(text) if kind == "markdown" else [("", text)]


# ---- chunking ------------------------------------------------------------------------------------
def _split_long(text: str, limit: int) -> list[str]:
    """Pieces of at most ``limit`` characters: whole sentences where possible, then words, then a hard cut."""
    if len(text) <= limit:
        return [text]
    units = re.split(r"(?<=[.!?])\s+", text)
    if len(units) == 1:
        units = text.split()
        if len(units) == 1:
            return [text[i:i + limit] for i in range(0, len(text), limit)]
    pieces: list[str] = []
    current = ""
    for unit in units:
        for part in _split_long(unit, limit) if len(unit) > limit else [unit]:
            if current and len(current) + 1 + len(part) > limit:
                pieces.append(current)
                current = part
            else:
                current = f"{current} {part}" if current else part
    return pieces + ([current] if current else [])


def _tail(text: str, size: int) -> str:
    """The last ``size`` characters of ``text``, starting at a word boundary."""
    if size <= 0 or len(text) <= size:
        return "" if size <= 0 else text
    tail = text[-size:]
    cut = tail.find(" ")
    return tail[cut + 1:] if 0 <= cut < len(tail) - 1 else tail


def chunk_sections(source: str, sections: list[tuple[str, str]], max_chars: int = 800,
                   overlap: int = 100) -> list[Chunk]:
    """Pack each section's paragraphs into chunks of at most ``max_chars``, each new chunk starting with the
    last ~``overlap`` characters of the one before it (within a section: headings are natural breaks)."""
    if max_chars < 100 or not 0 <= overlap <= max_chars // 2:
        raise KnowledgeBaseError(f"chunk sizes need max_chars >= 100 and 0 <= overlap <= max_chars/2, "
                                 f"got max_chars={max_chars}, overlap={overlap}")
    limit = max_chars - overlap - 2
    chunks: list[Chunk] = []
    for heading, body in sections:
        pieces: list[str] = []
        for paragraph in re.split(r"\n\s*\n", body):
            lines = [line.strip() for line in paragraph.splitlines() if line.strip()]
            if lines:
                pieces += _split_long("\n".join(lines), limit)
        current = ""
        for piece in pieces:
            if current and len(current) + 2 + len(piece) > max_chars:
                chunks.append(Chunk(source, heading, current))
                tail = _tail(current, overlap)
                current = f"{tail}\n\n{piece}" if tail else piece
            else:
                current = f"{current}\n\n{piece}" if current else piece
        if current:
            chunks.append(Chunk(source, heading, current))
    return chunks
