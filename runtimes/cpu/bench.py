"""`hanlin bench cpu`: the cpu runtime beside raw llama-cpp-python, measured in the same run.

Three tables:
1. speed — prompt and generation tok/s of hanlin's runtime vs raw llama-cpp-python, same model, settings
   and prompt, interleaved runs, median of each.
2. reuse — a 6-step ReAct run (the model writes every step under the ReAct grammar, with the final answer
   held back until step 6 so the run has six steps); then the same six prompts replayed on a model without
   prefix reuse. Evaluated prompt tokens per step and total wall time, side by side.
3. validity — the tool-use prompts of tests/data/tool_use_prompts.jsonl as ReAct runs, with and without
   constrained decoding: the share of steps that are a valid call or answer, and of runs answered right.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hanlin import Agent, ChatModel, Chunk, Constraint, GenerationParams, Message, load_model, load_tool, resolve_model
from hanlin.bench import BenchTable
from hanlin.protocols import RunContext

PROMPTS_FILE = Path(__file__).resolve().parents[2] / "tests" / "data" / "tool_use_prompts.jsonl"
SPEED_PROMPT = (
    "Write a detailed essay about the history of printing, from woodblocks to the printing press, "
    "and how it changed science, religion and politics in Europe and Asia."
)


def _load(name: str, **config: Any) -> Any:
    return load_model(name, runtime="cpu", n_ctx=4096, n_threads=config.pop("n_threads", 2), **config)


# ---- 1. speed ---------------------------------------------------------------------------------
def bench_speed(model_name: str = "smollm2-135m-instruct", max_tokens: int = 128, repeats: int = 3) -> BenchTable:
    import llama_cpp

    ours = _load(model_name, prefix_reuse=False)
    path = resolve_model(model_name).locate()
    raw = llama_cpp.Llama(model_path=str(path), n_ctx=4096, n_threads=2, n_batch=512, verbose=False)
    messages = [Message.user(SPEED_PROMPT + " " + SPEED_PROMPT)]
    prompt_text = ours.render(messages)

    def timed_ours(n: int) -> tuple[float, int, int]:
        t = time.perf_counter()
        c = ours.generate(messages, max_tokens=n, temperature=0)
        return time.perf_counter() - t, c.usage.prompt_tokens, c.usage.completion_tokens

    def timed_raw(n: int) -> tuple[float, int, int]:
        raw.reset()  # no prompt cache: both sides evaluate the whole prompt
        t = time.perf_counter()
        out = raw.create_completion(prompt_text, max_tokens=n, temperature=0, repeat_penalty=1.0)
        return time.perf_counter() - t, out["usage"]["prompt_tokens"], out["usage"]["completion_tokens"]

    rows: dict[str, dict[str, list[float]]] = {"raw llama-cpp-python": {"p": [], "g": []}, "hanlin cpu": {"p": [], "g": []}}
    for _ in range(repeats):
        for label, fn in (("raw llama-cpp-python", timed_raw), ("hanlin cpu", timed_ours)):
            t1, prompt_tokens, _ = fn(1)
            tn, _, generated = fn(max_tokens)
            rows[label]["p"].append(prompt_tokens / t1)
            rows[label]["g"].append((generated - 1) / max(tn - t1, 1e-9))
    raw.close()
    ours.close()
    med = {k: (statistics.median(v["p"]), statistics.median(v["g"])) for k, v in rows.items()}
    base_p, base_g = med["raw llama-cpp-python"]
    table = BenchTable(
        title=f"1. speed: {model_name}, 2 threads, greedy, {prompt_tokens} prompt tokens, {max_tokens} generated (median of {repeats})",
        columns=["engine", "prompt tok/s", "gen tok/s", "prompt ratio", "gen ratio"],
        target="hanlin >= 0.97 x raw for both",
    )
    for label, (p, g) in med.items():
        table.rows.append([label, p, g, p / base_p, g / base_g])
    p, g = med["hanlin cpu"]
    table.met = p / base_p >= 0.97 and g / base_g >= 0.97
    return table


# ---- 2. prefix reuse ----------------------------------------------------------------------------
class _Recorder(ChatModel):
    """Wraps a model and keeps every call's prompt, parameters, usage and wall time."""

    def __init__(self, inner: ChatModel) -> None:
        self.inner, self.name, self.capabilities = inner, inner.name, inner.capabilities
        self.calls: list[dict[str, Any]] = []

    def _stream(self, messages: list[Message], params: GenerationParams) -> Iterator[Chunk]:
        started = time.perf_counter()
        last = None
        for chunk in self.inner._stream(messages, params):
            last = chunk if chunk.usage is not None else last
            yield chunk
        self.calls.append({"messages": messages, "params": params, "usage": last.usage, "seconds": time.perf_counter() - started})


def _actions_only(steps: int):
    """A ReAct variant whose grammar forbids the final answer before step ``steps``."""
    from hanlin import get_plugin_manager

    react = get_plugin_manager().get("protocols", "react")  # runtimes reach plugins only through the manager

    class ActionsFirst(react):  # type: ignore[misc, valid-type]
        def constraint(self, ctx: RunContext) -> Constraint | None:
            constraint = super().constraint(ctx)
            if constraint is None or ctx.step >= steps:
                return constraint
            grammar = constraint.grammar.replace("( action | final )", "( action )")
            return Constraint(grammar=grammar)

    return ActionsFirst()


def bench_reuse(model_name: str = "smollm2-135m-instruct", steps: int = 6) -> BenchTable:
    task = (
        "Add up the numbers 17, 29, 31, 44, 58 and 62 one at a time with the calculator, "
        "keeping a running total, then give the total."
    )
    with_reuse = _Recorder(_load(model_name, prefix_reuse=True))
    without = _load(model_name, prefix_reuse=False)
    for model in (with_reuse.inner, without):  # first-call costs (allocation, warm caches) are not what we measure
        model.generate("Hello", max_tokens=4)
    run = Agent(with_reuse, [load_tool("calculator")], protocol=_actions_only(steps), max_steps=steps).run(task)
    replay = []
    for call in with_reuse.calls:
        started = time.perf_counter()
        completion = without.generate(call["messages"], call["params"])
        replay.append({"usage": completion.usage, "seconds": time.perf_counter() - started})
    without.close()
    with_reuse.inner.close()

    table = BenchTable(
        title=f"2. prefix reuse: {len(with_reuse.calls)}-step ReAct run on {model_name} (status {run.status}), replayed without reuse",
        columns=["step", "prompt tokens", "new tokens", "evaluated (reuse)", "evaluated (no reuse)", "eval/new", "s (reuse)", "s (no reuse)"],
        target="steps >= 2: evaluated <= 1.2 x new tokens; total time with reuse <= 0.5 x without",
    )
    ok = True
    previous = 0
    for i, (a, b) in enumerate(zip(with_reuse.calls, replay), start=1):
        new = a["usage"].prompt_tokens - previous
        ratio = a["usage"].prompt_tokens_evaluated / max(new, 1)
        if i >= 2:
            ok = ok and ratio <= 1.2
        table.rows.append([i, a["usage"].prompt_tokens, new, a["usage"].prompt_tokens_evaluated,
                           b["usage"].prompt_tokens_evaluated, ratio, a["seconds"], b["seconds"]])
        previous = a["usage"].prompt_tokens
    total_a = sum(c["seconds"] for c in with_reuse.calls)
    total_b = sum(c["seconds"] for c in replay)
    table.rows.append(["total", "", "", sum(c["usage"].prompt_tokens_evaluated for c in with_reuse.calls),
                       sum(c["usage"].prompt_tokens_evaluated for c in replay), "", total_a, total_b])
    table.notes.append(f"wall time with reuse / without = {total_a / total_b:.3f}")
    table.notes.append("new tokens = this step's prompt minus the previous step's prompt (the model's reply + the observation)")
    table.met = ok and total_a <= 0.5 * total_b
    return table


# ---- 3. format validity -------------------------------------------------------------------------
def load_prompts(limit: int | None = None) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in PROMPTS_FILE.read_text().splitlines() if line.strip()]
    return rows[:limit] if limit else rows


def bench_validity(models: list[str], limit: int | None = None, max_steps: int = 4) -> BenchTable:
    prompts = load_prompts(limit)
    table = BenchTable(
        title=f"3. format validity: {len(prompts)} tool-use prompts, ReAct, max {max_steps} steps",
        columns=["model", "constrained", "steps", "valid steps", "valid %", "runs right", "right %", "seconds"],
        target="100% valid steps with constraints, on every model",
    )
    met = True
    calculator = load_tool("calculator")
    for name in models:
        model = _load(name)
        for constrained in (True, False):
            steps = invalid = right = 0
            started = time.perf_counter()
            for row in prompts:
                result = Agent(model, [calculator], protocol="react", max_steps=max_steps, constrained=constrained).run(row["question"])
                steps += result.steps
                invalid += sum(1 for e in result.events if e.type == "error" and e.kind in ("parse", "unknown_tool", "invalid_arguments"))
                invalid += 1 if result.status == "gave_up" and result.error and "could not be parsed" in result.error else 0
                right += result.status == "answered" and row["answer"] in str(result.output)
            valid = steps - invalid
            table.rows.append([name, constrained, steps, valid, 100 * valid / max(steps, 1), right,
                               100 * right / len(prompts), time.perf_counter() - started])
            if constrained:
                met = met and valid == steps
        model.close()
    table.met = met
    return table


def run_all(models: list[str] | None = None, limit: int | None = None, only: list[str] | None = None) -> Iterator[BenchTable]:
    """Yield each table as soon as it is measured."""
    chosen = set(only or ["speed", "reuse", "validity"])
    if "speed" in chosen:
        yield bench_speed()
    if "reuse" in chosen:
        yield bench_reuse()
    if "validity" in chosen:
        yield bench_validity(models or ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"], limit=limit)
