"""Scores with their uncertainty: accuracy with a standard error, and the unbiased pass@k estimator.

A score without its standard error invites reading noise as progress: on 100 questions an accuracy of 0.30 has a
standard error of about 0.046, so 0.30 vs 0.34 says nothing. Every score hanlin reports carries one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Score:
    """A mean over ``n`` items with the standard error of that mean (``stderr`` is nan when n < 2)."""

    value: float
    stderr: float
    n: int

    def as_dict(self) -> dict[str, float | int | None]:
        return {"value": self.value, "stderr": None if math.isnan(self.stderr) else self.stderr, "n": self.n}

    def __str__(self) -> str:
        err = "" if math.isnan(self.stderr) else f" ± {self.stderr:.4f}"
        return f"{self.value:.4f}{err}"


def mean_with_stderr(values: Sequence[float]) -> Score:
    """The mean and its standard error, sample standard deviation (n - 1) over sqrt(n), as lm-evaluation-harness
    reports it. For 0/1 values this is sqrt(p (1 - p) / (n - 1))."""
    n = len(values)
    if n == 0:
        return Score(float("nan"), float("nan"), 0)
    mean = sum(values) / n
    if n < 2:
        return Score(mean, float("nan"), n)
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return Score(mean, math.sqrt(variance / n), n)


def accuracy(correct: Sequence[bool]) -> Score:
    return mean_with_stderr([1.0 if c else 0.0 for c in correct])


def pass_at_k(n: int, c: int, k: int) -> float:
    """The probability that at least one of k samples drawn without replacement from n (c of them correct) passes:
    1 - C(n - c, k) / C(n, k), computed as a product so large n never overflows (Chen et al., 2021)."""
    if not 0 <= c <= n:
        raise ValueError(f"c must be between 0 and n={n}, got {c}")
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and n={n}, got {k}")
    if n - c < k:
        return 1.0
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product


def pass_at_k_score(samples: Sequence[Sequence[bool]], k: int) -> Score:
    """pass@k over problems: the per-problem estimates averaged, with their standard error. Every problem needs at
    least k samples."""
    estimates = []
    for i, results in enumerate(samples):
        if len(results) < k:
            raise ValueError(f"pass@{k} needs at least {k} samples per problem; problem {i} has {len(results)}")
        estimates.append(pass_at_k(len(results), sum(bool(r) for r in results), k))
    return mean_with_stderr(estimates)


def ks_for(n_samples: int) -> list[int]:
    """Which pass@k to report for n samples per problem: 1, 10, 100 where n allows."""
    return [k for k in (1, 10, 100) if k <= n_samples]


# ---- scores of a run's verdicts ------------------------------------------------------------------------------
def clustered_accuracy(verdicts: Sequence[tuple[str, bool]]) -> Score:
    """Accuracy over (item id, correct) verdicts where an item may be answered several times (``--samples``).

    The samples of one item are not independent (the same question is as hard each time), so the standard error
    is taken over items, each scored by the share of its samples that are right: ``n`` is the number of items.
    Treating every sample as its own item would shrink the error by up to sqrt(samples). With one verdict per item
    this is plain ``accuracy``."""
    per_item: dict[str, list[bool]] = {}
    for item, correct in verdicts:
        per_item.setdefault(item, []).append(bool(correct))
    return mean_with_stderr([sum(v) / len(v) for v in per_item.values()])


def group_scores(verdicts: Sequence[tuple[str, str, bool]]) -> dict[str, Score]:
    """Per-group accuracy from (group, item id, correct) verdicts, clustered by item; {} with a single group."""
    by_group: dict[str, list[tuple[str, bool]]] = {}
    for group, item, correct in verdicts:
        by_group.setdefault(group, []).append((item, correct))
    return {g: clustered_accuracy(v) for g, v in sorted(by_group.items())} if len(by_group) > 1 else {}
