"""`hanlin bench cpu --only healing`: token healing against the same runtime without it, on code completion.

The task an editor sends: a standard-library function up to its first statement (the def line, the docstring if
any, then that statement's indentation), greedy, stop at the end of the line. Counted: completions that start with
more whitespace (the line lands past the block's indentation: an IndentationError, or a line in the wrong block)
and completions equal to the real line. Without healing the prompt ends in a lone indentation token; the default
model then wrote " if ..." after four spaces. The corpus ships with Python and nobody here wrote it.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import time
from typing import Any

from hanlin import GenerationParams
from hanlin.bench import BenchTable

MODULES = ("textwrap", "shutil", "json.encoder", "json.decoder", "argparse", "csv", "difflib", "fnmatch", "glob",
           "gzip", "heapq", "ipaddress", "pathlib", "pprint", "shlex", "string", "tempfile", "zipfile", "calendar",
           "configparser")


def next_line_tasks(n: int, modules: tuple[str, ...] = MODULES) -> list[tuple[str, str]]:
    """(prompt ending in the first statement's indentation, that statement's line), spread over the modules."""
    tasks: list[tuple[str, str]] = []
    for name in modules:
        source = inspect.getsource(importlib.import_module(name))
        lines = source.splitlines(keepends=True)
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.FunctionDef) or len(node.body) < 2:
                continue
            body = node.body
            if isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
                body = body[1:]  # after the docstring
            line = lines[body[0].lineno - 1]
            target = line.strip()
            if not target or len(target) > 80 or body[0].lineno - node.lineno > 25:
                continue
            start = node.lineno - 1 - len(node.decorator_list)
            tasks.append(("".join(lines[start : body[0].lineno - 1]) + line[: len(line) - len(line.lstrip())], target))
    return tasks[:: max(1, len(tasks) // n)][:n]


def bench_healing(model_name: str = "qwen2.5-coder-0.5b-instruct", n: int = 60) -> BenchTable:
    from hanlin.runtimes.cpu.bench import _load
    from hanlin.runtimes.tool_calls import ToolPlan

    tasks = next_line_tasks(n)
    model = _load(model_name)
    params = GenerationParams(max_tokens=32, temperature=0, stop=["\n"])
    counts: dict[str, list[Any]] = {}
    try:
        for label, complete in (
            ("hanlin (healed)", lambda p: model.stream_prompt(p, params)),
            ("same runtime, not healed", lambda p: model._stream_tokens(model.tokenize(p), params, ToolPlan())),
        ):
            started, past, exact = time.perf_counter(), 0, 0
            for prompt, target in tasks:
                text = "".join(c.text for c in complete(prompt))
                past += text[:1].isspace()
                exact += text.strip() == target
            counts[label] = [past, exact, time.perf_counter() - started]
    finally:
        model.close()
    rows = [[model_name, label, len(tasks), past, f"{100 * past / len(tasks):.0f}%", exact, seconds]
            for label, (past, exact, seconds) in counts.items()]
    healed, plain = counts["hanlin (healed)"][0], counts["same runtime, not healed"][0]
    return BenchTable(
        title=f"4. token healing: next line of {len(tasks)} standard-library functions, prompt ending in indentation",
        columns=["model", "decoding", "tasks", "lines past the block", "share", "exact line", "seconds"],
        rows=rows,
        target="healed completions land past the block's indentation less often than unhealed ones",
        met=healed < plain,
    )
