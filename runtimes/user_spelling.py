"""A name the model respelled goes back to the spelling the user wrote.

Asked for "a hotel in Lisbon", the default model called ``find_hotels`` for ``"Lisboa"``: the city's own name, one
letter from the user's. A function that looks the value up may know one spelling and not the other, and the user's
is the one they meant, so a word of a short string argument that the conversation does not contain, but that is one
edit (a letter changed, added, dropped or two swapped) from exactly one word it does contain, becomes that word. Only
words of five letters or more that share their first two letters: shorter ones are one edit from too much. A value
the schema lists (an ``enum``) is never changed: there the schema's spelling is the one that works.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from hanlin.runtimes.named_choices import listed_values

if TYPE_CHECKING:
    from hanlin.runtimes.argument_grounding import Evidence

_WORD = re.compile(r"[^\W\d_]+")
_MIN_LETTERS = 5
_MAX_WORDS = 3  # longer strings are text the model writes itself (a message, a query), not a name


def as_user_spelled(arguments: Mapping[str, Any], parameters: Mapping[str, Any], evidence: Evidence,
                    ) -> dict[str, Any]:
    """``arguments`` with each respelled word of a short string value written as the conversation writes it."""
    properties = parameters.get("properties") or {}
    words = {w for w in _WORD.findall(evidence.text) if len(w) >= _MIN_LETTERS}
    out = dict(arguments)
    for name, value in arguments.items():
        if listed_values(properties.get(name)) is not None:
            continue
        if isinstance(value, str):
            out[name] = _respelled(value, words, evidence)
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            out[name] = [_respelled(v, words, evidence) for v in value]
    return out


def _respelled(value: str, words: set[str], evidence: Evidence) -> str:
    if len(value.split()) > _MAX_WORDS or evidence.mentions(value):
        return value

    def fix(match: re.Match[str]) -> str:
        word = match.group(0)
        low = word.lower()
        if len(low) < _MIN_LETTERS or low in words:
            return word
        near = [w for w in words if w[:2] == low[:2] and one_edit(low, w)]
        if len(near) != 1:
            return word
        return near[0].capitalize() if word[0].isupper() else near[0]

    return _WORD.sub(fix, value)


def one_edit(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` differ by one letter changed, added or dropped, or two neighbours swapped."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1
                                  and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])
    short, long = sorted((a, b), key=len)
    return any(long[:i] + long[i + 1:] == short for i in range(len(long)))
