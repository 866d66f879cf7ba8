"""The data flywheel: agent traces -> LoRA tuning -> evaluation -> GGUF -> `hanlin run`.

1. traces  A teacher writes correct ReAct steps for calculator and Python tasks we author here; the real Agent
           runs them with the real tools (the same three tools the `tooluse` evaluation offers), and only runs
           whose final answer matches the task's known answer are kept. Each trace holds the model's view of its
           last call (ReAct system prompt, observations): exactly what the tuned model will be asked.
2. before  `hanlin eval -d tooluse --protocol react` on the base model.
3. tune    `hanlin tune` (LoRA) on the traces, exporting the merged model and a GGUF file.
4. after   the same evaluation on the tuned GGUF.
5. run     `hanlin run --model OUT "..."` on the tuned model (cpu runtime).

The teacher is a ScriptedModel (a stronger remote model would do the same job through the remote runtime): it
writes the call, and reads the tool's real observation to write the final answer.

Run:  .venv/bin/python examples/flywheel.py --out /tmp/flywheel            (the full loop, ~40 min on 2 cores)
      .venv/bin/python examples/flywheel.py --out /tmp/fw --quick          (a few tasks and steps, for CI)
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from hanlin import Agent, Message, ScriptedModel

BASE_MODEL = "smollm2-135m-instruct"


# ---- 1. tasks and traces --------------------------------------------------------------------------------------
def tasks(n: int, seed: int = 7) -> list[dict]:
    """Calculator and Python tasks with known answers, phrased like the tooluse evaluation's (not the same ones)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b, c = rng.randint(12, 999), rng.randint(3, 99), rng.randint(2, 500)
        kind = i % 4
        if kind == 0:
            out.append({"question": f"What is {a} * {b} + {c}? Use the calculator.", "tool": "calculator",
                        "arguments": {"expression": f"{a} * {b} + {c}"}, "answer": str(a * b + c)})
        elif kind == 1:
            out.append({"question": f"What is ({a} - {b}) * {c}? Use the calculator.", "tool": "calculator",
                        "arguments": {"expression": f"({a} - {b}) * {c}"}, "answer": str((a - b) * c)})
        elif kind == 2:
            out.append({"question": f"What is the sum of the integers from 1 to {a}? Write and run Python code to compute it.",
                        "tool": "python", "arguments": {"code": f"print(sum(range(1, {a} + 1)))"},
                        "answer": str(sum(range(1, a + 1)))})
        else:
            out.append({"question": f"How many integers from 1 to {a} are divisible by {b % 9 + 2}? Use Python to count them.",
                        "tool": "python",
                        "arguments": {"code": f"print(sum(1 for k in range(1, {a} + 1) if k % {b % 9 + 2} == 0))"},
                        "answer": str(a // (b % 9 + 2))})
    return out


def teacher(task: dict) -> ScriptedModel:
    """Writes the right call, then answers from the tool's real observation."""

    def reply(messages: list[Message], params) -> str:
        last = messages[-1]
        if last.role == "user" and last.content.startswith("Observation:"):
            observed = last.content.removeprefix("Observation:").split("\n")[0].strip()
            return f"Thought: The {task['tool']} tool returned {observed}.\nFinal Answer: {observed}"
        what = "compute it with the calculator" if task["tool"] == "calculator" else "write Python code and run it"
        return (f"Thought: I should {what}.\nAction: {task['tool']}\n"
                f"Action Input: {json.dumps(task['arguments'])}")

    return ScriptedModel(reply, name="teacher", constraints=frozenset())


def make_traces(out: Path, n: int) -> Path:
    from hanlin.plugins.evaluators.agent_eval import AgentSettings, ToolUseDataset

    path = out / "traces.jsonl"
    path.unlink(missing_ok=True)
    kept = 0
    with tempfile.TemporaryDirectory() as work:
        tools = ToolUseDataset().build_tools(AgentSettings(), Path(work))
        for task in tasks(n):
            agent = Agent(teacher(task), tools=tools, protocol="react", max_steps=4)
            result = agent.run(task["question"])
            if result.status == "answered" and re.sub(r"\s", "", result.output_text) == task["answer"]:
                result.save_trace(path)
                kept += 1
        for tool in tools:
            getattr(tool, "close", lambda: None)()
    print(f"traces: kept {kept} of {n} teacher runs (answer checked against the known one) -> {path}")
    return path


# ---- 2./4. evaluation, 3. tuning, 5. run ---------------------------------------------------------------------
def hanlin(*args: str, check: bool = True) -> str:
    cmd = [sys.executable, "-m", "hanlin.cli", *args]
    print("$ hanlin " + " ".join(args), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        sys.exit(f"hanlin {args[0]} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout + (proc.stderr if proc.returncode else "")


def evaluate(model: str, out: Path, limit: int, budget: tuple[str, ...] = ()) -> dict:
    """The tooluse scores of one model, as scores.json records them: {metric: {"value", "stderr", "n"}}."""
    hanlin("eval", "-m", model, "-d", "tooluse", "--protocol", "react", "--limit", str(limit), *budget,
           "--out", str(out))
    scores = json.loads((out / "scores.json").read_text())
    try:
        (entry,) = scores["models"].values()  # one model per folder
        (record,) = [r for name, r in entry["datasets"].items() if name.split("@")[0] == "tooluse"]  # tooluse@react
        return record["metrics"]
    except (KeyError, ValueError) as exc:
        sys.exit(f"{out / 'scores.json'} has no tooluse scores of one model ({type(exc).__name__}: {exc})")


def tune(traces: Path, out: Path, steps: int | None, epochs: float) -> str:
    config = out / "tune.yaml"
    batch, accum = (1, 1) if steps else (2, 2)  # --quick: one trace a step
    lines = [f"model: {BASE_MODEL}", f"data: [{traces}]", "method: lora", f"output_dir: {out / 'tuned'}",
             "max_length: 1024", f"batch_size: {batch}", f"grad_accum: {accum}", "learning_rate: 0.001",
             "warmup_ratio: 0.1",
             f"epochs: {epochs}", "export: [adapter, merged, gguf]", "gguf_type: f16", "threads: 2",
             "lora: {r: 16, alpha: 32, dropout: 0.05}"]
    if steps:
        lines.append(f"max_steps: {steps}")
    config.write_text("\n".join(lines) + "\n")
    print(hanlin("tune", str(config)))
    return str(out / "tuned")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("flywheel-out"))
    parser.add_argument("--quick", action="store_true", help="a few tasks, two steps, one eval item (for CI)")
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--limit", type=int, default=20, help="tooluse items evaluated before and after")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    # --quick proves every stage runs; each eval item before and after costs ~20 s of CI, so there is one
    n, steps, limit = (4, 2, 1) if args.quick else (args.tasks, None, args.limit)
    # --quick: a model tuned for two steps may ramble to the token limit at every step (a python item took 2 of the
    # 3.5 minutes of a quick run, 6 steps of 512 tokens each); 3 steps of 256 tokens still run every stage.
    budget = ("--max-steps", "3", "--max-tokens", "256") if args.quick else ()

    traces = make_traces(args.out, n)
    before = evaluate(BASE_MODEL, args.out / "eval-before", limit, budget)
    tuned = tune(traces, args.out, steps, args.epochs)
    after = evaluate(tuned, args.out / "eval-after", limit, budget)
    print("tooluse (react), before -> after:")
    for metric in ("accuracy", "valid_calls", "expected_tool", "steps"):
        print(f"  {metric:<14} {_value(before, metric):>7} -> {_value(after, metric)}")
    # an agent that gives up exits non-zero; its transcript is still worth showing
    print(hanlin("run", "--model", tuned, "--max-steps", "3", "What is 12 * 34 + 5? Use the calculator.", check=False))


def _value(metrics: dict, metric: str) -> str:
    """A score to three decimals. Only ``valid_calls`` may be missing: it is undefined when no item tried a call."""
    if metric not in metrics:
        if metric == "valid_calls":
            return "n/a"
        sys.exit(f"the tooluse scores lack {metric!r}: {sorted(metrics)}")
    return f"{metrics[metric]['value']:.3f}"


if __name__ == "__main__":
    main()
