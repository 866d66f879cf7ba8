"""A searcher's answer that quotes its source: the quote is one of the shown sentences, by construction.

Why: on the default 0.5B model the searchers answered with names that were in no passage they read ("prompt_toolkit
[1]" for "which ASGI toolkit is FastAPI built on", from a passage about Starlette), and the free ``source`` number
they gave did not say which words carried the answer. Here the searcher's final answer is decoded under a JSON
schema whose ``quote`` is an enum of the sentences of the passages it was shown, each labelled with its result
number, so the quote is verbatim and names its citation; the short ``answer`` is then checked against the quote and,
when its words are not there (made up), the quote itself becomes the answer.

It also turns a sub-question that refers back to its parent ("what is the test client of *that toolkit* built
on?") into a search query that names the parent's answer ("... of Starlette ..."): BM25 cannot resolve "that".
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import BaseModel, Field, create_model

from hanlin.plugins.tools.search_backends import tokenize

MAX_SENTENCES = 8
MAX_SENTENCE_CHARS = 220
MIN_WORDS = 4
MAX_NAME_WORDS = 6

_STOP = frozenset("the and that this with which what from into does about have their there they them than then "
                  "also only when were been being over under more most such each other used uses using".split())

# a reference back to an earlier answer: "that library", "this toolkit", "the same package", "its", "it"
REFERENCE = re.compile(r"\b(?:that|this|those|these|the same|said)\s+([a-z][a-z0-9_\-]*(?:\s+[a-z][a-z0-9_\-]*)?)"
                       r"|\b(?:its|it|they|their)\b", re.IGNORECASE)
_REF_NOUN = re.compile(r"\b(?:that|this|those|these|the same|said)\s+(?:[a-z][a-z0-9_\-]*\s+)?"
                       r"(library|libraries|package|packages|toolkit|tool|tools|framework|project|module|server|"
                       r"client|organization|company|author|maintainer|person|language|format|protocol|backend|"
                       r"engine|standard|specification|parser|service)\b",
                       re.IGNORECASE)


def content_words(text: str) -> list[str]:
    """Lower-case content words (4+ letters, not a stop word)."""
    return [w for w in re.findall(r"[a-z][a-z0-9_-]{3,}", text.lower()) if w not in _STOP]


# markdown / reStructuredText / HTML markup around the prose of a package description (what a badge row, a link
# list or a logo is made of); a URL may be wrapped onto the next line ("](\nhttps://numfocus.org)" in numpy's)
_URL = r"\(\s*[^()\s]*(?:\([^()\s]*\)[^()\s]*)*\s*\)"
_IMAGE = re.compile(r"\[\s*!\[[^\]]*\]" + _URL + r"\s*\]" + _URL + r"|!\[[^\]]*\]" + _URL)  # [![a](src)](href)
_LINK = re.compile(r"\[([^\]]*)\]" + _URL + r"|\[([^\]]+)\]\[[^\]]*\]")  # [text](href), [text][ref]
_RST_LINK = re.compile(r"`([^`<]+?)\s*<[^>`]+>`_{1,2}")  # `text <href>`_
_HTML = re.compile(r"</?[a-zA-Z][\w-]*(?:\s[^<>]*)?/?>")
# spans that hold no prose, removed before a passage is cut into sentences (their dots would cut it wrongly):
# fenced code, HTML comments, rST directives with their options (".. image:: src :width: 200px")
BLOCKS = re.compile(r"```.*?```|<!--.*?-->|\.\.\s+(?:\|[^|\n]+\|\s+)?[a-z][\w-]*::[^\n]*(?:\n?\s*:[a-z-]+:[^\n]*)*",
                     re.DOTALL)
_RST_NOISE = re.compile(r"(?<!\S)\|\w[\w-]*(?: [\w-]+)*\|(?!\S)|(?<!\S)<?https?://\S+")  # |badge|, a bare URL
_TABLE_RULE = re.compile(r"\|?(?:\s*:?-{3,}:?\s*\|)+(?:\s*:?-{3,}:?\s*)?|[=~^+*#-]{4,}")
# code: a prompt or an import first, a fence (its other end outside the snippet), an assignment, braces, a call
# that ends the line
_CODE = re.compile(r"^(?:>>>|\$ |\.\.\. |pip3? install|python -m|import \w|from [\w.]+ import)|```|>>>|\"\"\"|\s=\s|"
                   r"[{}]|\w\(.*\)\s*$")
# sentence ends, blank lines, a line that starts a list item, heading, table row or badge (a line wrapped inside a
# paragraph is not an end), " --- " (the local index's passage joint), and list items run into one line
SPLIT = re.compile(r"(?<=[.!?])\s+|\n\s*\n\s*|\n(?=\s*(?:[-*+]\s|[#|>]|\d+\.\s|\[!|!\[|\.\.\s))|\s+---\s+"
                   r"|\s+[-*\u2022]\s+")


def prose(fragment: str) -> str:
    """``fragment`` (one sentence or line of a description) without its markup, or "" when it is not prose that a
    quote can be: a badge or logo, a line of links only, a heading, a table rule, code, HTML, or fewer than
    ``MIN_WORDS`` words. Link text is kept ("[httpx](https://...)" reads "httpx"); badge URLs must not count as
    words shared with the question (a README header of badges named the package in every URL and was quoted)."""
    text = " ".join(BLOCKS.sub(" ", fragment).strip("\u2026").split())
    if text.startswith("#") or _CODE.search(text):
        return ""
    text = _IMAGE.sub(" ", text)
    linked = _LINK.findall(text) + _RST_LINK.findall(text)
    unlinked = _HTML.sub(" ", _RST_LINK.sub(" ", _LINK.sub(" ", text)))
    text = _RST_LINK.sub(lambda m: m.group(1), _LINK.sub(lambda m: m.group(1) or m.group(2), text))
    text = _TABLE_RULE.sub(" ", _RST_NOISE.sub(" ", _HTML.sub(" ", text))).replace("**", "")
    if linked and len(_words(_RST_NOISE.sub(" ", unlinked))) < 2:
        return ""  # "[Docs](...) | [Source](...) | [PyPI](...)": a list of links
    text = " ".join(text.split()).strip(" |-#*>:").strip()
    text = re.sub(r"\s+([.,;:!?])", r"\1", re.sub(r"\s*\|\s*", " | ", text))
    return text if len(_words(text)) >= MIN_WORDS else ""


def _words(text: str) -> list[str]:
    return re.findall(r"[^\W_][\w'\u2019.+/-]*", text)


def sentences(passages: dict[int, str], query: str = "") -> list[str]:
    """The passages' sentences (``{result number: text}``), each as ``"[n] sentence"`` without its markup, the
    ``MAX_SENTENCES`` that share the most words with ``query`` (ties: result order); fragments that are no prose
    (``prose``: badges, links only, headings, code) are left out. Few candidates, the likely ones: the 0.5B model
    picked an unrelated sentence more often from a long list."""
    out: list[str] = []
    for number, text in passages.items():
        for part in SPLIT.split(BLOCKS.sub(" ", text)):
            part = prose(part)
            if not part:
                continue
            labelled = f"[{number}] {part[:MAX_SENTENCE_CHARS]}"
            if labelled not in out:
                out.append(labelled)
    # a query word counts by its rarity among these sentences (the package's own name, on most of them, counts for
    # little: trafilatura's "title: summary" line outranked "Main text (own rule-based extractor with jusText ... as
    # fallbacks)" on word count alone), and sentences under half the best score are not offered (the 0.5B model
    # quoted the third of eight, a prompt_toolkit line, over "HTTPX builds on the well-established usability of
    # `requests`")
    terms = set(tokenize(query))
    tokens = [set(tokenize(re.sub(r"^\[\d+\]\s", "", line))) & terms for line in out]
    weight = {t: math.log((len(out) + 1) / (sum(t in tok for tok in tokens) + 0.5)) for t in terms}
    scores = [sum(weight[t] for t in tok) for tok in tokens]
    ranked = sorted(range(len(out)), key=lambda i: (-scores[i], i))
    best = max(scores, default=0.0)
    return [out[i] for i in ranked[:MAX_SENTENCES] if scores[i] * 2 >= best]


def answer_model(quotes: list[str]) -> type[BaseModel]:
    """A pydantic model (hence a JSON schema, hence a grammar) whose ``quote`` must be one of ``quotes``."""
    if not quotes:
        raise ValueError("no sentence to quote: the search showed nothing")
    choice: Any = Literal[tuple(quotes)]
    return create_model(
        "QuotedAnswer",
        quote=(choice, Field(description="The sentence of the search results that answers the question, copied "
                                         "with its [n].")),
        answer=(str, Field(max_length=120, description="The short answer (a name or phrase) taken from the quote.")),
    )


def quote_number(quote: str) -> int | None:
    match = re.match(r"\[(\d+)\]\s", quote)
    return int(match.group(1)) if match else None


def grounded_answer(answer: str, quote: str, question: str = "") -> tuple[str, bool]:
    """``(text, kept)``: the answer when what it adds to the question is (mostly) in the quote, else the quote's
    sentence (without its label): an answer that only repeats the question ("ASGI toolkit" for "which ASGI toolkit
    ...?") or says what the quote does not ("prompt_toolkit" from a sentence about Starlette) is not passed on."""
    sentence = re.sub(r"^\[\d+\]\s+", "", quote).strip().rstrip(".")
    short = " ".join(answer.split()).strip().rstrip(".")
    words = set(tokenize(short))
    if not words:  # "3.10", "HTTP/2": kept only when the quote says it and it has a letter or digit ("[" is none)
        said = re.search(r"\w", short) is not None and short.lower() in sentence.lower()
        return (short, True) if said else (sentence, False)
    new = words - set(tokenize(question))
    if new and sum(w in set(tokenize(sentence)) for w in new) * 2 >= len(new):
        return short, True
    return sentence, False


def name_in(answer: str, question: str, max_words: int = MAX_NAME_WORDS) -> str:
    """What a parent's answer adds to its question, short enough to stand in a child's query: the answer itself
    when it has at most ``max_words`` words, else its words that are not in the question (in order, no stop words,
    at most ``max_words``). A quoted sentence passed on whole made the child's search a search for the parent's
    sentence ("How does trafilatura 2.3.1: trafilatura: Python & Command-line tool to gather text ... XML's
    summary describe it?" found trafilatura again, not the tool it names)."""
    words = answer.split()
    if len(words) <= max_words:
        return answer
    asked = set(tokenize(question))
    # names the sentence marks as code (`requests`, ``prompt_toolkit``) that the question does not have: those
    coded = [c for c in dict.fromkeys(re.findall(r"`+([^`]+?)`+", answer)) if not set(tokenize(c)) & asked]
    if coded and len(" ".join(coded).split()) <= max_words:
        return " ".join(coded)
    kept: list[str] = []
    for word in words:
        core = word.strip(".,;:!?()[]*`'\"")
        toks = tokenize(core)
        if toks and not set(toks) & asked and core.lower() not in _STOP and core.lower() not in map(str.lower, kept):
            kept.append(core)
    return " ".join(kept[:max_words]) or answer


def supported_answer(answer: str, quote: str, question: str, shown: list[str]) -> tuple[str, bool, str]:
    """``(text, kept, quote)``: ``grounded_answer`` against the quote the searcher chose, else against the first of
    the other ``shown`` sentences that says what the answer adds (the 0.5B model answered "cloudpickle.Pickler", right,
    but quoted a joblib sentence; "cloudpickle: Pickler class to extend the standard pickle.Pickler functionality"
    was shown beside it): a supported answer is kept with the sentence that supports it as its quote."""
    text, kept = grounded_answer(answer, quote, question)
    if kept:
        return text, kept, quote
    for other in shown:
        if other != quote and (found := grounded_answer(answer, other, question))[1]:
            return found[0], True, other
    return text, kept, quote


def query_for(question: str, parent_answers: list[str]) -> str:
    """The search query of a node: its question with a reference back to a parent ("that toolkit") replaced by the
    parent's short answer, or the answers appended when the question has no such reference."""
    names = [" ".join(a.split()) for a in parent_answers if a.strip()]
    if not names:
        return question
    replaced, count = _REF_NOUN.subn(lambda m: names[0], question, count=1)
    extra = names[1:] if count else names
    return " ".join([replaced, *extra])[:300]


def refers_back(question: str) -> bool:
    """Whether a sub-question refers to an earlier answer instead of naming it ("that library", "its license")."""
    return REFERENCE.search(question) is not None


def describe(output: Any) -> tuple[str, str, int | None]:
    """``(answer, quote, number)`` of a decoded QuotedAnswer."""
    quote = str(getattr(output, "quote", ""))
    return str(getattr(output, "answer", "")), quote, quote_number(quote)
