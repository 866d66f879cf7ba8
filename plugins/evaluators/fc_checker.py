"""The function-calling judge: the calls a model made, checked against the allowed answers, structure by structure.

Ground truth is a list of expected calls, each ``{"fn_name": {"arg": [allowed values...]}}``; ``""`` among an
argument's allowed values means it may be absent. A reply is right when:

- it makes exactly as many calls as there are expected ones (none at all for an irrelevance item);
- the calls can be paired one to one with the expected ones (order does not matter: a bipartite matching), each
  pair having the same function name, every required argument present (the schema's ``required`` and every expected
  argument without ``""``), no argument the expected call does not use, and every value among the allowed ones;
- values compare by type: numbers by value (``2 == 2.0``; a bool is never a number), strings after dropping case,
  spaces and punctuation, lists element by element in order, dicts recursively (a nested dict's allowed form is a
  mapping of its keys to allowed values, like the arguments themselves).

Every failure says why, in words a dataset author can act on. Pure Python, no dependencies: the loader uses
``gold_problem`` to check that each allowed value fits the declared JSON-schema type.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ABSENT = ""  # among an argument's allowed values: the argument may be left out
Call = tuple[str, Mapping[str, Any]]  # (function name, arguments) as the model made it


@dataclass(frozen=True, slots=True)
class Verdict:
    correct: bool
    reason: str = ""


# ---- values -----------------------------------------------------------------------------------------------------
def normalize_string(text: str) -> str:
    """Case, spaces and punctuation dropped: "New York, NY" and "new york ny" compare equal."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return "".join(ch for ch in folded if ch.isalnum())


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def value_problem(value: Any, gold: Any) -> str | None:
    """Why ``value`` is not ``gold`` (None when it is)."""
    if isinstance(gold, bool):
        return None if isinstance(value, bool) and value == gold else f"{_short(value)} is not {gold!r}"
    if _is_number(gold):
        if not _is_number(value):
            return f"{_short(value)} is not a number"
        return None if math.isclose(value, gold, rel_tol=1e-9, abs_tol=1e-12) else f"{value!r} != {gold!r}"
    if isinstance(gold, str):
        if not isinstance(value, str):
            return f"{_short(value)} is not a string"
        return None if normalize_string(value) == normalize_string(gold) else f"{_short(value)} != {_short(gold)}"
    if isinstance(gold, list):
        if not isinstance(value, list):
            return f"{_short(value)} is not a list"
        if len(value) != len(gold):
            return f"a list of {len(value)} items where {len(gold)} are expected"
        for i, (v, g) in enumerate(zip(value, gold)):
            if (problem := value_problem(v, g)) is not None:
                return f"item {i}: {problem}"
        return None
    if isinstance(gold, dict):
        if not isinstance(value, dict):
            return f"{_short(value)} is not an object"
        return arguments_problem(value, gold, required=())
    if gold is None:
        return None if value is None else f"{_short(value)} is not null"
    return f"unsupported expected value {_short(gold)}"


def allowed_problem(value: Any, allowed: Sequence[Any]) -> str | None:
    """None when ``value`` equals one of the allowed values (``""`` counts only for an empty string)."""
    candidates = [a for a in allowed if a != ABSENT] or list(allowed)
    problems = [value_problem(value, a) for a in candidates]
    if any(p is None for p in problems):
        return None
    shown = [a for a in allowed if a != ABSENT]
    if len(candidates) == 1 and not isinstance(candidates[0], (str, bool, int, float)):
        return problems[0]  # a list or dict: say which part differs
    return f"{_short(value)} not in {_short(shown, 120)}"


def arguments_problem(arguments: Mapping[str, Any], expected: Mapping[str, Sequence[Any]],
                      required: Sequence[str]) -> str | None:
    """Why these arguments are not an allowed form of ``expected`` (arg -> allowed values), or None."""
    for name in required:
        if name not in arguments:
            return f"missing required argument '{name}'"
    for name, allowed in expected.items():
        if name not in arguments and ABSENT not in allowed:
            return f"missing required argument '{name}'"
    for name in arguments:
        if name not in expected:
            return f"unexpected argument '{name}'"
    for name, value in arguments.items():
        if (problem := allowed_problem(value, expected[name])) is not None:
            return f"wrong value for '{name}': {problem}"
    return None


# ---- calls ------------------------------------------------------------------------------------------------------
def function_index(functions: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """Offered tool specs by function name: {name: the function's JSON-schema ``parameters``}."""
    out = {}
    for spec in functions:
        fn = spec.get("function", spec)
        out[fn["name"]] = fn.get("parameters") or {}
    return out


def call_problem(call: Call, expected: Mapping[str, Mapping[str, Sequence[Any]]],
                 functions: Mapping[str, Mapping[str, Any]]) -> str | None:
    """Why ``call`` does not match one expected call ``{fn_name: {arg: allowed}}`` (None when it does)."""
    (gold_name, gold_args), = expected.items()
    name, arguments = call
    if name != gold_name:
        return f"called '{name}' where '{gold_name}' is expected"
    params = functions.get(name, {})
    properties = params.get("properties") or {}
    unknown = [a for a in arguments if properties and a not in properties]
    if unknown:
        return f"unknown argument '{unknown[0]}' (not in {name}'s parameters)"
    problem = arguments_problem(arguments, gold_args, required=params.get("required") or ())
    return None if problem is None else f"{name}: {problem}"


def _matching(ok: list[list[bool]]) -> list[int]:
    """A maximum bipartite matching (Kuhn's augmenting paths): match[j] = the call paired with expected j, or -1."""
    n_calls = len(ok)
    n_gold = len(ok[0]) if ok else 0
    match = [-1] * n_gold

    def augment(i: int, seen: list[bool]) -> bool:
        for j in range(n_gold):
            if ok[i][j] and not seen[j]:
                seen[j] = True
                if match[j] == -1 or augment(match[j], seen):
                    match[j] = i
                    return True
        return False

    for i in range(n_calls):
        augment(i, [False] * n_gold)
    return match


def check_calls(calls: Sequence[Call], ground_truth: Sequence[Mapping[str, Mapping[str, Sequence[Any]]]],
                functions: Sequence[Mapping[str, Any]]) -> Verdict:
    """Judge all the calls of one reply against the item's expected calls."""
    index = function_index(functions)
    if not ground_truth:
        if not calls:
            return Verdict(True)
        names = ", ".join(name for name, _ in calls)
        return Verdict(False, f"no offered function fits, yet {len(calls)} call(s) were made: {names}")
    if not calls:
        return Verdict(False, f"no call made; expected {len(ground_truth)} call(s) to "
                              f"{', '.join(next(iter(g)) for g in ground_truth)}")
    if len(calls) != len(ground_truth):
        return Verdict(False, f"expected {len(ground_truth)} call(s), got {len(calls)}: "
                              f"{', '.join(name for name, _ in calls)}")
    problems = [[call_problem(call, gold, index) for gold in ground_truth] for call in calls]
    match = _matching([[p is None for p in row] for row in problems])
    missing = [j for j, i in enumerate(match) if i == -1]
    if not missing:
        return Verdict(True)
    j = missing[0]
    used = set(match)
    # Explain with the unpaired call to the same function if there is one, else any unpaired call.
    spare = [i for i in range(len(calls)) if i not in used]
    same = [i for i in spare if calls[i][0] == next(iter(ground_truth[j]))]
    i = (same or spare)[0]
    reason = problems[i][j] or "no call matches"
    prefix = f"call {j + 1} of {len(ground_truth)}: " if len(ground_truth) > 1 else ""
    return Verdict(False, prefix + reason)


# ---- JSON-schema types (for validating datasets) ----------------------------------------------------------------
_TYPES = {"string": lambda v: isinstance(v, str), "integer": lambda v: _is_number(v) and float(v).is_integer(),
          "number": _is_number, "boolean": lambda v: isinstance(v, bool), "array": lambda v: isinstance(v, list),
          "object": lambda v: isinstance(v, dict), "null": lambda v: v is None}


def allowed_form_problem(allowed: Any, where: str) -> str | None:
    """An argument's allowed values must be a non-empty list (``[value, ...]``, ``""`` for may-be-absent)."""
    if not isinstance(allowed, list) or not allowed:
        return f"{where}: the allowed values must be a non-empty list, got {_short(allowed)}"
    return None


def gold_problem(gold: Any, schema: Mapping[str, Any], where: str = "value") -> str | None:
    """Why an expected value does not fit its parameter's JSON schema (type, enum, array items, object properties).
    A dict in the ground truth is in allowed form (key -> allowed values), so its allowed values are checked."""
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else list(kinds)
        unknown = [k for k in kinds if k not in _TYPES]
        if unknown:
            return f"{where}: unknown JSON-schema type {unknown[0]!r}"
        if not any(_TYPES[k](gold) for k in kinds):
            return f"{where}: {_short(gold)} is not of type {'/'.join(kinds)}"
    enum = schema.get("enum")
    if isinstance(enum, list) and not any(gold == e and isinstance(gold, bool) == isinstance(e, bool) for e in enum):
        return f"{where}: {_short(gold)} is not one of the enum {enum}"
    if isinstance(gold, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(gold):
            if (problem := gold_problem(item, schema["items"], f"{where}[{i}]")) is not None:
                return problem
    if isinstance(gold, dict):
        properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        for key in schema.get("required") or ():
            if key not in gold or ABSENT in (gold[key] if isinstance(gold[key], list) else ()):
                return f"{where}: the required key '{key}' must be expected (without \"\")"
        for key, allowed in gold.items():
            inner = f"{where}.{key}"
            if (problem := allowed_form_problem(allowed, inner)) is not None:
                return problem
            sub = properties.get(key)
            if sub is None:
                if properties:
                    return f"{inner}: not among the object's properties {sorted(properties)}"
                continue
            for value in allowed:
                if value != ABSENT and (problem := gold_problem(value, sub, inner)) is not None:
                    return problem
    return None
