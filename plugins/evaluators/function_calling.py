"""Function-calling evaluation: does the model call the right function, with the right arguments, or none at all?

Each item is one user question and the OpenAI-style function specs offered with it. The model is asked once, with
native tool calling (``tools=functions, tool_choice="auto"``), and the calls that come back in
``Completion.tool_calls`` are judged by ``fc_checker`` against the item's ground truth. Five categories:

- ``simple``: one function offered, one call expected;
- ``multiple``: two to four functions offered, one call to the right one;
- ``parallel``: several calls of one function in one turn (any order);
- ``parallel_multiple``: several calls of different functions in one turn (any order);
- ``irrelevance``: no offered function fits; the right answer is no call.

Scores: ``accuracy`` over all items (each item counts once) and per category (the result's groups), each with its
standard error, and ``lost_calls``: the share of items whose reply text holds what looks like a call to an offered
function (``<tool_call>``, ``"name": "<offered>"``, ...) while ``tool_calls`` came back empty, i.e. calls the
runtime's parser lost. Its target is 0; a high value is a parser (or chat-format) bug, not a model weakness.

A row (the shipped file and a user's share the shape)::

    {"id": "simple-001", "category": "simple", "question": "...", "functions": [{"type": "function", "function":
     {"name": ..., "description": ..., "parameters": <JSON schema>}}], "ground_truth": [{"fn": {"arg": [allowed...]}}]}

Each argument maps to its allowed values, ``""`` among them meaning it may be left out; an argument the expected
call does not list counts as unexpected, so list every optional one a model may fill (with ``""``). Rows are checked
on load: every expected function is offered, every required parameter expected, every value fits its schema.

The shipped set (``data/function_calling.jsonl``, written for hanlin) holds 157 items; a user file in the same JSONL
shape is found by ``--dataset my.jsonl`` (rows with ``functions`` and ``ground_truth``). Rows of every category are
interleaved on load, so any ``--limit`` mixes them. Each reply is cached, keyed by the model, the exact messages,
the functions and the generation parameters; judging is never cached, so a corrected ground truth re-scores old
replies (the cache holds the calls as the runtime parsed them: after a parser fix, ``--no-cache`` re-measures).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from hanlin.chat_model import ChatModel, GenerationParams
from hanlin.errors import ConfigurationError, ModelError
from hanlin.messages import Message
from hanlin.plugins.evaluators.base import Dataset, DatasetError, EvalItem, Kind, read_jsonl, validation_problem
from hanlin.plugins.evaluators.fc_checker import ABSENT, allowed_form_problem, check_calls, gold_problem
from hanlin.plugins.evaluators.metrics import accuracy, mean_with_stderr
from hanlin.plugins.evaluators.cache import PredictionCache
from hanlin.plugins.evaluators.identity import model_identity
from hanlin.plugins.evaluators.results import DatasetResult, Prediction
from hanlin.plugins.evaluators.runner import EvalSettings, Progress, chosen_items

CATEGORIES = ("simple", "multiple", "parallel", "parallel_multiple", "irrelevance")
SYSTEM = ("You are a helpful assistant with access to functions. Call a function when one fits the request; "
          "otherwise answer in plain text.")
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$")
CALL_MARKERS = ("<tool_call>", "[tool_calls]", "<|python_tag|>", "<function_call>", "<functioncall>")


def shipped_path() -> Path:
    """The shipped items (package data, so an installed wheel has them too)."""
    return Path(str(resources.files("hanlin.plugins.evaluators") / "data" / "function_calling.jsonl"))


def looks_like_function_calling(path: Path) -> bool:
    """A JSONL file whose first row has ``functions`` and ``ground_truth``: this dataset's shape."""
    try:
        with open(path, encoding="utf-8") as f:
            first = next((line for line in f if line.strip()), "")
        row = json.loads(first)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(row, dict) and "functions" in row and "ground_truth" in row


# ---- rows ---------------------------------------------------------------------------------------------------------
class _Row(BaseModel):
    id: str | int
    category: str = Field(min_length=1)
    question: str = Field(min_length=1)
    functions: list[dict[str, Any]] = Field(min_length=1)
    ground_truth: list[dict[str, Any]]


def _functions_problem(functions: list[dict[str, Any]]) -> str | None:
    names: set[str] = set()
    for i, spec in enumerate(functions):
        fn = spec.get("function")
        where = f"functions[{i}]"
        if spec.get("type") != "function" or not isinstance(fn, dict):
            return f'{where} must be {{"type": "function", "function": {{"name", "description", "parameters"}}}}'
        name = fn.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            return f"{where}: the name must be letters, digits, '_', '.' or '-' (at most 64), got {name!r}"
        if name in names:
            return f"{where}: the function name {name!r} is offered twice"
        names.add(name)
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict) or params.get("type") != "object" or not isinstance(
                params.get("properties", {}), dict):
            return f"{where} ({name}): parameters must be a JSON schema of type 'object' with 'properties'"
        required = params.get("required", [])
        missing = [r for r in required if r not in params.get("properties", {})] if isinstance(required, list) else 0
        if missing != []:
            return f"{where} ({name}): required must list names among its properties, got {required!r}"
    return None


def _ground_truth_problem(row: _Row) -> str | None:
    offered = {spec["function"]["name"]: spec["function"].get("parameters") or {} for spec in row.functions}
    for i, entry in enumerate(row.ground_truth):
        where = f"ground_truth[{i}]"
        if len(entry) != 1 or not isinstance(next(iter(entry.values())), dict):
            return f'{where} must be one {{"function_name": {{"argument": [allowed values]}}}}, got {entry!r}'
        (name, args), = entry.items()
        if name not in offered:
            return f"{where}: {name!r} is not among the offered functions {sorted(offered)}"
        properties = offered[name].get("properties") or {}
        for arg, allowed in args.items():
            if arg not in properties:
                return f"{where}: {name} has no parameter {arg!r} (its parameters: {sorted(properties)})"
            if (problem := allowed_form_problem(allowed, f"{where}.{name}.{arg}")) is not None:
                return problem
            for value in allowed:
                if value != ABSENT and (problem := gold_problem(value, properties[arg], f"{where}.{name}.{arg}")):
                    return problem
        for arg in offered[name].get("required") or ():
            if arg not in args:
                return f"{where}: {name}'s required parameter {arg!r} has no expected value"
            if ABSENT in args[arg]:
                return f"{where}: {name}'s parameter {arg!r} is required, so \"\" (may be absent) is not allowed"
    return _category_problem(row)


def _category_problem(row: _Row) -> str | None:
    """The known categories have a shape; other category names are free (a user's own grouping)."""
    calls = [next(iter(g)) for g in row.ground_truth]
    n, fns = len(calls), len(row.functions)
    rules = {
        "simple": (n == 1 and fns == 1, "one function offered and one call expected"),
        "multiple": (n == 1 and 2 <= fns, "two or more functions offered and one call expected"),
        "parallel": (n >= 2 and len(set(calls)) == 1, "two or more calls of one function"),
        "parallel_multiple": (n >= 2 and len(set(calls)) >= 2, "two or more calls of different functions"),
        "irrelevance": (n == 0, "no call expected (ground_truth [])"),
    }
    if row.category in rules and not rules[row.category][0]:
        return f"category {row.category!r} needs {rules[row.category][1]}; this row expects {n} call(s) to " \
               f"{sorted(set(calls))} with {fns} function(s) offered"
    return None


def interleave(items: list[EvalItem]) -> list[EvalItem]:
    """Round-robin over the categories (in order of first appearance), keeping each category's own order."""
    by_group: dict[str, list[EvalItem]] = defaultdict(list)
    for item in items:
        by_group[item.group].append(item)
    queues = list(by_group.values())
    out = []
    for i in range(max(map(len, queues), default=0)):
        out += [q[i] for q in queues if i < len(q)]
    return out


class FunctionCallingDataset(Dataset):
    """Questions with function specs; the model's native tool calls are judged by ``fc_checker``."""

    kind: Kind = "function_calling"  # type: ignore[assignment]  # run by evaluate_function_calling
    max_tokens = 256
    supports_fewshot = False
    fewshot_source = "none"

    def __init__(self, path: str | Path | None = None, name: str | None = None) -> None:
        super().__init__()
        self.path = Path(path) if path else shipped_path()
        self.name = name or ("function_calling" if path is None else self.path.stem)
        self.description = ("Function calling: simple, multiple, parallel, parallel_multiple and irrelevance items, "
                            "native tool calls judged by an AST-style checker")

    def load(self) -> list[EvalItem]:
        if not self.path.is_file():
            raise ConfigurationError(f"the function-calling data file {self.path} is missing"
                                     + ("; reinstall hanlin" if self.name == "function_calling" else ""))
        self.source = f"hanlin: {self.path.name}" if self.name == "function_calling" else str(self.path)
        problems: list[tuple[int, str]] = []
        items = []
        try:
            with open(self.path, encoding="utf-8") as f:
                rows = list(read_jsonl(f, str(self.path), problems))
        except UnicodeDecodeError as exc:
            raise ConfigurationError(f"the dataset file {str(self.path)!r} is not UTF-8 text ({exc.reason})") from None
        for number, raw in rows:
            try:
                row = _Row.model_validate(raw)
            except ValidationError as exc:
                problems.append((number, validation_problem(exc)))
                continue
            problem = _functions_problem(row.functions) or _ground_truth_problem(row)
            if problem:
                problems.append((number, problem))
                continue
            items.append(EvalItem(id=str(row.id), question=row.question, answer=json.dumps(row.ground_truth),
                                  group=row.category, line=number,
                                  extra={"functions": row.functions, "ground_truth": row.ground_truth}))
        if problems:
            raise DatasetError(str(self.path), sorted(problems))
        if not items:
            raise ConfigurationError(f"the dataset file {str(self.path)!r} has no rows")
        return interleave(items)

    def messages(self, item: EvalItem) -> list[Message]:
        return [Message.system(SYSTEM), Message.user(item.question)]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "show_groups": True, "group_metric": "accuracy"}


# ---- judging ------------------------------------------------------------------------------------------------------
def lost_call(text: str, names: list[str]) -> str | None:
    """What in the reply text looks like a call to an offered function (None if nothing does)."""
    low = text.lower()
    for marker in CALL_MARKERS:
        if marker in low:
            return marker
    for name in names:
        if re.search(r"""["']name["']\s*:\s*["']""" + re.escape(name) + r"""["']""", text) or \
                re.search(r"<function=" + re.escape(name) + r"\b", text):
            return f'"name": "{name}"'
    return None


def judge(record: dict[str, Any], item: EvalItem) -> tuple[bool, str, str | None]:
    """(correct, why not, the lost-call evidence or None) for one cached reply."""
    calls = [(c["name"], c["arguments"]) for c in record["tool_calls"]]
    verdict = check_calls(calls, item.extra["ground_truth"], item.extra["functions"])
    lost = None if calls else lost_call(record["text"], [f["function"]["name"] for f in item.extra["functions"]])
    reason = verdict.reason
    if lost:
        reason = (reason + "; " if reason else "") + f"call lost to parsing: the reply text holds {lost} but no " \
                                                     "tool_calls came back"
    return verdict.correct, reason, lost


# ---- running ------------------------------------------------------------------------------------------------------
def check_model(model: ChatModel, dataset: Dataset) -> None:
    if not model.capabilities.native_tools:
        raise ConfigurationError(
            f"model '{model.name}' ({type(model).__name__}) has no native tool calling, which the '{dataset.name}' "
            "dataset measures; use a model with a tool-calling chat template (e.g. qwen2.5-coder-0.5b-instruct, "
            "tool_call_style 'hermes'), a remote OpenAI-compatible endpoint (--runtime remote), or evaluate tool use "
            "through an agent protocol that works with any model: -d tooluse --protocol react")


def evaluate_function_calling(model: ChatModel, dataset: FunctionCallingDataset,
                              settings: EvalSettings = EvalSettings(), cache: PredictionCache | None = None,
                              progress: Progress | None = None) -> DatasetResult:
    """Ask every selected item once with its functions offered, judge the calls, score overall and per category."""
    check_model(model, dataset)
    items = chosen_items(dataset, settings)
    if not items:
        raise ConfigurationError(f"dataset '{dataset.name}' has no items to evaluate")
    start = time.perf_counter()
    seed = settings.seed if settings.temperature > 0 else None
    params = {"max_tokens": settings.max_tokens or dataset.max_tokens, "temperature": settings.temperature,
              "tool_choice": "auto", **({"seed": seed} if seed is not None else {})}
    identity = model_identity(model)
    prompts = {i.id: {"messages": [m.to_openai() for m in dataset.messages(i)], "tools": i.extra["functions"],
                      "tool_choice": "auto"} for i in items}
    counts = {"calls": 0, "done": 0, "cached": 0}
    lock = threading.Lock()

    def ask(item: EvalItem) -> tuple[dict[str, Any] | None, bool, str | None]:
        prompt = prompts[item.id]
        key = PredictionCache.key(identity, {"function_calling": prompt}, params)
        record = cache.get(key) if cache is not None else None
        cached, error = record is not None, None
        if record is None:
            try:
                done = model.generate(dataset.messages(item), GenerationParams(tools=prompt["tools"], **params))
            except ModelError as exc:
                error = f"{type(exc).__name__}: {exc}"
            else:
                record = {"text": done.text, "finish_reason": done.finish_reason,
                          "tool_calls": [{"name": c.name, "arguments": c.arguments} for c in done.tool_calls]}
                if cache is not None:
                    cache.put(key, record)
        with lock:
            counts["calls"] += not cached
            counts["done"] += 1
            counts["cached"] += cached
            n_done, hits = counts["done"], counts["cached"]
        if progress is not None:
            progress(dataset.name, n_done, len(items), hits)
        return record, cached, error

    if progress is not None:
        progress(dataset.name, 0, len(items), 0)
    with ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="hanlin-fc-eval") as pool:
        outcomes = list(pool.map(ask, items))
    predictions, correct, lost = [], [], []
    for item, (record, cached, error) in zip(items, outcomes, strict=True):
        if record is None:
            ok, reason, evidence = False, "model error", None
        else:
            ok, reason, evidence = judge(record, item)
        correct.append(ok)
        lost.append(evidence is not None)
        predictions.append(Prediction(
            item.id, 0, item.group, item.answer, record["text"] if record else "",
            json.dumps(record["tool_calls"], ensure_ascii=False) if record else None, ok, reason, cached,
            record["finish_reason"] if record else "", error=error))
    by_group: dict[str, list[bool]] = defaultdict(list)
    for item, ok in zip(items, correct, strict=True):
        by_group[item.group].append(ok)
    n_lost = sum(lost)
    notes = [f"{n_lost} of {len(items)} replies held a call in their text that the runtime did not parse into "
             "tool_calls (lost_calls; target 0)" if n_lost else
             f"no call lost to parsing (lost_calls 0 of {len(items)})"]
    if settings.shots:
        notes.append(f"{dataset.name} is zero-shot only; --shots {settings.shots} was not applied")
    if settings.samples > 1:
        notes.append(f"{dataset.name} asks each item once; --samples {settings.samples} was not applied")
    order = [c for c in CATEGORIES if c in by_group] + sorted(set(by_group) - set(CATEGORIES))
    return DatasetResult(
        dataset=dataset.name, kind="function_calling", model=model.name,
        metrics={"accuracy": accuracy(correct), "lost_calls": mean_with_stderr([float(x) for x in lost])},
        groups={g: accuracy(by_group[g]) for g in order}, predictions=predictions,
        prompts=[{"id": i.id, "prompt": prompts[i.id], "params": params} for i in items], shots=0,
        model_calls=counts["calls"], cached=counts["cached"], elapsed_s=time.perf_counter() - start,
        info=dataset.describe(), notes=notes)
