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

import re
from typing import Any, Literal

from pydantic import BaseModel, Field, create_model

from hanlin.plugins.tools.search_backends import tokenize

MAX_SENTENCES = 8
MAX_SENTENCE_CHARS = 220
MIN_WORDS = 3

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


def sentences(passages: dict[int, str], query: str = "") -> list[str]:
    """The passages' sentences (``{result number: text}``), each as ``"[n] sentence"``, the ``MAX_SENTENCES`` that
    share the most words with ``query`` (ties: result order); sentences of fewer than ``MIN_WORDS`` words are left
    out (headings, badges). Few candidates, the likely ones: the 0.5B model picked an unrelated sentence more often
    from a long list."""
    out: list[str] = []
    for number, text in passages.items():
        for part in re.split(r"(?<=[.!?])\s+|\n+|\s+---\s+", text):
            part = " ".join(part.strip("…").strip().lstrip("-#*> ").split())
            if len(part.split()) < MIN_WORDS:
                continue
            labelled = f"[{number}] {part[:MAX_SENTENCE_CHARS]}"
            if labelled not in out:
                out.append(labelled)
    terms = set(tokenize(query))
    ranked = sorted(range(len(out)), key=lambda i: (-len(terms & set(tokenize(out[i]))), i))
    return [out[i] for i in ranked[:MAX_SENTENCES]]


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
