"""PII masking: e-mail addresses, phone numbers and IP addresses replaced by placeholders before text is trained
on. Regexes, so precise rather than exhaustive: counts of what was masked go into metadata['pii']."""

from __future__ import annotations

import re
from collections.abc import Callable

from hanlin.plugins.data.document import Document, Mapper

EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
# +country code optional, then area/exchange/line groups separated by space, dot or dash; at least 9 digits.
PHONE = re.compile(r"(?<![\w.+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])"
                   r"\d{3,4}[ .-]\d{3,4}(?!\w)(?!\.\d)")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
IPV4 = re.compile(rf"(?<![\w.])(?:{_OCTET}\.){{3}}{_OCTET}(?!\w)(?!\.\d)")
IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}(?![\w:])")


def _digits(text: str) -> int:
    return sum(c.isdigit() for c in text)


class PiiMasker(Mapper):
    """Replace e-mails with ``email``, phones with ``phone``, IPv4/IPv6 addresses with ``ip`` (the replacement
    strings are options); ``kinds`` picks which to mask."""

    name = "pii"

    def __init__(self, kinds: list[str] | None = None, email: str = "<EMAIL>", phone: str = "<PHONE>",
                 ip: str = "<IP>") -> None:
        super().__init__()
        self.kinds = list(kinds or ["email", "ip", "phone"])
        self.replacement = {"email": email, "phone": phone, "ip": ip}

    def _mask(self, pattern: re.Pattern[str], text: str, kind: str, ok: Callable[[str], bool] | None,
              counts: dict[str, int]) -> str:
        def sub(m: re.Match[str]) -> str:
            if ok is not None and not ok(m.group(0)):
                return m.group(0)
            counts[kind] = counts.get(kind, 0) + 1
            return self.replacement[kind]

        return pattern.sub(sub, text)

    def apply(self, doc: Document) -> Document:
        counts: dict[str, int] = {}
        text = doc.text
        if "email" in self.kinds:
            text = self._mask(EMAIL, text, "email", None, counts)
        if "ip" in self.kinds:  # before phones: an IP is digits and dots too
            text = self._mask(IPV4, text, "ip", None, counts)
            text = self._mask(IPV6, text, "ip", None, counts)
        if "phone" in self.kinds:
            text = self._mask(PHONE, text, "phone", lambda s: 9 <= _digits(s) <= 15, counts)
        if counts:
            doc.metadata["pii"] = counts
            doc.text = text
        return doc
