"""A user's own dataset: a JSONL file, described by a small config (field names, prompt template, few-shot source).

The shortest form is the file itself, ``--dataset my.jsonl``, with rows like
``{"question": "...", "choices": ["...", "..."], "answer": "B"}``, but any field names work through a JSON config
(``--dataset my_eval.json``)::

    {"path": "questions.jsonl", "name": "capitals",
     "question_field": "q", "choices_field": "options", "answer_field": "gold",
     "prompt_template": "Country: {country}\\n{q}", "fewshot_path": "dev.jsonl"}

Paths are relative to the config file. The answer of a multiple-choice row may be a letter, a 0-based index or
the text of one choice; without choices it is a number (compared numerically) or text (compared after
normalisation), chosen from the rows unless ``answer_type`` says. Every row is checked on load and every bad one
is reported with its line number, all at once, so one pass fixes the file.
"""

from __future__ import annotations

import json
import re
import string
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hanlin.errors import ConfigurationError
from hanlin.plugins.evaluators.base import LETTERS, Dataset, DatasetError, EvalItem, Kind, read_jsonl, validation_problem
from hanlin.plugins.evaluators.postprocess import (
    extract_choice,
    extract_number,
    extract_text,
    normalize_number,
    normalize_text,
    numbers_equal,
)

INSTRUCTIONS = {
    "choice": "Answer with the letter of the correct option.",
    "number": "End your reply with the final answer as a number on its own line, written as '#### <number>'.",
    "text": "Reply briefly, ending with 'Answer: ' followed by the answer.",
}


class UserDatasetConfig(BaseModel):
    """How to read a user's JSONL file. Only ``path`` is required."""

    model_config = ConfigDict(extra="forbid")

    path: Path
    name: str | None = None  # default: the file's stem
    question_field: str = "question"
    choices_field: str | None = "choices"  # a list of strings; rows that have it make the dataset multiple choice
    answer_field: str = "answer"
    id_field: str | None = None  # default: the line number
    reference_field: str | None = None  # a worked answer shown when the row is a few-shot example
    answer_type: Literal["auto", "choice", "number", "text"] = "auto"
    prompt_template: str = "{question}"  # str.format over the row's fields; {question} is question_field's value
    instruction: str | None = None  # default: one per answer type (INSTRUCTIONS)
    fewshot_path: Path | None = None  # a dev split with the same fields; default: the dataset's own rows
    max_tokens: int | None = Field(default=None, gt=0)


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    return isinstance(value, str) and re.fullmatch(r"\s*-?\$?\d[\d,]*(\.\d+)?\s*", value) is not None


class UserDataset(Dataset):
    """Rows from a user's file, judged by the answer type: letters, numbers or normalised text."""

    def __init__(self, config: UserDatasetConfig) -> None:
        super().__init__()
        self.config = config
        self.name = config.name or config.path.stem
        self.description = f"user dataset {config.path}"
        self.source = str(config.path)
        self.fewshot_source = (f"the dev file {config.fewshot_path}" if config.fewshot_path
                               else "the dataset's own rows (never the row being asked)")
        self._kind: Kind = "text" if config.answer_type == "auto" else config.answer_type  # settled by load()
        if config.answer_type == "choice" and not config.choices_field:
            raise ConfigurationError(f"{config.path}: answer_type 'choice' needs choices_field (the list of options)")
        fields = [f for _, f, _, _ in string.Formatter().parse(config.prompt_template) if f is not None]
        if any(not f.isidentifier() for f in fields):
            raise ConfigurationError(f"prompt_template {config.prompt_template!r} may only use {{field}} placeholders")
        self._fields = fields
        self._pool: list[EvalItem] | None = None

    @property  # type: ignore[override]
    def kind(self) -> Kind:
        """Decided from the rows (choices present? all answers numbers?), so reading it reads the file."""
        self.items()
        return self._kind

    # ---- loading -------------------------------------------------------------------------------------------
    def load(self) -> list[EvalItem]:
        return self._read(self.config.path, decide_kind=True)

    def fewshot_pool(self) -> list[EvalItem]:
        if self.config.fewshot_path is None:
            return self.items()
        if self._pool is None:
            self._pool = self._read(self.config.fewshot_path, decide_kind=False)
        return self._pool

    def _read(self, path: Path, decide_kind: bool) -> list[EvalItem]:
        problems: list[tuple[int, str]] = []
        try:
            with open(path, encoding="utf-8") as f:
                rows = list(read_jsonl(f, str(path), problems))
        except OSError as exc:
            raise ConfigurationError(f"cannot read the dataset file {str(path)!r}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise ConfigurationError(f"the dataset file {str(path)!r} is not UTF-8 text ({exc.reason})") from None
        if not rows and not problems:
            raise ConfigurationError(f"the dataset file {str(path)!r} has no rows")
        if decide_kind:
            self._decide_kind([row for _, row in rows])
        items = []
        for number, row in rows:
            try:
                items.append(self._item(number, row))
            except ValueError as exc:
                problems.append((number, str(exc)))
        if problems:
            raise DatasetError(str(path), sorted(problems))
        return items

    def _decide_kind(self, rows: list[dict[str, Any]]) -> None:
        """Multiple choice when rows carry the choices field; else numbers when every answer is one; else text."""
        c = self.config
        has_choices = bool(c.choices_field) and any(c.choices_field in row for row in rows)
        if c.answer_type == "auto":
            if has_choices:
                self._kind = "choice"
            else:
                self._kind = "number" if all(_is_number(row.get(c.answer_field)) for row in rows) else "text"
        elif c.answer_type == "choice" and not has_choices:
            raise ConfigurationError(f"{c.path}: answer_type is 'choice' but no row has the field '{c.choices_field}'")
        self.max_tokens = c.max_tokens or (64 if self._kind == "choice" else Dataset.max_tokens)

    def _item(self, number: int, row: dict[str, Any]) -> EvalItem:
        c = self.config
        question = row.get(c.question_field)
        if "question" in self._fields and (not isinstance(question, str) or not question.strip()):
            raise ValueError(f"field '{c.question_field}' must be a non-empty string, got {question!r}")
        if c.answer_field not in row:
            raise ValueError(f"no '{c.answer_field}' field (the answer); fields here: {sorted(row)}")
        values = {**row, "question": question}
        missing = [f for f in self._fields if f not in values]
        if missing:
            raise ValueError(f"prompt_template uses {{{missing[0]}}} but this row has no field '{missing[0]}'")
        text = c.prompt_template.format_map(values)
        if not text.strip():
            raise ValueError("the prompt_template renders an empty question for this row")
        choices: tuple[str, ...] = ()
        if self._kind == "choice":
            raw = row.get(c.choices_field)
            if not isinstance(raw, list) or not 2 <= len(raw) <= len(LETTERS) or not all(
                    isinstance(x, str) and x.strip() for x in raw):
                raise ValueError(f"field '{c.choices_field}' must be a list of 2 to 26 non-empty strings, got {raw!r}")
            choices = tuple(raw)
        ident = row.get(c.id_field) if c.id_field else f"{self.name}/{number}"
        if not isinstance(ident, (str, int)) or isinstance(ident, bool):
            raise ValueError(f"field '{c.id_field}' (the id) must be a string or an integer, got {ident!r}")
        reference = row.get(c.reference_field, "") if c.reference_field else ""
        if not isinstance(reference, str):
            raise ValueError(f"field '{c.reference_field}' must be a string, got {reference!r}")
        return EvalItem(id=str(ident), question=text, answer=self._answer(row[c.answer_field], choices),
                        choices=choices, reference=reference, line=number)

    def _answer(self, raw: Any, choices: tuple[str, ...]) -> str:
        field = self.config.answer_field
        if self._kind == "choice":
            if isinstance(raw, int) and not isinstance(raw, bool):
                if not 0 <= raw < len(choices):
                    raise ValueError(f"'{field}' index {raw} is outside the {len(choices)} choices (0-based)")
                return LETTERS[raw]
            if isinstance(raw, str) and len(raw.strip()) == 1 and raw.strip().upper() in LETTERS[: len(choices)]:
                return raw.strip().upper()
            if isinstance(raw, str) and raw in choices:
                return LETTERS[choices.index(raw)]
            raise ValueError(f"'{field}' must be a letter (A-{LETTERS[len(choices) - 1]}), a 0-based index or the "
                             f"text of one choice, got {raw!r}")
        if self._kind == "number":
            value = normalize_number(str(raw)) if _is_number(raw) else None
            if value is None:
                raise ValueError(f"'{field}' must be a number, got {raw!r}")
            return value
        if not isinstance(raw, (str, int, float)) or isinstance(raw, bool) or not str(raw).strip():
            raise ValueError(f"'{field}' must be a non-empty string, got {raw!r}")
        return str(raw).strip()

    # ---- asking and judging --------------------------------------------------------------------------------
    def instruction_for(self, item: EvalItem) -> str:
        return self.config.instruction if self.config.instruction is not None else INSTRUCTIONS[self.kind]

    def render_answer(self, item: EvalItem, chat: bool) -> str:
        if item.reference:
            return item.reference
        if self.kind == "number":
            return f"#### {item.answer}"
        if self.kind == "text":
            return f"Answer: {item.answer}"
        return super().render_answer(item, chat)

    def extract(self, output: str, item: EvalItem) -> str | None:
        if self.kind == "choice":
            return extract_choice(output, item.choices)
        if self.kind == "number":
            return extract_number(output)
        return extract_text(output)

    def matches(self, extracted: str, item: EvalItem) -> bool:
        if self.kind == "number":
            return numbers_equal(extracted, item.answer)
        if self.kind == "text":
            return normalize_text(extracted) == normalize_text(item.answer)
        return extracted == item.answer


def load_user_dataset(path: str | Path, **overrides: Any) -> Dataset:
    """A ``.jsonl`` file read with the default field names, or a ``.json`` config naming the file and fields. A
    ``.jsonl`` whose rows have ``functions`` and ``ground_truth`` is a function-calling set (``function_calling.py``)."""
    path = Path(path).expanduser()
    if path.suffix == ".jsonl" and not overrides:
        from hanlin.plugins.evaluators.function_calling import FunctionCallingDataset, looks_like_function_calling

        if looks_like_function_calling(path):
            return FunctionCallingDataset(path)
    if path.suffix == ".json":
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigurationError(f"cannot read the dataset config {str(path)!r}: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"the dataset config {str(path)!r} is not valid JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigurationError(f"the dataset config {str(path)!r} must be a JSON object")
        raw = {**raw, **overrides}
        for key in ("path", "fewshot_path"):
            if isinstance(raw.get(key), str):
                raw[key] = str(path.parent / raw[key])
    else:
        raw = {"path": str(path), **overrides}
    try:
        config = UserDatasetConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigurationError(f"dataset config {str(path)!r}: {validation_problem(exc)}") from None
    if not config.path.is_file():
        raise ConfigurationError(f"the dataset file {str(config.path)!r} does not exist")
    return UserDataset(config)
