"""A hint for a cell that ran out of time because a function calls itself more than once per call.

Asked for the 40th Fibonacci number, Qwen2.5-Coder-0.5B wrote the textbook ``fibonacci(n-1) + fibonacci(n-2)``: about
2**28 calls, 20 to 40 s of CPython on this machine, so it passed or timed out by the load on the machine. After a
timeout it re-sent the same cell until the run gave up (python-20, react and rewoo). Told only "timed out", it has
nothing to change; the hint names the cause and the one-line fix, ``@functools.cache``, which makes such a function
take linear time, and shows the whole cell with it: shown only the decorator and the ``def`` line, the model wrote
them under its own function with a new body that had lost the base case (a RecursionError). A cell re-sent
unchanged after the hint runs with the fix (see python_hints.Hint), as the error hints' fixes do: unchanged, it
could only time out again.

Only a function that the cell defines and that calls itself at two or more places is meant; one already cached is
left alone, and so is every other slow cell (a long loop has no fix that keeps its meaning).

Shown the hint with the fixed cell, the model answered at once with a number of its own (2187): a cell that is
safe to run twice (it defines, imports, assigns and prints, and printed nothing before the interrupt) therefore runs
again with the fix straight away, as a cell that cannot compile only because it returns does, and the result says
so. Any other cell gets the hint, and the fix when it is sent again.
"""

from __future__ import annotations

import ast

from hanlin.plugins.tools.python_hints import Hint

CACHE = "@functools.cache"
SHOWN_LINES = 30  # a longer cell is shown as its function only
_CACHED = ("cache", "lru_cache", "memoize")


def timeout_hint(code: str) -> Hint | None:
    """The hint for a cell that timed out, or None when no function of it calls itself at several places."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return None
    branching = [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)
                 and _self_calls(node) >= 2 and not _cached(node)]
    if not branching:
        return None
    names = ", ".join(node.name for node in branching)
    first = branching[0]
    lines = code.splitlines()
    for node in sorted(branching, key=lambda n: n.lineno, reverse=True):  # bottom up: line numbers stay right
        lines.insert(node.lineno - 1, " " * node.col_offset + CACHE)
    fixed = "import functools\n" + "\n".join(lines)
    count = _self_calls(first)
    times = {2: "twice", 3: "three times"}.get(count, f"{count} times")
    function = ast.get_source_segment(code, first, padded=True) or ""
    shown = fixed if fixed.count("\n") < SHOWN_LINES else "\n".join(
        ["import functools", " " * first.col_offset + CACHE, function])
    text = (f"Hint: {first.name} calls itself {times} in each call, so the work multiplies with every step "
            f"of its argument. With {CACHE} on it each result is computed once:\n{shown}")
    return Hint(text, f"{CACHE} on {names}", fixed)


# The top-level statements of a cell that can run a second time to the same effect: nothing of it appends, writes or
# loops (a loop's body may have run partly before the interrupt). What the functions do when called is not looked at.
_RERUNNABLE = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef, ast.Assign, ast.AnnAssign, ast.Expr)


def reruns_safely(code: str) -> bool:
    """Whether every top-level statement of ``code`` defines, imports, assigns or evaluates (see _RERUNNABLE)."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return all(isinstance(statement, _RERUNNABLE) for statement in tree.body)


def _self_calls(function: ast.FunctionDef) -> int:
    """How many places in ``function``'s body call it by its own name."""
    return sum(1 for statement in function.body for node in ast.walk(statement)
               if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == function.name)


def _cached(function: ast.FunctionDef) -> bool:
    """Whether a decorator already keeps results (functools.cache, lru_cache(...), a memoize of its own)."""
    for decorator in function.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
        if name in _CACHED:
            return True
    return False
