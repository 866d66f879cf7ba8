"""Likelihood scoring of multiple-choice datasets: which choice does the model find most probable as a continuation?

Generation mode asks the model to name a letter and parses it; a small model that rambles, or picks a letter by
position, is measured on its format as much as on its knowledge. Likelihood mode asks nothing: for every choice it
reads the log-probability of the choice's text after the question (``ChatModel.score``), and the most probable
choice is the answer. This is how lm-evaluation-harness scores HellaSwag, and MMLU in its cloze form:

- the context is the question without the lettered choices, as the dataset says (``Dataset.likelihood_cloze``):
  ``"Question: <question>\\nAnswer:"`` by default, HellaSwag's text itself (``"<activity>: <context>"``); after the
  dataset's ``likelihood_header`` (MMLU: lm-eval's ``"The following are questions (with answers) about
  <subject>.\\n\\n"``); with ``--shots K``, K solved examples first, each its context and its right choice,
  separated by a blank line. Plain text, never a chat template (lm-eval's default), so a chat model and a base
  model are scored on the same text. A dataset plugin can replace the whole context with a
  ``likelihood_context(item, examples) -> str`` method;
- the continuation is ``" " + choice`` (lm-eval's target delimiter);
- ``acc``: the choice with the highest summed log-probability is right; ``acc_norm``: the highest summed
  log-probability per UTF-8 byte of the choice text (lm-eval divides by ``len(choice)``, the same for ASCII). Ties go
  to the first choice, as ``argmax`` does. ``acc_norm`` removes the bias toward short choices that ``acc`` has.

Every choice's (log-probability, token count) is cached under the model's identity, the exact context and
continuation and ``mode: likelihood``, so an interrupted run resumes and the generation cache is never confused
with it. Requests go to the runtime ``batch_size`` items at a time (all their choices in one ``score`` call); a call
that fails is retried one item at a time, so one item whose prompt does not fit is reported and counted wrong
rather than failing the run.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from hanlin.chat_model import LOGPROB_RUNTIMES, ChatModel
from hanlin.errors import ConfigurationError, ModelError
from hanlin.plugins.evaluators.base import LETTERS, Dataset, EvalItem
from hanlin.plugins.evaluators.cache import PredictionCache
from hanlin.plugins.evaluators.metrics import Score, accuracy, group_scores
from hanlin.plugins.evaluators.results import DatasetResult, Prediction
from hanlin.plugins.evaluators.runner import DatasetRun, EvalSettings, Progress

MODES = ("generation", "likelihood")
CACHE_PARAMS = {"mode": "likelihood"}


@dataclass(frozen=True, slots=True)
class ChoiceScore:
    """One choice as the model scored it: summed log-probability, its token count, and the choice text's bytes."""

    logprob: float
    tokens: int
    nbytes: int


def pick(scores: Sequence[ChoiceScore]) -> tuple[int, int]:
    """(index picked by ``acc``, index picked by ``acc_norm``); the first of equal scores wins."""
    if not scores:
        raise ValueError("no choices to pick from")
    raw = max(range(len(scores)), key=lambda i: (scores[i].logprob, -i))
    norm = max(range(len(scores)), key=lambda i: (scores[i].logprob / max(1, scores[i].nbytes), -i))
    return raw, norm


def likelihood_metrics(golds: Sequence[int], picks: Sequence[tuple[int, int]]) -> dict[str, Score]:
    """``acc`` and ``acc_norm`` with their standard errors, from gold indices and ``pick`` results."""
    return {"acc": accuracy([p[0] == g for g, p in zip(golds, picks, strict=True)]),
            "acc_norm": accuracy([p[1] == g for g, p in zip(golds, picks, strict=True)])}


# ---- what is asked ---------------------------------------------------------------------------------------
def check_likelihood(dataset: Dataset, settings: EvalSettings | None = None) -> None:
    """Refuse, before any model loads, what likelihood scoring cannot do."""
    from hanlin.plugins.evaluators.circular import is_circular

    if dataset.kind != "choice":
        raise ConfigurationError(
            f"dataset '{dataset.name}' has no answer choices (kind {dataset.kind!r}), so it cannot be scored by "
            "likelihood; run it with --mode generation (the default), and the multiple-choice datasets (mmlu, "
            "hellaswag, truthfulqa_mc1, a .jsonl with choices) with --mode likelihood in a separate command")
    if is_circular(dataset):
        raise ConfigurationError(
            f"--circular does not apply to --mode likelihood ('{dataset.name}'): likelihood scoring never shows the "
            "choice letters, so the order of the choices cannot change its answer; drop one of the two")
    if settings is not None and settings.samples > 1:
        raise ConfigurationError(f"--samples {settings.samples} applies to generation; likelihood scoring is "
                                 "deterministic, one score per choice: drop --samples")


def continuation(choice: str) -> str:
    return " " + choice.strip()


def likelihood_context(dataset: Dataset, item: EvalItem, examples: Sequence[EvalItem]) -> str:
    """The plain-text context every choice of ``item`` is scored after (see the module docstring)."""
    own = getattr(dataset, "likelihood_context", None)
    if callable(own):
        return own(item, examples)
    solved = [dataset.likelihood_cloze(ex) + continuation(ex.choices[ex.gold_index]) for ex in examples]
    return dataset.likelihood_header(item) + "\n\n".join([*solved, dataset.likelihood_cloze(item)])


# ---- the run ---------------------------------------------------------------------------------------------
class _Scoring(DatasetRun):
    """Likelihood: contexts, per-choice cache keys, and what the model was asked."""

    def __init__(self, model: ChatModel, dataset: Dataset, settings: EvalSettings, cache: PredictionCache | None,
                 progress: Progress | None) -> None:
        super().__init__(model, dataset, settings, cache, progress)
        self.contexts = {i.id: likelihood_context(dataset, i, dataset.fewshot_examples(i, self.shots))
                         for i in self.items}
        self.requests = self.done = self.from_cache = 0  # requests: continuations sent to the model

    def key(self, item: EvalItem, choice: str) -> str:
        prompt = {"context": self.contexts[item.id], "continuation": continuation(choice)}
        return PredictionCache.key(self.identity, prompt, CACHE_PARAMS)

    def cached(self, item: EvalItem) -> list[tuple[float, int]] | None:
        if self.cache is None:
            return None
        records = [self.cache.get(self.key(item, c)) for c in item.choices]
        if any(r is None for r in records):
            return None
        return [(r["logprob"], r["tokens"]) for r in records]  # type: ignore[index]

    def ask(self, items: list[EvalItem]) -> list[list[tuple[float, int]]]:
        """One ``score`` call for every choice of ``items``; each result is cached as soon as it lands."""
        requests = [(self.contexts[i.id], continuation(c)) for i in items for c in i.choices]
        self.requests += len(requests)
        values = self.model.score(requests)
        out, at = [], 0
        for item in items:
            per_choice = [(sum(v), len(v)) for v in values[at : at + len(item.choices)]]
            at += len(item.choices)
            if self.cache is not None:
                for choice, (logprob, tokens) in zip(item.choices, per_choice, strict=True):
                    self.cache.put(self.key(item, choice), {"logprob": logprob, "tokens": tokens})
            out.append(per_choice)
        return out

    def tick(self, n: int, cached: bool) -> None:
        self.done += n
        self.from_cache += n if cached else 0
        if self.progress is not None:
            self.progress(self.dataset.name, self.done, len(self.items), self.from_cache)


def _prediction(item: EvalItem, scored: list[tuple[float, int]], cached: bool) -> tuple[Prediction, tuple[int, int]]:
    scores = [ChoiceScore(lp, n, len(c.strip().encode("utf-8")))
              for (lp, n), c in zip(scored, item.choices, strict=True)]
    raw, norm = pick(scores)
    output = "logprob (tokens, bytes) per choice: " + ", ".join(
        f"{LETTERS[i]} {s.logprob:.4f} ({s.tokens}, {s.nbytes})" for i, s in enumerate(scores))
    return Prediction(item.id, 0, item.group, item.answer, output, LETTERS[raw], raw == item.gold_index,
                      f"acc picks {LETTERS[raw]}, acc_norm picks {LETTERS[norm]}", cached), (raw, norm)


def evaluate_likelihood(model: ChatModel, dataset: Dataset, settings: EvalSettings = EvalSettings(mode="likelihood"),
                        cache: PredictionCache | None = None, progress: Progress | None = None) -> DatasetResult:
    """Score every choice of every selected item; ``acc`` and ``acc_norm`` with standard errors."""
    start = time.perf_counter()
    check_likelihood(dataset, settings)
    if not model.capabilities.logprobs:
        raise ConfigurationError(
            f"model '{model.name}' ({type(model).__name__}) cannot score log-probabilities, which --mode likelihood "
            f"needs; load it on the {LOGPROB_RUNTIMES} runtime (--runtime transformers, say) or use --mode generation")
    run = _Scoring(model, dataset, settings, cache, progress)
    notes = []
    if settings.shots and not dataset.supports_fewshot:
        notes.append(f"{dataset.name} is zero-shot only; --shots {settings.shots} was not applied")
    if progress is not None:
        progress(dataset.name, 0, len(run.items), 0)
    results: dict[str, tuple[list[tuple[float, int]], bool]] = {}
    errors: dict[str, str] = {}
    todo = []
    for item in run.items:
        if (hit := run.cached(item)) is not None:
            results[item.id] = (hit, True)
        else:
            todo.append(item)
    if results:
        run.tick(len(results), True)
    for s in range(0, len(todo), settings.batch_size):
        chunk = todo[s : s + settings.batch_size]
        try:
            batches = [(chunk, run.ask(chunk))]
        except ModelError:  # find the item that failed: the others still count
            batches = []
            for item in chunk:
                try:
                    batches.append(([item], run.ask([item])))
                except ModelError as exc:
                    errors[item.id] = f"{type(exc).__name__}: {exc}"
                    run.tick(1, False)
        for items, scored in batches:
            for item, per_choice in zip(items, scored, strict=True):
                results[item.id] = (per_choice, False)
            run.tick(len(items), False)
    predictions, golds, picks = [], [], []
    for item in run.items:
        if item.id in errors:
            predictions.append(Prediction(item.id, 0, item.group, item.answer, "", None, False, "model error",
                                          error=errors[item.id]))
            picks.append((-1, -1))
        else:
            prediction, chosen = _prediction(item, *results[item.id])
            predictions.append(prediction)
            picks.append(chosen)
        golds.append(item.gold_index)
    return DatasetResult(
        dataset=dataset.name, kind=dataset.kind, model=model.name, metrics=likelihood_metrics(golds, picks),
        groups=group_scores([(i.group, i.id, p[0] == g) for i, g, p in zip(run.items, golds, picks, strict=True)]),
        predictions=predictions,
        prompts=[{"id": i.id, "prompt": {"text": run.contexts[i.id]},
                  "continuations": [continuation(c) for c in i.choices], "params": dict(CACHE_PARAMS)}
                 for i in run.items],
        shots=run.shots, model_calls=run.requests, cached=sum(p.cached for p in predictions),
        elapsed_s=time.perf_counter() - start, info={**dataset.describe(), "mode": "likelihood", "group_metric": "acc"},
        notes=notes,
    )


