"""Cleaners: blocks that repair text rather than judge it (unicode mojibake, whitespace, boilerplate lines).
A document a cleaner leaves empty is dropped and counted ("empty after <block>")."""

from __future__ import annotations

import re

from hanlin.plugins.data.document import Document, Mapper

# Lines that are page furniture rather than content (C4's and datatrove's line rules, kept short on purpose).
DEFAULT_BOILERPLATE = (
    r"\bjavascript\b", r"cookie(s)? (policy|settings|consent)", r"accept (all )?cookies", r"all rights reserved",
    r"terms (of use|and conditions|of service)", r"privacy policy", r"subscribe to (our|the) newsletter",
    r"^\s*(share|tweet|like|follow us)( on \w+)?\s*$", r"click here", r"^\s*(skip to (main )?content|back to top)\s*$",
)


class FtfyCleaner(Mapper):
    """Repair mojibake and broken unicode (``CafÃ©`` -> ``Café``) with ftfy; text already right is left alone."""

    name = "ftfy"

    def __init__(self, normalization: str = "NFC") -> None:
        super().__init__()
        self.normalization = normalization

    def apply(self, doc: Document) -> Document:
        import ftfy

        doc.text = ftfy.fix_text(doc.text, normalization=self.normalization)
        return doc


_SPACES = re.compile(r"(?<=\S)[ \t\u00a0\u2000-\u200b\u3000]{2,}")
_BLANKS = re.compile(r"\n{3,}")
_TRAILING = re.compile(r"[ \t\u00a0]+$", re.MULTILINE)


class WhitespaceCleaner(Mapper):
    """CRLF to LF, trailing spaces removed, runs of blank lines cut to one, and (``collapse_spaces``) runs of spaces
    inside a line to one. Leading indentation is kept: it is meaning in code and markdown."""

    name = "whitespace"

    def __init__(self, collapse_spaces: bool = True) -> None:
        super().__init__()
        self.collapse_spaces = collapse_spaces

    def apply(self, doc: Document) -> Document:
        text = doc.text.replace("\r\n", "\n").replace("\r", "\n")
        text = _TRAILING.sub("", text)
        if self.collapse_spaces:
            text = _SPACES.sub(" ", text)
        doc.text = _BLANKS.sub("\n\n", text).strip()
        return doc


class BoilerplateCleaner(Mapper):
    """Remove lines that match any of ``patterns`` (case-insensitive regexes; defaults: cookie banners, "all rights
    reserved", share buttons...), and lines shorter than ``min_line_words`` words when that is set."""

    name = "boilerplate"

    def __init__(self, patterns: list[str] | None = None, min_line_words: int = 0) -> None:
        super().__init__()
        self.pattern = re.compile("|".join(f"(?:{p})" for p in (patterns or DEFAULT_BOILERPLATE)), re.IGNORECASE)
        self.min_line_words = min_line_words

    def keep_line(self, line: str) -> bool:
        if self.pattern.search(line):
            return False
        return not (self.min_line_words and line.strip() and len(line.split()) < self.min_line_words)

    def apply(self, doc: Document) -> Document:
        lines = doc.text.split("\n")
        kept = [ln for ln in lines if self.keep_line(ln)]
        if len(kept) != len(lines):
            doc.metadata["boilerplate_lines"] = len(lines) - len(kept)
            doc.text = "\n".join(kept).strip()
        return doc
