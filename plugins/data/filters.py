"""Filters: language id, length, Gopher-style quality and repetition rules, a user predicate. Each drop is counted
under a short reason ("language fr", "gopher: duplicate lines") so report.json says why the corpus shrank."""

from __future__ import annotations

import array
import importlib
import os
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

from hanlin.errors import ConfigurationError
from hanlin.plugins.data.document import Document, Filter

_LANGID: Any = None


def _identifier() -> Any:
    """langid's identifier with normalised probabilities, built once per process. langid ships its model as a
    bz2 string that takes 3-10 s to unpack here; the unpacked arrays are cached once (``langid-model.npz`` in the
    hanlin cache) and load in well under a second after that, which matters with one load per worker."""
    global _LANGID
    if _LANGID is None:
        import numpy as np
        from langid.langid import LanguageIdentifier

        from hanlin.paths import cache_dir

        cached = cache_dir() / "langid-model.npz"
        if not cached.is_file():
            import base64
            import bz2
            import pickle

            from langid.langid import model

            ptc, pc, classes, nextmove, output = pickle.loads(bz2.decompress(base64.b64decode(model)))
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_name(f"langid-model.{os.getpid()}.tmp.npz")
            out_keys = np.array(list(output.keys()), dtype=np.int64)
            out_vals = np.empty(len(output), dtype=object)
            out_vals[:] = [tuple(v) for v in output.values()]
            np.savez(tmp, ptc=np.array(ptc).reshape(-1, len(pc)), pc=np.array(pc), classes=np.array(classes),
                     nextmove=np.array(nextmove), out_keys=out_keys, out_vals=out_vals)
            os.replace(tmp, cached)
        z = np.load(cached, allow_pickle=True)  # our own file, written just above from langid's model
        output = {int(k): tuple(int(x) for x in v) for k, v in zip(z["out_keys"], z["out_vals"])}
        nextmove = array.array("H")  # langid shifts these states as Python ints: a numpy uint16 would overflow
        nextmove.frombytes(z["nextmove"].astype(np.uint16).tobytes())
        _LANGID = LanguageIdentifier(z["ptc"], z["pc"], z["ptc"].shape[0], [str(c) for c in z["classes"]], nextmove,
                                     output, norm_probs=True)
    return _LANGID


class LanguageFilter(Filter):
    """Keep documents whose language (langid) is one of ``languages`` with probability >= ``min_score``;
    the language and its score are written into metadata either way."""

    name = "language"

    def __init__(self, languages: list[str] | str = "en", min_score: float = 0.65, max_chars: int = 5000) -> None:
        super().__init__()
        self.languages = {languages} if isinstance(languages, str) else set(languages)
        self.min_score, self.max_chars = min_score, max_chars

    def reason(self, doc: Document) -> str | None:
        lang, score = _identifier().classify(doc.text[: self.max_chars])
        doc.metadata["language"], doc.metadata["language_score"] = lang, round(float(score), 4)
        if lang not in self.languages:
            return f"language {lang}"
        return None if score >= self.min_score else f"language score < {self.min_score}"


class LengthFilter(Filter):
    """Keep documents within character and word bounds (``None`` = no bound)."""

    name = "length"

    def __init__(self, min_chars: int | None = None, max_chars: int | None = None,
                 min_words: int | None = None, max_words: int | None = None) -> None:
        super().__init__()
        self.min_chars, self.max_chars, self.min_words, self.max_words = min_chars, max_chars, min_words, max_words

    def reason(self, doc: Document) -> str | None:
        n = len(doc.text)
        if self.min_chars is not None and n < self.min_chars:
            return f"shorter than {self.min_chars} chars"
        if self.max_chars is not None and n > self.max_chars:
            return f"longer than {self.max_chars} chars"
        if self.min_words is not None or self.max_words is not None:
            w = len(doc.text.split())
            if self.min_words is not None and w < self.min_words:
                return f"fewer than {self.min_words} words"
            if self.max_words is not None and w > self.max_words:
                return f"more than {self.max_words} words"
        return None


STOP_WORDS = frozenset(("the", "be", "to", "of", "and", "that", "have", "with"))
_WORD = re.compile(r"\w+", re.UNICODE)


def _dup_fraction(items: list[str]) -> tuple[float, float]:
    """(fraction of items that repeat an earlier one, fraction of characters in those repeats)."""
    seen: set[str] = set()
    dup = dup_chars = 0
    for it in items:
        if it in seen:
            dup += 1
            dup_chars += len(it)
        seen.add(it)
    total_chars = sum(len(i) for i in items) or 1
    return (dup / len(items) if items else 0.0), dup_chars / total_chars


def _ngrams(words: list[str], n: int) -> list[str]:
    return [" ".join(words[i: i + n]) for i in range(len(words) - n + 1)]


def _top_ngram_fraction(words: list[str], n: int) -> float:
    grams = _ngrams(words, n)
    if not grams:
        return 0.0
    top, count = Counter(grams).most_common(1)[0]
    return len(top) * count / max(1, sum(len(w) for w in words))


def _dup_ngram_fraction(words: list[str], n: int) -> float:
    """Characters of words covered by n-grams that occur more than once, over all word characters (Gopher)."""
    grams = _ngrams(words, n)
    counts = Counter(grams)
    covered = [False] * len(words)
    for i, g in enumerate(grams):
        if counts[g] > 1:
            for j in range(i, i + n):
                covered[j] = True
    total = sum(len(w) for w in words) or 1
    return sum(len(w) for w, c in zip(words, covered) if c) / total


class GopherFilter(Filter):
    """The quality and repetition rules of Gopher (Rae et al. 2021, appendix A), thresholds as published.
    Prose rules: give code corpora their own thresholds (or leave this block out)."""

    name = "gopher"

    def __init__(self, min_words: int = 50, max_words: int = 100_000, min_mean_word: float = 3.0,
                 max_mean_word: float = 10.0, max_symbol_ratio: float = 0.1, max_bullet_lines: float = 0.9,
                 max_ellipsis_lines: float = 0.3, min_alpha_words: float = 0.8, min_stop_words: int = 2,
                 max_dup_lines: float = 0.3, max_dup_paragraphs: float = 0.3, max_dup_line_chars: float = 0.2,
                 max_top_ngram: dict[int, float] | None = None, max_dup_ngram: dict[int, float] | None = None) -> None:
        super().__init__()
        self.min_words, self.max_words = min_words, max_words
        self.min_mean_word, self.max_mean_word = min_mean_word, max_mean_word
        self.max_symbol_ratio, self.max_bullet_lines = max_symbol_ratio, max_bullet_lines
        self.max_ellipsis_lines, self.min_alpha_words = max_ellipsis_lines, min_alpha_words
        self.min_stop_words, self.max_dup_lines = min_stop_words, max_dup_lines
        self.max_dup_paragraphs, self.max_dup_line_chars = max_dup_paragraphs, max_dup_line_chars
        self.max_top_ngram = {int(k): v for k, v in (max_top_ngram or {2: 0.2, 3: 0.18, 4: 0.16}).items()}
        self.max_dup_ngram = {int(k): v for k, v in (max_dup_ngram or {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12,
                                                                       9: 0.11, 10: 0.10}).items()}

    def reason(self, doc: Document) -> str | None:  # noqa: C901 - one rule per line reads best
        text = doc.text
        words = text.split()
        n = len(words)
        if n < self.min_words:
            return "gopher: too few words"
        if n > self.max_words:
            return "gopher: too many words"
        mean = sum(len(w) for w in words) / n
        if not self.min_mean_word <= mean <= self.max_mean_word:
            return "gopher: mean word length"
        if (text.count("#") + text.count("...") + text.count("\u2026")) / n > self.max_symbol_ratio:
            return "gopher: symbol ratio"
        lines = [ln for ln in text.split("\n") if ln.strip()]
        if lines:
            if sum(ln.lstrip().startswith(("-", "*", "\u2022")) for ln in lines) / len(lines) > self.max_bullet_lines:
                return "gopher: bullet lines"
            if sum(ln.rstrip().endswith(("...", "\u2026")) for ln in lines) / len(lines) > self.max_ellipsis_lines:
                return "gopher: ellipsis lines"
        if sum(1 for w in words if any(c.isalpha() for c in w)) / n < self.min_alpha_words:
            return "gopher: non-alphabetic words"
        if len(STOP_WORDS.intersection(w.lower() for w in words)) < self.min_stop_words:
            return "gopher: too few stop words"
        line_frac, line_chars = _dup_fraction(lines)
        if line_frac > self.max_dup_lines:
            return "gopher: duplicate lines"
        if line_chars > self.max_dup_line_chars:
            return "gopher: duplicate line characters"
        paragraphs = [p for p in re.split(r"\n{2,}", text) if p.strip()]
        if _dup_fraction(paragraphs)[0] > self.max_dup_paragraphs:
            return "gopher: duplicate paragraphs"
        lower = [w.lower() for w in _WORD.findall(text)]
        for k, limit in self.max_top_ngram.items():
            if _top_ngram_fraction(lower, k) > limit:
                return f"gopher: top {k}-gram"
        for k, limit in self.max_dup_ngram.items():
            if _dup_ngram_fraction(lower, k) > limit:
                return f"gopher: duplicate {k}-grams"
        return None


def resolve_callable(ref: str | Callable[..., Any], what: str) -> Callable[..., Any]:
    """A callable given directly (Python pipelines) or as ``"module:function"`` (YAML pipelines)."""
    if callable(ref):
        return ref
    module, sep, attr = str(ref).partition(":")
    if not sep:
        raise ConfigurationError(f"{what} must be 'module:function', got {ref!r}")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(f"{what} {ref!r} cannot be imported ({exc}); is its module on PYTHONPATH?") from None
    if not callable(fn):
        raise ConfigurationError(f"{what} {ref!r} is not callable")
    return fn


class PredicateFilter(Filter):
    """Keep documents for which the user's ``function(doc)`` is true (``"module:function"`` in YAML)."""

    name = "predicate"

    def __init__(self, function: str | Callable[[Document], bool], reason: str | None = None) -> None:
        super().__init__()
        self.function = function
        self.fn = resolve_callable(function, "predicate function")
        self.label = reason or f"predicate {getattr(self.fn, '__name__', 'function')}"

    def __getstate__(self) -> dict[str, Any]:  # ship the reference, not the function, to other processes
        state = dict(self.__dict__)
        if isinstance(self.function, str):
            state.pop("fn")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if "fn" not in state:
            self.fn = resolve_callable(self.function, "predicate function")

    def reason(self, doc: Document) -> str | None:
        return None if self.fn(doc) else self.label
