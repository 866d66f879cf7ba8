"""A required choice the conversation never made: the call is withheld and the reply asks for it.

A required argument limited to listed values (a JSON-schema ``enum``) is a choice the function cannot default. When
the request names none of the values, the model still has to write one, and the call grammar makes sure it writes a
valid one, so the call looks right and is not: asked to "Convert 3 hours into minutes" with only length and weight
converters offered, the default model called ``convert_length`` from ``millimeter`` to ``meter``; asked to "Fire
employee E-2291 effective today", it filed ``request_time_off`` as ``vacation``. The usual advice to a function-calling
model is the same rule: do not guess the values to plug in, ask. So such a call is withheld with a note that lists
the choices (``argument_grounding.ground_calls``). Where the request names some of the values, the call grammar offers
only those (``narrowed_tools``).

A value is named when the conversation writes it in any usual form, because a request rarely spells an enum the way
the schema does: ``kilometres`` and ``km`` name ``kilometer``, ``metre`` names ``meter``, ``feet`` names ``foot``,
``standard deviation`` names ``std``, ``swim`` names ``swimming``, ``350°F`` names ``fahrenheit``. The matching is
generous on purpose: a word it wrongly takes as naming a value only lets a call through, as before.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hanlin.runtimes.argument_grounding import Evidence

_WORD = re.compile(r"[^\W\d_]+")
# a unit written as a symbol right after a number ("350°F", "20 C", "5km"): the one place a single letter names a value
_UNIT_SYMBOL = re.compile(r"\d\s*°?\s*([^\W\d_]{1,3})\b")
# short words that abbreviate nothing: without this, "to" would name "ton" and "me" "meter"
_FUNCTION_WORDS = frozenset({"a", "i", "an", "am", "as", "at", "be", "by", "do", "go", "he", "if", "in", "is", "it",
                             "me", "my", "no", "of", "on", "or", "so", "to", "up", "us", "we", "the", "and", "for",
                             "per", "its", "how", "can", "you", "are", "was", "not", "but"})
# unit symbols, and abbreviations that share no letters in order with their word
_ABBREVIATIONS = {"km": "kilometer", "cm": "centimeter", "mm": "millimeter", "kg": "kilogram", "mg": "milligram",
                  "ml": "milliliter", "ft": "foot", "yd": "yard", "mi": "mile", "lb": "pound", "lbs": "pound",
                  "oz": "ounce", "tsp": "teaspoon", "tbsp": "tablespoon", "gal": "gallon", "hr": "hour", "hrs": "hour",
                  "feet": "foot"}


def listed_values(spec: Any) -> list[Any] | None:
    """The values an argument's schema lists (``enum``, or its items' ``enum`` for a list of choices), or None."""
    if not isinstance(spec, Mapping):
        return None
    holder = spec if "enum" in spec else spec.get("items")
    values = holder.get("enum") if isinstance(holder, Mapping) else None
    return values if isinstance(values, list) else None


def guessed_choices(call_arguments: Mapping[str, Any], parameters: Mapping[str, Any], evidence: Evidence,
                    ) -> list[tuple[str, list[Any]]]:
    """(name, choices) of each required argument whose schema lists its values (two or more) and whose value in the
    call is one the conversation never names."""
    properties = parameters.get("properties") or {}
    guessed = []
    for name in parameters.get("required") or ():
        choices = listed_values(properties.get(name))
        if name not in call_arguments or choices is None or len(choices) < 2:
            continue
        value = call_arguments[name]
        values = value if isinstance(value, list) else [value]
        if not values or not all(names_value(evidence, v) for v in values):
            guessed.append((name, choices))
    return guessed


def names_value(evidence: Evidence, value: Any, *, abbreviations: bool = True) -> bool:
    """Whether the conversation names ``value`` (one listed value of a choice) in any of its usual forms; without
    ``abbreviations``, not by a short word whose letters merely occur in order in it (see ``same_word``)."""
    if not isinstance(value, str):
        return evidence.mentions(value)
    if evidence.mentions(value):
        return True
    wanted = [w for w in _WORD.findall(value.lower()) if w not in _FUNCTION_WORDS]
    if not wanted:
        return False
    written = _written_bases(evidence.text)
    return all(any(_same_base(_base(w), t, abbreviations) for t in written) for w in wanted)


@lru_cache(maxsize=16)
def _written_bases(text: str) -> frozenset[str]:
    """The base forms of the conversation's words, once per conversation (every listed value of every tool is
    looked up in them)."""
    words = {w for w in _WORD.findall(text) if len(w) > 1 and w not in _FUNCTION_WORDS}
    words.update(m.group(1) for m in _UNIT_SYMBOL.finditer(text))
    return frozenset(map(_base, words))


def same_word(a: str, b: str, *, abbreviations: bool = True) -> bool:
    """Whether two words are one word in different forms: spelling (metre/meter), plural, a unit symbol (km), a
    prefix of three letters or more once a final e is gone (swim/swimming, cycle/cycling, max/maximum), or, with
    ``abbreviations``, a short word whose letters occur in order in the other (std/standard, avg/average; also
    atm/amsterdam, which is why it can be off)."""
    return _same_base(_base(a), _base(b), abbreviations)


def _same_base(a: str, b: str, abbreviations: bool) -> bool:
    if a == b:
        return True
    short, long = sorted((a, b), key=len)
    if len(short) >= 3 and long.startswith(short):
        return True
    if not abbreviations:
        return False
    # an abbreviation keeps the first letter and few vowels ("once" is a word of its own, not short for "ounce")
    vowels = sum(c in "aeiou" for c in short)
    return len(short) <= 4 and vowels <= 1 and short[0] == long[0] and _in_order(short, long)


def _base(word: str) -> str:
    word = _ABBREVIATIONS.get(word, word)
    if len(word) > 4 and word.endswith("ies"):
        word = word[:-3] + "y"
    elif len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        word = word[:-1]
    if len(word) > 4 and word.endswith("tre"):  # metre, litre, centre
        word = word[:-3] + "ter"
    if len(word) > 4 and word.endswith("e"):  # "cycle" is then a prefix of "cycling", "drive" of "driving"
        word = word[:-1]
    return word


def _in_order(short: str, long: str) -> bool:
    letters = iter(long)
    return all(c in letters for c in short)


def narrowed_tools(tools: list[dict[str, Any]], evidence: Evidence) -> list[dict[str, Any]]:
    """``tools`` with each listed choice cut down to the values the conversation names, where it names some but not
    all, for the call grammar (the prompt still shows every value). Asked to "Convert 2 tablespoons into teaspoons",
    the default model wrote ``convert_volume`` from ``milliliter``: the grammar let it, though the request had named
    both units it needed. A choice the conversation names none of stays whole (the call is then withheld, above),
    and so does one where a value is named only by letters in order (``atm`` in "Amsterdam", ``min`` in "median"):
    there a wrong cut would force a value nobody chose."""
    narrowed = []
    for tool in tools:
        fn = tool.get("function", tool)
        properties = (fn.get("parameters") or {}).get("properties")
        cut = {}
        for name, spec in (properties or {}).items():
            choices = listed_values(spec)
            if choices is None or len(choices) < 2:
                continue
            named = [c for c in choices if names_value(evidence, c)]
            surely = [c for c in choices if names_value(evidence, c, abbreviations=False)]
            if named and named == surely and len(named) < len(choices):
                cut[name] = ({**spec, "enum": named} if "enum" in spec
                             else {**spec, "items": {**spec["items"], "enum": named}})
        if not cut:
            narrowed.append(tool)
            continue
        parameters = {**fn["parameters"], "properties": {**properties, **cut}}
        fn = {**fn, "parameters": parameters}
        narrowed.append({**tool, "function": fn} if "function" in tool else fn)
    return narrowed


def guessed_note(tool: str, call_arguments: Mapping[str, Any], guessed: list[tuple[str, list[Any]]]) -> str:
    """What the reply says in place of the call: which value was a guess, and the choices to pick from."""
    parts = []
    for name, choices in guessed:
        listed = [str(c) for c in choices]
        shown = ", ".join(listed[:-1]) + " or " + listed[-1]
        parts.append(f"{name} {json.dumps(call_arguments[name], ensure_ascii=False)} (one of {shown})")
    return f"Not calling {tool}: the conversation does not name " + "; nor ".join(parts) + "."
