"""Agent evaluation: the ``tooluse`` dataset run through hanlin's own Agent, with any protocol.

A benchmark question asked directly measures what a model knows; an agent benchmark measures whether it can get an
answer *through tools*: pick the right tool, write a call that parses with valid arguments, read the observation,
and stop. So each item is run as a whole agent run (``hanlin.Agent``: the same loop, protocols and tools as
``hanlin run``) and scored on four things:

- ``accuracy``: the run answered and its final answer matches (a number compared numerically after
  ``extract_number``, equal up to floating-point round-off, or a text found word for word in the answer after
  ``normalize_text``);
- ``valid_calls``: tool calls that named a known tool with arguments valid for its schema, over every attempt to
  act (each tool call, plus each step whose output could not be parsed into a call or an answer), pooled over the
  items with a ratio standard error; a final answer is not an attempt to call, so a perfect run scores 1.0 (under
  the runtimes' step grammars calls cannot be malformed: ``constrain=False`` measures the model's own format);
- ``expected_tool``: share of items whose run called every tool the item expects (valid or not: this is about
  choosing the tool);
- ``steps``: mean steps used (the agent's step counter: ReAct and native calling count model calls, ReWOO its
  plan, work and solve phases).

The data ships with hanlin (``data/tool_use.jsonl``, 63 questions, interleaved so any ``--limit`` mixes tools) with a
small corpus of invented company documents (``data/tool_use_kb/``) for the ``knowledge_base`` tool: its facts are
fictional, so a model cannot answer them from memory. Every item offers all three tools (calculator, python,
knowledge_base), so choosing one is part of the test. Each run is cached like any prediction, keyed by the model,
the question, the tools' specs, the data's fingerprint, the protocol and the run's parameters (worked examples on or
off, and the self-consistency samples included).

Two levers for small models are options of the run: ``AgentSettings.examples`` (the protocols' worked examples in the
prompt; ``--no-examples`` turns them off) and ``EvalSettings.samples`` (``--samples N``, with ``--temperature`` above
0): each item is run N times as ``Agent(samples=N)`` and the majority answer is scored (self-consistency); the mean
share of runs agreeing with it is reported as ``agreement``.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

from hanlin.chat_model import ChatModel, GenerationParams
from hanlin.errors import ConfigurationError
from hanlin.plugins.evaluators.base import Dataset, EvalItem, Judgement, Kind, read_jsonl, validate_rows
from hanlin.plugins.evaluators.metrics import Score, accuracy, mean_with_stderr
from hanlin.plugins.evaluators.postprocess import extract_number, normalize_text, numbers_equal
from hanlin.plugins.evaluators.cache import PredictionCache
from hanlin.plugins.evaluators.identity import model_identity
from hanlin.plugins.evaluators.results import DatasetResult, Prediction
from hanlin.plugins.evaluators.runner import EvalSettings, Progress, chosen_items

TOOLS = ("calculator", "python", "knowledge_base")
PROTOCOLS = ("react", "rewoo", "tools", "code")
CORPUS_SUFFIXES = (".md", ".markdown", ".txt", ".html", ".htm", ".pdf")  # what the knowledge base indexes
KB_ABOUT = "Lumen Harbor, an invented company: its office, IT accounts and VPN, travel policy and the Orbit 7 sensor"


def data_dir() -> Path:
    """The shipped data folder (package data, so an installed wheel has it too)."""
    return Path(str(resources.files("hanlin.plugins.evaluators") / "data"))


class _ToolUseRow(BaseModel):
    id: str = Field(min_length=1)
    question: str = Field(min_length=1)
    answer: str = Field(min_length=1)
    match: Literal["number", "text"]
    expected_tools: list[str] = Field(min_length=1)

    @field_validator("expected_tools")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = [t for t in value if t not in TOOLS]
        if unknown:
            raise ValueError(f"unknown tools {unknown}; the tools offered are {list(TOOLS)}")
        return value


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """How each item is run: the protocols to compare, the agent's step budget, the knowledge base's backend."""

    protocols: tuple[str, ...] = ("react",)
    max_steps: int = 6
    max_retries: int = 2
    kb_backend: str = "auto"  # embeddings when the MiniLM wheel is installed, else BM25
    constrain: bool = True  # grammar-constrained steps where the runtime has them (False: the model's own format)
    examples: bool = True  # the protocols' worked examples (made-up tools) in the prompt
    python_timeout: float = 20.0

    def __post_init__(self) -> None:
        if not self.protocols:
            raise ConfigurationError(f"give at least one --protocol ({', '.join(PROTOCOLS)})")
        if self.max_steps < 1:
            raise ConfigurationError(f"max_steps must be at least 1, got {self.max_steps}")


class ToolUseDataset(Dataset):
    """Questions whose answers need the calculator, Python, or the shipped knowledge base (or two of them)."""

    name = "tooluse"
    kind: Kind = "agent"  # type: ignore[assignment]  # run by evaluate_agent, not the generation runner
    description = "Tool use: 63 questions needing calculator / python / knowledge_base, run as an agent (--protocol)"
    max_tokens = 512  # per agent step: room for a thought and a call, bounded so a runaway step stays cheap
    supports_fewshot = False
    fewshot_source = "none"

    def __init__(self, path: str | Path | None = None, corpus: str | Path | None = None) -> None:
        super().__init__()
        self.path = Path(path) if path else data_dir() / "tool_use.jsonl"
        self.corpus = Path(corpus) if corpus else data_dir() / "tool_use_kb"

    def load(self) -> list[EvalItem]:
        if not self.path.is_file():
            raise ConfigurationError(f"the tool-use data file {self.path} is missing; reinstall hanlin")
        self.source = f"hanlin: {self.path.name} + {self.corpus.name}/"
        with open(self.path, encoding="utf-8") as f:
            rows = validate_rows(read_jsonl(f, str(self.path)), _ToolUseRow, str(self.path))
        return [EvalItem(id=row.id, question=row.question, answer=row.answer, group="+".join(row.expected_tools),
                         extra={"match": row.match, "expected_tools": tuple(row.expected_tools)}, line=number)
                for number, row in rows]

    def fingerprint(self) -> str:
        """A hash of the questions and the corpus: editing either invalidates cached runs."""
        digest = hashlib.sha256(self.path.read_bytes())
        for doc in sorted(self.corpus.rglob("*")):
            if doc.is_file() and doc.suffix.lower() in CORPUS_SUFFIXES:
                digest.update(doc.name.encode() + b"\0" + doc.read_bytes())
        return digest.hexdigest()[:16]

    def judge(self, output: str, item: EvalItem) -> Judgement:
        if item.extra["match"] == "number":
            found = extract_number(output)
            if found is None:
                return Judgement(None, False, "no number in the final answer")
            return Judgement(found, numbers_equal(found, item.answer) or floats_equal(found, item.answer))
        said = normalize_text(output)
        if not said:
            return Judgement(None, False, "empty final answer")
        return Judgement(output.strip(), f" {normalize_text(item.answer)} " in f" {said} ")

    def build_tools(self, settings: AgentSettings, workdir: Path) -> list[Any]:
        """The three tools every item is offered; the knowledge base indexes the shipped corpus in memory."""
        from hanlin.loading import load_tool

        return [load_tool("calculator"),
                load_tool("python", workdir=workdir, timeout=settings.python_timeout),
                load_tool("knowledge_base", docs=str(self.corpus), backend=settings.kb_backend, description=KB_ABOUT)]


# ---- scoring ------------------------------------------------------------------------------------------------
def floats_equal(a: str, b: str) -> bool:
    """Equal up to binary floating-point round-off (a relative 1e-9): Python's 0.17 * 2350 is 399.50000000000006,
    and an agent that computed 17% of 2350 that way has the right answer. Any real difference still counts."""
    try:
        x, y = float(a), float(b)
    except ValueError:
        return False
    return math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12)


def call_is_valid(tools: dict[str, Any], name: str, arguments: Any) -> bool:
    """A known tool with arguments its schema accepts (the check the agent loop makes before running a call)."""
    tool = tools.get(name)
    if tool is None:
        return False
    try:
        tool.validate(arguments)
    except (ValidationError, ValueError, TypeError):
        return False
    return True


def summarize_run(result: Any, tools: dict[str, Any]) -> dict[str, Any]:
    """What is kept of one agent run (and cached): the answer, status, steps, every call with its validity, the
    parse failures, and the transcript."""
    calls = [{"name": e.call.name, "arguments": e.call.arguments,
              "valid": call_is_valid(tools, e.call.name, e.call.arguments)}
             for e in result.events if e.type == "tool_call"]
    parse_failures = sum(1 for e in result.events if e.type == "error" and e.kind == "parse")
    return {"text": result.output_text, "status": result.status, "steps": result.steps, "calls": calls,
            "parse_failures": parse_failures, "error": result.error,
            "samples": getattr(result, "samples", 1), "agreement": getattr(result, "agreement", None),
            "usage": result.usage.model_dump(mode="json"),
            "messages": [m.model_dump(mode="json", exclude_defaults=True) for m in result.messages],
            "model_view": getattr(result, "model_view", None)}  # the last call as the protocol rendered it


def ratio_with_stderr(numerators: Sequence[float], denominators: Sequence[float]) -> Score:
    """sum(num) / sum(den) over items, with the standard error of a ratio estimator (items are the independent
    units, not calls: one item's calls are alike). Items with a zero denominator add nothing; n counts the rest."""
    pairs = [(x, d) for x, d in zip(numerators, denominators, strict=True) if d > 0]
    n = len(pairs)
    if n == 0:
        return Score(float("nan"), float("nan"), 0)
    ratio = sum(x for x, _ in pairs) / sum(d for _, d in pairs)
    if n < 2:
        return Score(ratio, float("nan"), n)
    mean_den = sum(d for _, d in pairs) / n
    residual = sum((x - ratio * d) ** 2 for x, d in pairs) / (n - 1)
    return Score(ratio, math.sqrt(residual / n) / mean_den, n)


def agent_metrics(records: Sequence[dict[str, Any]], items: Sequence[EvalItem], correct: Sequence[bool]) -> dict[str, Score]:
    """The four scores of a tool-use run from per-item records (as ``summarize_run`` makes them). ``valid_calls`` is
    left out when no item attempted a call (it is undefined then, and NaN has no place in scores.json)."""
    valid = [sum(c["valid"] for c in r["calls"]) for r in records]
    attempts = [len(r["calls"]) + r["parse_failures"] for r in records]
    used = [{c["name"] for c in r["calls"]} for r in records]
    metrics = {
        "accuracy": accuracy(list(correct)),
        "valid_calls": ratio_with_stderr(valid, attempts),
        "expected_tool": accuracy([set(i.extra["expected_tools"]) <= u for i, u in zip(items, used, strict=True)]),
        "steps": mean_with_stderr([float(r["steps"]) for r in records]),
    }
    if metrics["valid_calls"].n == 0:
        del metrics["valid_calls"]
    agreement = [r["agreement"] for r in records if r.get("agreement") is not None]
    if agreement:  # self-consistency runs: the share of each item's samples that agreed with the scored answer
        metrics["agreement"] = mean_with_stderr(agreement)
    return metrics


# ---- running ------------------------------------------------------------------------------------------------
def _params(dataset: Dataset, settings: EvalSettings, agent: AgentSettings, protocol: str) -> dict[str, Any]:
    return {"protocol": protocol, "max_steps": agent.max_steps, "max_retries": agent.max_retries,
            "constrained": None if agent.constrain else False, "examples": agent.examples, "samples": settings.samples,
            "max_tokens": settings.max_tokens or dataset.max_tokens, "temperature": settings.temperature,
            "seed": settings.seed if settings.temperature > 0 else None}


def evaluate_agent(model: ChatModel, dataset: ToolUseDataset, settings: EvalSettings = EvalSettings(),
                   agent_settings: AgentSettings = AgentSettings(), cache: PredictionCache | None = None,
                   progress: Progress | None = None) -> list[DatasetResult]:
    """Run every selected item through an Agent per protocol; one result per protocol, named ``tooluse@<protocol>``.

    A protocol the model cannot use (native calling on a model without a tool-calling template) fails before any
    item runs, with the reason. Runs that end in ``error`` (the model failed) are scored wrong and not cached.
    """
    from hanlin.loading import load_protocol

    for protocol in agent_settings.protocols:
        load_protocol(protocol).check_model(model)  # fail before tools start or items run
    items = chosen_items(dataset, settings)
    if not items:
        raise ConfigurationError(f"dataset '{dataset.name}' has no items to evaluate")
    with tempfile.TemporaryDirectory(prefix="hanlin-tooluse-") as workdir:
        # Passable by others (not readable): run as root, the python tool's kernels each have a user of their own,
        # and a private 0700 folder broke their absolute paths (and warned about it on every tooluse run).
        os.chmod(workdir, 0o711)
        tools = dataset.build_tools(agent_settings, Path(workdir))
        try:
            return [_evaluate_protocol(model, dataset, items, tools, protocol, settings, agent_settings, cache, progress)
                    for protocol in agent_settings.protocols]
        finally:
            for kit in {id(t.toolkit): t.toolkit for t in tools if t.toolkit is not None}.values():
                kit.close()


def _evaluate_protocol(model: ChatModel, dataset: ToolUseDataset, items: list[EvalItem], tools: list[Any],
                       protocol: str, settings: EvalSettings, agent_settings: AgentSettings,
                       cache: PredictionCache | None, progress: Progress | None) -> DatasetResult:
    from hanlin.agent import Agent

    start = time.perf_counter()
    name = f"{dataset.name}@{protocol}"
    params = _params(dataset, settings, agent_settings, protocol)
    agent = Agent(model, tools, protocol=protocol, max_steps=agent_settings.max_steps,
                  max_retries=agent_settings.max_retries, constrained=params["constrained"],
                  examples=agent_settings.examples, samples=settings.samples,
                  params=GenerationParams(max_tokens=params["max_tokens"], temperature=settings.temperature,
                                          seed=params["seed"]))
    by_name = {t.name: t for t in tools}
    kb = next((t.toolkit for t in tools if t.name == "knowledge_base"), None)
    backend = kb.index.meta.get("backend") if kb is not None else None
    # what a look-up returns: a cached run that was shown whole passages is not a run shown the lines that answer
    shown = None if kb is None else [backend, "lines" if kb.focus else "passages"]
    identity = model_identity(model)
    specs = [t.to_openai() for t in tools]
    fingerprint = dataset.fingerprint()
    counts = {"calls": 0, "done": 0, "cached": 0}
    lock = threading.Lock()

    def key(item: EvalItem) -> str:
        prompt = {"agent": protocol, "question": item.question, "tools": specs, "data": fingerprint, "kb": shown}
        return PredictionCache.key(identity, prompt, {k: v for k, v in params.items() if v is not None})

    def run(item: EvalItem) -> tuple[dict[str, Any], bool]:
        record = cache.get(key(item)) if cache is not None else None
        cached = record is not None
        if record is None:
            record = summarize_run(agent.run(item.question), by_name)
            if cache is not None and record["status"] != "error":
                cache.put(key(item), record)
        with lock:
            counts["calls"] += not cached
            counts["done"] += 1
            counts["cached"] += cached
            done, hits = counts["done"], counts["cached"]
        if progress is not None:
            progress(name, done, len(items), hits)
        return record, cached

    if progress is not None:
        progress(name, 0, len(items), 0)
    with ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="hanlin-agent-eval") as pool:
        outcomes = list(pool.map(run, items))
    records = [r for r, _ in outcomes]
    predictions, correct = [], []
    for item, (record, cached) in zip(items, outcomes, strict=True):
        verdict = dataset.judge(record["text"], item) if record["status"] == "answered" else \
            Judgement(None, False, f"no answer: {record['status']}")
        correct.append(verdict.correct)
        calls = ", ".join(f"{c['name']}{'' if c['valid'] else ' (invalid)'}" for c in record["calls"]) or "none"
        detail = f"{record['status']} in {record['steps']} steps; calls: {calls}" + \
            (f"; {verdict.detail}" if verdict.detail else "")
        if record.get("agreement") is not None:
            detail += f"; {record['agreement']:.0%} of {record['samples']} samples agreed"
        predictions.append(Prediction(item.id, 0, item.group, item.answer, record["text"], verdict.extracted,
                                      verdict.correct, detail, cached, record["status"],
                                      error=record["error"] if record["status"] == "error" else None))
    by_group: dict[str, list[bool]] = defaultdict(list)
    for item, ok in zip(items, correct, strict=True):
        by_group[item.group].append(ok)
    notes = [f"knowledge_base backend: {backend}"] if backend else []
    if not any(r["calls"] or r["parse_failures"] for r in records):
        notes.append(f"{name}: no item attempted a tool call, so valid_calls is not reported")
    if settings.shots:
        notes.append(f"{name} is zero-shot only; --shots {settings.shots} was not applied")
    if settings.samples > 1:
        notes.append(f"{name}: each item ran {settings.samples} times; the majority answer is scored (self-consistency)")
    prompts = [{"id": item.id, "prompt": {"protocol": protocol, "question": item.question,
                                          "tools": [t.name for t in tools]},
                "params": params, "transcript": record["messages"], "last_model_call": record.get("model_view")}
               for item, record in zip(items, records, strict=True)]
    info = {**dataset.describe(), "protocol": protocol, "agent": {**params, "kb_backend": backend}}
    return DatasetResult(dataset=name, kind="agent", model=model.name, metrics=agent_metrics(records, items, correct),
                         groups={g: accuracy(v) for g, v in sorted(by_group.items())} if len(by_group) > 1 else {},
                         predictions=predictions, prompts=prompts, shots=0, model_calls=counts["calls"],
                         cached=counts["cached"], elapsed_s=time.perf_counter() - start, info=info, notes=notes)
