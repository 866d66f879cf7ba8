"""CircularEval: ask each multiple-choice question with its choices rotated, and count it only when every rotation is
answered right.

A small model that always answers "A", or that prefers the first or last option, scores well above chance on plain
multiple choice. Asking the same question with the choices in several orders exposes that: the per-variant
accuracies differ (position bias), and the circular score, where a question counts only when all of its variants
are right, falls to what the model actually knows (the MMBench / OpenCompass CircularEval). Two variant sets:

- ``cyclic``: the n cyclic shifts of n choices (variant k shows old choice (j + k) mod n at position j), 4 for 4;
- ``all``: every permutation, in lexicographic order (n! variants; refused above ``MAX_VARIANTS`` per question).

Variant 0 is always the original order, so its prompt (and cached prediction) is the plain run's. Each variant is an
item of its own, with its own id (``<id>@r<k>`` or ``<id>@p<k>``), gold letter, prompt and cache entry, so the
runner asks and caches them like any other item; ``circular_metrics`` then scores them by question.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Literal

from hanlin.errors import ConfigurationError
from hanlin.plugins.evaluators.base import Dataset, EvalItem
from hanlin.plugins.evaluators.metrics import Score, accuracy, mean_with_stderr

Mode = Literal["cyclic", "all"]
MODES: tuple[str, ...] = ("cyclic", "all")
MAX_VARIANTS = 120  # 5 choices, all orders; 6 choices would be 720 model calls per question
SUFFIX = {"cyclic": "@r", "all": "@p"}


def variant_orders(n: int, mode: str) -> list[tuple[int, ...]]:
    """The choice orders (new position -> old index) asked for a question with n choices; the first is the original."""
    if mode not in MODES:
        raise ConfigurationError(f"unknown --circular mode {mode!r}; use one of {', '.join(MODES)}")
    if n < 2:
        raise ConfigurationError(f"CircularEval needs at least 2 choices per question, got {n}")
    if mode == "cyclic":
        return [tuple((j + k) % n for j in range(n)) for k in range(n)]
    if math.factorial(n) > MAX_VARIANTS:
        raise ConfigurationError(f"--circular all would ask {math.factorial(n)} orderings of a question with {n} "
                                 f"choices (at most {MAX_VARIANTS} allowed); use --circular cyclic ({n} variants)")
    return list(itertools.permutations(range(n)))


class _CircularMixin:
    """Placed before the wrapped dataset's own class, so every prompt, extractor and judge stays that dataset's,
    and only the selection (questions -> variants) and few-shot lookup (by the original question) change."""

    base_name: str
    circular_mode: str
    _origin: dict[str, tuple[EvalItem, int]]

    def select(self, limit: int | None) -> list[EvalItem]:
        """``--limit`` counts questions, not variants: 2 questions in cyclic mode with 4 choices ask 8 items."""
        questions = super().select(limit)  # type: ignore[misc]
        variants = []
        for item in questions:
            for k, order in enumerate(variant_orders(len(item.choices), self.circular_mode)):
                variant = item.permuted(order, f"{SUFFIX[self.circular_mode]}{k}")
                self._origin[variant.id] = (item, k)
                variants.append(variant)
        return variants

    def fewshot_examples(self, item: EvalItem, k: int) -> list[EvalItem]:
        original = self._origin.get(item.id, (item, 0))[0]
        return super().fewshot_examples(original, k)  # type: ignore[misc]

    def origin(self, variant_id: str) -> tuple[str, int]:
        """(the question's id, the variant number) of a variant asked by this dataset."""
        item, k = self._origin[variant_id]
        return item.id, k

    def describe(self) -> dict[str, Any]:
        info = super().describe()  # type: ignore[misc]
        info.update(circular=self.circular_mode, base_dataset=self.base_name, group_metric="circular")
        return info


def make_circular(dataset: Dataset, mode: str = "cyclic") -> Dataset:
    """The same dataset asked as CircularEval, named ``<name>@circular`` (``@circular-all`` for every permutation)
    so its scores sit beside a plain run's in one results folder. Only multiple-choice datasets qualify."""
    if mode not in MODES:
        raise ConfigurationError(f"unknown --circular mode {mode!r}; use one of {', '.join(MODES)}")
    if dataset.kind != "choice":
        raise ConfigurationError(f"dataset '{dataset.name}' is not multiple choice (kind {dataset.kind!r}); "
                                 "--circular applies only to datasets with choices (mmlu, hellaswag, truthfulqa_mc1)")
    cls = type(f"Circular{type(dataset).__name__}", (_CircularMixin, type(dataset)), {})
    circular = copy.copy(dataset)  # shares the loaded items; the original object stays as it was
    circular.__class__ = cls
    circular.base_name = dataset.name  # type: ignore[attr-defined]
    circular.circular_mode = mode  # type: ignore[attr-defined]
    circular._origin = {}  # type: ignore[attr-defined]
    circular.name = f"{dataset.name}@circular" + ("" if mode == "cyclic" else "-all")
    return circular


def is_circular(dataset: Dataset) -> bool:
    return isinstance(dataset, _CircularMixin)


def circular_metrics(verdicts: Sequence[tuple[str, int, bool]], variant_label: str = "rot") -> dict[str, Score]:
    """Scores from (question id, variant number, correct) triples, one per variant asked.

    ``circular``: share of questions with every variant right. ``mean``: the average over questions of the share of
    its variants that are right (all variant answers pooled, with a standard error over questions, since the
    variants of one question are not independent). ``<label><k>``: plain accuracy of variant k over the questions
    that have one (``rot0`` is the original order). Every score has its standard error over questions.
    """
    by_question: dict[str, dict[int, bool]] = defaultdict(dict)
    for question, k, correct in verdicts:
        by_question[question][k] = bool(correct)
    if not by_question:
        return {}
    metrics = {
        "circular": accuracy([all(v.values()) for v in by_question.values()]),
        "mean": mean_with_stderr([sum(v.values()) / len(v) for v in by_question.values()]),
    }
    for k in sorted({k for v in by_question.values() for k in v}):
        metrics[f"{variant_label}{k}"] = accuracy([v[k] for v in by_question.values() if k in v])
    return metrics


def rescore(result: Any, dataset: Dataset) -> Any:
    """Replace a runner result's per-variant accuracy with the circular scores (and per-group circular scores).

    Samples beyond the first are not used: a question-variant is one answer here.
    """
    if not is_circular(dataset):
        return result
    label = "rot" if dataset.circular_mode == "cyclic" else "perm"  # type: ignore[attr-defined]
    verdicts, group_of = [], {}
    for p in result.predictions:
        if p.sample != 0:
            continue
        question, k = dataset.origin(p.id)  # type: ignore[attr-defined]
        verdicts.append((question, k, p.correct))
        group_of[question] = p.group
    result.metrics = circular_metrics(verdicts, label)
    groups: dict[str, list[tuple[str, int, bool]]] = defaultdict(list)
    for question, k, correct in verdicts:
        groups[group_of[question]].append((question, k, correct))
    result.groups = ({g: circular_metrics(v, label)["circular"] for g, v in sorted(groups.items())}
                     if len(groups) > 1 else {})
    return result
