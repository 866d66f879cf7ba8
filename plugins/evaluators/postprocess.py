"""Answer extractors: pull the answer out of what a model wrote, robust to chat-model verbosity.

A chat model rarely answers "18" or "B": it writes "Let's think... so she started with **18** vacuum cleaners."
or "The correct answer is (b) Paris, because...". Each extractor below tries the most explicit signals first and
falls back to weaker ones, and returns None rather than guess when nothing usable is there, so an unanswered
question is scored wrong instead of lucky.

- ``extract_number`` (GSM8K and numeric user datasets), in order: the text after the first ``####``; the last
  ``\\boxed{...}``; the last "answer is / answer: / = " phrase with a number right after it (after its last "="
  when it states an equation); else the last number in the text. Thousands commas, ``$``, ``%`` and trailing
  units are dropped, and the number is written canonically (``1,234.00`` -> ``1234``) so it compares as text.
- ``extract_choice`` (MMLU, HellaSwag, TruthfulQA), in order: an "answer is B" / "Answer: (b)" / "option C"
  phrase (its last occurrence, so a conclusion beats a first guess); a letter opening a line ("B. Paris", "(C)",
  "B"); a parenthesised letter anywhere; the text of exactly one choice. A lower-case letter counts only with a
  delimiter ("(b)", "b.", "b)"), and a capital only before punctuation or a space in an answer phrase, so the
  article in "A bird..." is never read as choice A.
- ``extract_text`` (free-text user datasets): what follows the last "Answer:" / "the answer is", else the first
  line; compared after ``normalize_text`` (case, punctuation, articles and spacing removed).
- ``extract_code`` (HumanEval): the fenced block that defines the entry point (else the first fenced block, also
  an unterminated one cut off by the token limit), else the raw text as a completion of the prompt.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

from hanlin.plugins.evaluators.base import LETTERS

# ---- numbers ---------------------------------------------------------------------------------------------
_NUM = re.compile(r"(?<![\w.])([-\u2212])?\$?\s?(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?!\d)")
_HASHES = re.compile(r"####\s*([^\n]*)")
_BOXED = re.compile(r"\\boxed\s*\{([^{}]*)\}")
_ANSWER_PHRASE = re.compile(
    r"(?:final answer|the answer|answer)\s*(?:is|:|=|would be|will be|should be)\s*[:\-]?\s*([^\n]{0,80})",
    re.IGNORECASE,
)


def normalize_number(text: str) -> str | None:
    """Canonical text of the first number in ``text`` ("$1,234.50 dollars" -> "1234.5"), or None."""
    return _first_number(text)


def _canonical(sign: str | None, whole: str, frac: str | None) -> str | None:
    try:
        value = Decimal(whole.replace(",", "") + (frac or ""))
    except InvalidOperation:
        return None
    if sign:
        value = -value
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def _first_number(text: str) -> str | None:
    m = _NUM.search(text)
    return _canonical(m.group(1), m.group(2), m.group(3)) if m else None


def _last_number(text: str) -> str | None:
    matches = list(_NUM.finditer(text))
    if not matches:
        return None
    m = matches[-1]
    return _canonical(m.group(1), m.group(2), m.group(3))


def _clean_markup(text: str) -> str:
    return text.replace("**", "").replace("__", "").replace("\\$", "$")


def extract_number(text: str) -> str | None:
    """The final numeric answer of a worked solution, canonicalised; None if the text has no number."""
    text = _clean_markup(text)
    hashes = _HASHES.search(text)
    if hashes and (found := _first_number(hashes.group(1))) is not None:
        return found
    boxed = _BOXED.findall(text)
    if boxed and (found := _first_number(boxed[-1])) is not None:
        return found
    for m in reversed(list(_ANSWER_PHRASE.finditer(text))):
        span = re.split(r"(?<=[^\d])\.(?:\s|$)|;", m.group(1))[0]  # the phrase's own sentence
        if "=" in span:
            span = span.rsplit("=", 1)[1]
        if (found := _first_number(span)) is not None:
            return found
    return _last_number(text)


def numbers_equal(a: str, b: str) -> bool:
    try:
        return Decimal(a) == Decimal(b)
    except InvalidOperation:
        return False


# ---- multiple choice -------------------------------------------------------------------------------------
def _letter_class(n: int) -> str:
    last = LETTERS[n - 1]
    return f"A-{last}a-{last.lower()}"


def _in_range(letter: str, n: int) -> bool:
    return 0 <= LETTERS.find(letter.upper()) < n


def _norm_text(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    text = re.sub(r"[^\w\s]", " ", text)
    return " ".join(text.split())


def extract_choice(text: str, choices: Sequence[str]) -> str | None:
    """The letter (A, B, ...) of the chosen option, or None when the output does not commit to one."""
    n = len(choices)
    if n == 0 or n > len(LETTERS):
        return None
    text = _clean_markup(text).strip()
    cls = _letter_class(n)
    # 1. an answer phrase; its last occurrence wins ("... so the answer is C")
    phrase = re.compile(
        r"(?:\b(?:answer|option|choice|ending|completion|continuation)(?:\s+[a-z]+){0,3}?\s*(?:is|:|=|would be|should be)"
        r"|\b(?:I would|I'd|I will|I'll|I|we)\s+(?:say|choose|pick|select|go with))"
        r"\s*(?:option|choice|letter)?\s*[:\-]?\s*"
        rf"(\(|\[)?([{cls}])(\)|\])?(?=([\s.,:;!?]|$))",
        re.IGNORECASE,
    )
    verdict = re.compile(  # "option B is correct", "(C) is the right answer"
        rf"(?:\b(?:option|choice|answer)\s*)?(\(|\[)?\b([{cls}])(\)|\])?()\s+is\s+(?:the\s+)?(?:correct|right|true|best)\b",
        re.IGNORECASE,
    )
    found = sorted([*phrase.finditer(text), *verdict.finditer(text)], key=lambda m: m.start(2))
    for m in reversed(found):
        opened, letter, closed, after = m.group(1), m.group(2), m.group(3), m.group(4)
        if opened and not closed:
            continue
        if letter.islower() and not closed and after not in (".", ":", ""):
            continue  # "the answer is a bit..." is English, not choice A
        if _in_range(letter, n):
            return letter.upper()
    # 2. a line that opens with a letter: "B. Paris", "(C)", "D) ...", "B", "B Paris". Lines opening with several
    #    different letters are the options repeated back, not an answer.
    starts: list[str] = []
    for m in re.finditer(rf"^[ \t]*(\(|\[)?([{cls}])(\)|\])?([^\n]*)$", text, re.MULTILINE):
        opened, letter, closed, rest = m.groups()
        if (opened and not closed) or not _in_range(letter, n):
            continue
        if not closed:
            head = rest.lstrip()[:1]
            if rest.strip() and head not in (".", ":", "-"):
                if letter.islower() or not _norm_text(rest).startswith(_norm_text(choices[LETTERS.index(letter.upper())])):
                    continue  # "A bird..." is a sentence; "B Paris" names choice B
        starts.append(letter.upper())
    if len(set(starts)) == 1:
        return starts[0]
    # 3. a parenthesised letter anywhere, if only one letter is named that way: "I'd go with (b) here"
    named = {m.group(1).upper() for m in re.finditer(rf"\(([{cls}])\)", text) if _in_range(m.group(1), n)}
    if len(named) == 1:
        return named.pop()
    if starts or named:
        return None  # several letters and no answer phrase: the model did not commit
    # 4. the text of exactly one choice
    return _choice_by_text(text, choices)


def _choice_by_text(text: str, choices: Sequence[str]) -> str | None:
    out = _norm_text(text)
    normed = [_norm_text(c) for c in choices]
    if not out:
        return None
    for i, c in enumerate(normed):
        if c and out == c:
            return LETTERS[i]
    hits = [i for i, c in enumerate(normed) if c and re.search(rf"(?<!\w){re.escape(c)}(?!\w)", out)]
    # "Paris, Texas" contains "Paris": keep only hits not contained in another hit
    hits = [i for i in hits if not any(j != i and normed[i] in normed[j] for j in hits)]
    return LETTERS[hits[0]] if len(hits) == 1 else None


# ---- free text -----------------------------------------------------------------------------------------
_TEXT_ANSWER = re.compile(r"(?:final answer|the answer|answer)\s*(?:is|:)\s*[:\-]?\s*([^\n]+)", re.IGNORECASE)


def normalize_text(text: str) -> str:
    """Case, punctuation, articles and spacing removed: the SQuAD-style comparison form."""
    text = _norm_text(text)
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


def extract_text(text: str) -> str | None:
    """A short free-text answer: what follows the last "Answer:" / "the answer is", else the first non-empty line;
    a trailing full stop goes."""
    text = _clean_markup(text).strip()
    found = _TEXT_ANSWER.findall(text)
    answer = found[-1] if found else next((line for line in text.splitlines() if line.strip()), "")
    answer = answer.strip().rstrip(".").strip()
    return answer or None


# ---- code ------------------------------------------------------------------------------------------------
_FENCE = re.compile(r"```[ \t]*([\w+-]*)[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_code(text: str, entry_point: str | None = None) -> str:
    """The code a model wrote: a fenced block (preferring the one defining ``entry_point``), else the text."""
    blocks = [body for lang, body in _FENCE.findall(text) if lang.lower() in ("", "python", "py", "python3")]
    if not blocks:
        return text
    if entry_point:
        for body in blocks:
            if re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", body, re.MULTILINE):
                return body
    return blocks[0]


def defines(code: str, entry_point: str) -> bool:
    return re.search(rf"^def\s+{re.escape(entry_point)}\s*\(", code, re.MULTILINE) is not None


POSTPROCESSORS = {
    "number": "extract_number: '#### N', \\boxed{N}, 'the answer is N', else the last number; canonical form",
    "choice": "extract_choice: 'answer is B', a line opening with a letter, '(b)', or the text of one choice",
    "text": "extract_text: what follows 'Answer:' / 'the answer is', else the first line; compared normalised",
    "code": "extract_code: the fenced block defining the entry point, else the raw completion",
}
