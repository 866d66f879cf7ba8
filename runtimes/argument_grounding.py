"""Call arguments the conversation never gave: optional ones are dropped, and a call made up whole is withheld.

A small model fills optional arguments it was not given: ``"cc": ["admin@example.com"]`` on an e-mail nobody asked
to copy, ``"max_price": 1000`` on a product search, ``"mode": "heat"`` on a thermostat, ``"unit": "fahrenheit"`` for
one city of three. Each of those makes the call wrong where leaving the argument out lets the function use its own
default, which is what the caller meant by not saying. Asking the model whether an argument should follow did not
separate the made-up ones from the asked-for ones (README, function calling), but the conversation does: a value
the user, the system message or a tool result never mentioned was invented.

So an optional argument stays when its value is grounded in the conversation, and goes otherwise:

- strings: the value appears in the text, or each of its words does (case, ``_``/``-`` and a plural ``s`` aside);
- numbers: the text writes the number, sign aside (digits, ``20%`` as 20 or 0.2, ``four``, ``a dozen``,
  ``quarterly`` as 4 a year);
- lists and objects: every element is grounded; an empty one says nothing and goes;
- a boolean's value is no word of the request ("only in-stock ones" is ``in_stock_only: true``), so its name is:
  it stays when the conversation mentions a word of the argument's name (``include_hourly: true`` goes from "the
  3-day forecast for Seattle");
- the schema's own default always stays.

Required arguments are never dropped (the call would no longer be valid), and neither is an argument the schema does
not list. But a call whose required arguments were all made up, a number or an id among them (see ``invented``), is
withheld: the reply says what the call needs instead; so is a call with a required choice (an ``enum``) that the
conversation never made (``named_choices``). A caller turns all this off with
``GenerationParams(ground_arguments=False)``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hanlin.messages import Message, ToolCall
from hanlin.runtimes.named_choices import guessed_choices, guessed_note, listed_values, names_value
from hanlin.runtimes.user_spelling import as_user_spelled

_UNITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
          "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"]
_TENS = {"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
NUMBER_WORDS: dict[str, float] = {**{w: i for i, w in enumerate(_UNITS)}, **_TENS, "hundred": 100,
                                  "thousand": 1000, "million": 1e6, "dozen": 12, "single": 1, "once": 1, "twice": 2,
                                  "double": 2, "triple": 3, "half": 0.5, "pair": 2, "couple": 2}
# how often a year: "compounded quarterly" is compounds_per_year = 4
RATE_WORDS: dict[str, float] = {"daily": 365, "weekly": 52, "biweekly": 26, "fortnightly": 26, "monthly": 12,
                                "quarterly": 4, "semi annually": 2, "biannually": 2, "twice a year": 2,
                                "annually": 1, "yearly": 1}
_NUMBER = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?(%?)")
_WORD = re.compile(r"[^\W_]+")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/\-]*")
_STOPWORDS = frozenset({"a", "an", "the", "of", "and", "or", "in", "on", "at", "to", "for", "with", "by"})
# words of a boolean's name that say nothing of what it switches ("is_public", "include_hourly", "use_cache")
_NAME_FILLERS = _STOPWORDS | {"is", "has", "use", "enable", "enabled", "allow", "include", "only", "should", "do",
                              "show", "get", "set", "flag"}


def _normalize(text: str) -> str:
    return re.sub(r"[\s_\-]+", " ", text.lower()).strip()


def _stem(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") else word


@dataclass(frozen=True, slots=True)
class Evidence:
    """What a conversation mentions: its text, words and numbers, read once per request."""

    text: str
    words: frozenset[str]
    numbers: frozenset[float]

    @classmethod
    def of(cls, texts: Iterable[str]) -> Evidence:
        text = _normalize("\n".join(texts))
        words = _WORD.findall(text)
        numbers: set[float] = set()
        for match in _NUMBER.finditer(text):  # magnitudes: the normalised text's hyphens are spaces, minus signs too
            value = float(match.group(0).rstrip("%").replace(",", ""))
            numbers.add(value)
            if match.group(1):  # 20% is 20 to one function and 0.2 to another
                numbers.add(value / 100)
        numbers.update(NUMBER_WORDS[w] for w in words if w in NUMBER_WORDS)
        numbers.update(n for phrase, n in RATE_WORDS.items() if re.search(rf"\b{phrase}\b", text))
        return cls(text, frozenset(_stem(w) for w in words), frozenset(numbers))

    def grounds(self, name: str, value: Any) -> bool:
        """Whether the conversation grounds the argument ``name`` set to ``value``: a boolean by a word of its name
        (camelCase and snake_case split), anything else by its value."""
        if isinstance(value, bool):
            words = re.sub(r"([a-z])([A-Z])", r"\1 \2", name).lower().replace("_", " ").split()
            return any(_stem(w) in self.words for w in words if w not in _NAME_FILLERS)
        return self.mentions(value)

    def mentions(self, value: Any) -> bool:
        """Whether ``value`` (an argument's JSON value) is grounded in the conversation."""
        if isinstance(value, bool):
            return True
        if isinstance(value, (int, float)):
            # the magnitude: "2x² - 7x" writes b = -7 with a space, and a sign the model got wrong is no invention
            return any(math.isclose(abs(value), n, rel_tol=1e-9, abs_tol=1e-12) for n in self.numbers)
        if isinstance(value, str):
            norm = _normalize(value)
            if not norm:
                return False
            if norm in self.text:
                return True
            words = [w for w in _WORD.findall(norm) if w not in _STOPWORDS]
            return bool(words) and all(_stem(w) in self.words for w in words)
        if isinstance(value, Mapping):
            return bool(value) and all(self.mentions(v) for v in value.values())
        if isinstance(value, Sequence):
            return bool(value) and all(self.mentions(v) for v in value)
        return False  # null: says nothing the default does not


def conversation_evidence(messages: Sequence[Message]) -> Evidence:
    """The evidence of a conversation: what the system, the user and the tools said, and the arguments of the
    model's earlier calls as the transcript keeps them (already grounded: an agent refers back to a node id or a
    file name it chose itself). Not the model's own words, where a made-up value would ground itself."""
    texts = [m.content for m in messages if m.role in ("system", "user", "tool") and m.content]
    texts += [json.dumps(c.arguments, ensure_ascii=False) for m in messages if m.role == "assistant"
              for c in m.tool_calls]
    return Evidence.of(texts)


def ground_call(call: ToolCall, parameters: Mapping[str, Any], evidence: Evidence) -> ToolCall:
    """``call`` without its optional arguments that ``evidence`` does not ground, and with the names it respelled
    as the conversation spells them (user_spelling)."""
    properties = parameters.get("properties") or {}
    required = set(parameters.get("required") or ())
    kept = {}
    for name, value in call.arguments.items():
        spec = properties.get(name)
        optional = isinstance(spec, Mapping) and name not in required
        if optional and not ("default" in spec and spec["default"] == value) and not evidence.grounds(name, value) \
                and not (listed_values(spec) and names_value(evidence, value, abbreviations=False)):
            continue  # (a listed value counts in its usual forms: "cycle" grounds "mode": "cycling")
        kept[name] = value
    kept = as_user_spelled(kept, parameters, evidence)  # "Lisboa" for the user's "Lisbon" is "Lisbon"
    if kept == call.arguments:
        return call
    return call.model_copy(update={"arguments": kept})


def invented(call: ToolCall, parameters: Mapping[str, Any], evidence: Evidence) -> list[str]:
    """The required arguments of ``call`` when the model made up every one of them and at least one is a number or
    an id (a short string with a digit: ``12345``, ``E-2291``, ``2023-01-01``); else []. Such a call would act on a
    record nobody named: asked "Who is the current chancellor of Germany?", the default model called
    ``get_employee_info`` with ``"employee_id": "12345"``. Words alone never make a call invented: a model may turn
    "Microsoft" into a ticker or "Tokyo time" into ``Asia/Tokyo``, which no text matches. Nor does a call with free
    text among its required values (three words or more: a question, a message, code), which the model writes
    itself: the research planner's ``add_node("n1", "Which toolkit is FastAPI built on?")``."""
    required = [name for name in parameters.get("required") or () if name in call.arguments]
    values = [call.arguments[name] for name in required]
    if (required and any(map(_concrete, values)) and not any(map(_free_text, values))
            and not any(map(evidence.mentions, values))):
        return required
    return []


def _free_text(value: Any) -> bool:
    return isinstance(value, str) and len(value.split()) >= 3


def _concrete(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    return isinstance(value, str) and len(value) <= 40 and bool(_ID.fullmatch(value)) and any(c.isdigit() for c in value)


def withheld_note(call: ToolCall, names: Sequence[str]) -> str:
    """What the reply says in place of an invented call: what the call needs, so the user can give it."""
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"To call {call.name} I need {listed}, which the conversation does not give."


def ground_calls(calls: list[ToolCall], tools: Sequence[Mapping[str, Any]], evidence: Evidence, *,
                 withhold: bool = True) -> tuple[list[ToolCall], list[str]]:
    """(the calls, each grounded against its tool's schema (``tools`` in OpenAI's shape), the notes of the calls
    withheld as invented; none with ``withhold`` False: tool_choice required or named promises a call). A call to a
    tool not offered is returned as it is."""
    schemas = {}
    for tool in tools:
        fn = tool.get("function", tool)
        schemas[fn.get("name")] = fn.get("parameters") or {}
    kept, notes = [], []
    for call in calls:
        if call.name not in schemas:
            kept.append(call)
        elif withhold and (names := invented(call, schemas[call.name], evidence)):
            notes.append(withheld_note(call, names))
        elif withhold and (guessed := guessed_choices(call.arguments, schemas[call.name], evidence)):
            notes.append(guessed_note(call.name, call.arguments, guessed))
        else:
            kept.append(ground_call(call, schemas[call.name], evidence))
    return kept, notes
