"""How much of a question the passages sent to the model cover: the retrieve stage's second test of "is this topic
in the knowledge base".

An embedding score says a passage is *about* the question's topic; a question on the same topic that the docs do
not answer ("does httpx support HTTP/3 over QUIC?", "how do I mock httpx in unit tests?") scores as high as one they
do. What such a question asks about — QUIC, mocking, retries — is usually a word no retrieved passage contains.
Coverage is the share of the question's content words (stemmed, weighted by their inverse document frequency in the
knowledge base, so that rare, specific words count more than "install" or "use") that appear in the passages. It
needs no model call, and its threshold is tuned with the others (``tune.search``).

Measured on the evaluation's 156 messages with no model stage at all (thresholds tuned on one fold, applied to
the other): the best passage's score alone decides with F1 0.75; with coverage as well, 0.82.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from hanlin.plugins.apps.assistant.check import content_words, stem


def terms(text: str) -> set[str]:
    return {stem(w) for w in content_words(text)}


@dataclass(slots=True)
class Covered:
    share: float  # 0..1, IDF-weighted; 0 when the question has no content words (nothing a passage could cover)
    missing: list[str]  # the question's words no passage has, rarest first


class Coverage:
    """Document frequencies of the knowledge base's chunks, and the question coverage computed from them."""

    def __init__(self, chunks: Iterable[str]) -> None:
        self.frequency: Counter[str] = Counter()
        self.count = 0
        for text in chunks:
            self.frequency.update(terms(text))
            self.count += 1

    def weight(self, term: str) -> float:
        """Inverse document frequency: a word in every chunk weighs little, one in none weighs most."""
        return math.log((self.count + 1) / (self.frequency[term] + 0.5))

    def of(self, question: str, passages: Sequence[str]) -> Covered:
        asked: dict[str, str] = {}  # stem -> the word as the question wrote it
        for word in content_words(question):
            asked.setdefault(stem(word), word)
        if not asked:
            return Covered(0.0, [])
        held = set().union(*(terms(p) for p in passages)) if passages else set()
        total = sum(self.weight(t) for t in asked)
        missing = sorted((t for t in asked if t not in held), key=self.weight, reverse=True)
        share = sum(self.weight(t) for t in asked if t in held) / total
        return Covered(round(share, 6), [asked[t] for t in missing])
