"""Stage: refuse to send an answer that says it does not know, cites nothing or a passage it was not given, says
nothing besides its citations, states what its cited passages do not, or touches a banned topic.

"Supported" is checked on words, with no model call: a small model asked whether a passage supports a claim says
yes to nearly everything (its relevance scores were 10 for almost every retrieved passage, measured). Two cheap
signals catch the answers that matter in a chat: a *specific* token (a version, a number, an identifier such as
``HTTP/3`` or ``max_redirects``) that appears in no cited passage nor in the question (restating it is no claim),
and an answer whose content words mostly come from neither the cited passages nor the question (an answer made up
around the passages' topic). A specific token found in a passage the answer was given but did not cite gets that
citation added (``cite_where_found``); the checked answer is in the record's ``detail["answer"]``.

Specific tokens also include a one-digit number and a name the answer marks as code (`` `--cert` ``, `` `close()` ``):
the 0.5B model's made-up how-to answers name options and methods the docs do not have ("use the `--cert`
option"). A token is found in a passage only whole, not inside a longer one: "10 seconds" is not in "100% test
coverage" (the default model's "the default timeout in httpx is 10 seconds [1]").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from hanlin.plugins.apps.assistant.records import Passage, StageRecord

UNSURE = ("i don't know", "i do not know", "i'm not sure", "i am not sure", "not mentioned", "no information",
          "does not contain", "doesn't contain", "do not contain", "cannot answer", "can't answer", "not provided",
          "unable to answer", "not specified")
CITATION = re.compile(r"\[(\d+)\]")
# A token that names one thing exactly: it has a digit, or an inner "/", "_", "." or "-" between word characters,
# or is an acronym (HTTP, QUIC).
_SPECIFIC = re.compile(r"(?<![\w/.-])(?=[\w/.-]*(?:\d|\w[/_.-]\w|\b[A-Z]{3,}\b))[\w][\w/.+-]*\w(?![\w/-])")
_WORD = re.compile(r"[a-z][a-z0-9]{3,}")
_STOP = frozenset(
    "the and that this with which what from into does about have their there they them than then also only when "
    "were been being over under more most such each other used uses using your yours will would should could can "
    "able just like some many much very here where while these those it's its passage passages answer question "
    "based according provided following given need needs make sure want help helps way ways case".split())
MIN_SUPPORT = 0.5  # default share of the answer's new content words (not the question's) the cited passages must have


def citations(text: str) -> list[int]:
    return sorted({int(n) for n in CITATION.findall(text)})


def stem(word: str) -> str:
    return word[:6]  # "supports"/"supported"/"support" alike; enough for a grounding test, not for a search index


def content_words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOP]


_ABBREVIATIONS = frozenset({"e.g", "i.e", "etc", "vs", "a.k.a"})


# a question answered by yes or no: what it names is what the answer affirms, so the answer's tokens that come from
# it are claims too ("Does httpx support HTTP/3?" "Yes, httpx supports HTTP/3 [1]." needs HTTP/3 in the passage)
_YES_NO = re.compile(r"\s*(?:does|do|did|is|are|was|were|can|could|will|would|should|has|have|had)\b", re.IGNORECASE)
_BARE = re.compile(r"\W*(?:yes|no)\W*", re.IGNORECASE)


_DIGIT = re.compile(r"(?<![\w.,/-])\d(?![\w.,/-])")
_CODE = re.compile(r"`([^`\n]{2,60})`")


def specific_tokens(text: str) -> list[str]:
    text = CITATION.sub(" ", text)
    code = [c.strip().removesuffix("()").strip() for c in _CODE.findall(text)]
    tokens = [t.rstrip(".") for t in _SPECIFIC.findall(text)] + _DIGIT.findall(text) + [c for c in code if c]
    return list(dict.fromkeys(t for t in tokens if t.lower() not in _ABBREVIATIONS))


def holds(text: str, token: str) -> bool:
    """``token`` occurs in ``text`` (case-insensitively) as a whole: not preceded or followed by a word character."""
    return re.search(rf"(?<!\w){re.escape(token.lower())}(?!\w)", text.lower()) is not None


def cite_where_found(answer: str, passages: Sequence[Passage], claim: str | None = None) -> str:
    """``answer`` with citations added for the passages that hold a specific token of ``claim`` (the answer itself
    by default) that its own citations lack.

    The 0.5B model often cites the passage next to the one it used ("click.echo [1]" with click.echo in [2]). A
    token found in another passage it was given is grounded; the citation is repaired rather than the answer lost.
    Nothing changes when a token is in no given passage (the check then refuses the answer)."""
    cited = set(citations(answer))
    sources = "\n".join(p.text for p in passages if p.number in cited)
    extra: list[int] = []
    for token in specific_tokens(answer if claim is None else claim):
        if holds(sources, token):
            continue
        holder = next((p.number for p in passages if p.number not in cited and holds(p.text, token)), None)
        if holder is None:
            return answer
        if holder not in extra:
            extra.append(holder)
    if not extra:
        return answer
    last = list(CITATION.finditer(answer))[-1]
    return answer[:last.end()] + "".join(f"[{n}]" for n in sorted(extra)) + answer[last.end():]


def bare_yes_or_no(answer: str, question: str) -> bool:
    """"Yes [1]." to "Does Jinja support template inheritance?": the answer affirms (or denies) the question itself."""
    return bool(_YES_NO.match(question)) and bool(_BARE.fullmatch(CITATION.sub(" ", answer)))


def unsupported(answer: str, question: str, sources: str) -> tuple[list[str], list[str], float]:
    """(specific tokens no source has, the answer's new content words no source has, the share of its new words
    that the sources have). "New" = not in the question: restating the question is no evidence, so an answer that
    wraps invented advice around the question's words ("to run uvicorn behind nginx, configure nginx to proxy...")
    is measured on the invented part alone."""
    lowered = sources.lower()
    restated = "" if _YES_NO.match(question) else question.lower()  # a how/what question's own names are context
    missing = [t for t in specific_tokens(answer) if not holds(lowered, t) and t.lower() not in restated]
    asked = {stem(w) for w in content_words(question)}
    known = {stem(w) for w in content_words(sources)}
    own = [w for w in dict.fromkeys(content_words(CITATION.sub(" ", answer))) if stem(w) not in asked]
    foreign = [w for w in own if stem(w) not in known]
    support = 1 - len(foreign) / len(own) if own else 1.0  # only the question's words: nothing new to check
    return missing, foreign, support


@dataclass(slots=True)
class Check:
    banned: Sequence[str] = field(default_factory=tuple)
    min_support: float = MIN_SUPPORT  # a tuned threshold (Thresholds.support): how much made-up wording to allow

    def run(self, answer: str, passages: list[Passage], question: str = "") -> StageRecord:
        lowered = answer.lower()
        unsure = next((p for p in UNSURE if p in lowered.replace("’", "'")), None)
        if unsure:
            return StageRecord(stage="check", passed=False, reason=f"the answer admits it does not know ({unsure!r})")
        cited = citations(answer)
        given = {p.number for p in passages}
        if not cited:
            return StageRecord(stage="check", passed=False, reason="the answer cites no passage ([n])")
        wrong = [n for n in cited if n not in given]
        if wrong:
            return StageRecord(stage="check", passed=False, detail={"cited": cited},
                               reason=f"the answer cites passage(s) {wrong} it was not given (given {sorted(given)})")
        topic = next((b for b in self.banned if b.lower() in lowered), None)
        if topic:
            return StageRecord(stage="check", passed=False, reason=f"the answer touches the banned topic {topic!r}")
        # a bare "Yes [1]." claims what the question asks: its words are checked against the passages instead
        claim, context = (question, "") if bare_yes_or_no(answer, question) else (answer, question)
        if not content_words(CITATION.sub(" ", claim)) and not specific_tokens(claim):
            return StageRecord(stage="check", passed=False, detail={"cited": cited},
                               reason="the answer says nothing besides its citations")
        repaired = cite_where_found(answer, passages, claim)
        if repaired != answer:
            answer, cited = repaired, citations(repaired)
        sources = "\n".join(f"{p.source}\n{p.text}" for p in passages if p.number in cited)
        missing, foreign, support = unsupported(claim, context, sources)
        detail = {"cited": cited, "support": support, "not_in_sources": missing + foreign, "answer": answer}
        if missing:
            return StageRecord(stage="check", passed=False, detail=detail,
                               reason=f"the answer states {', '.join(missing[:4])}, which the cited passage(s) "
                                      f"{cited} do not contain")
        if support < self.min_support:
            return StageRecord(stage="check", passed=False, score=round(support, 3), threshold=self.min_support,
                               detail=detail,
                               reason=f"only {support:.0%} of what the answer adds to the question is in the cited "
                                      f"passage(s) {cited} (need {self.min_support:.0%}; not there: "
                                      f"{', '.join(foreign[:6])})")
        return StageRecord(stage="check", passed=True, score=round(support, 3), threshold=self.min_support,
                           detail=detail,
                           reason=f"answer cites {cited} of the given passages, which hold {support:.0%} of what "
                                  "it adds to the question")
