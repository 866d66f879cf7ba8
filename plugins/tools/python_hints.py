"""Hints appended to a Python error, for mistakes a model makes and cannot see on its own.

Asked to reverse 'evaluation' or count the s in 'mississippi', Qwen2.5-Coder-0.5B wrote ``evaluation[::-1]`` and
``mississippi.count('s')``: the word as a bare name. The NameError alone did not tell it why; it re-sent the same cell
until the run gave up (3 of 21 python tool-use items). The hint shows the cell's line with the name quoted, as
CPython's own "Did you mean" hints do for typos, so the fix is there to copy. It is worded as a condition: the name
may also be a variable that an earlier cell never defined (a name the cell assigns or binds gets no hint: that is a
variable used too early). A cell that ends in ``return value`` is told that a cell shows its last value.

The model did not copy it: it re-sent the failing cell unchanged, again and again. A cell re-sent straight after
failing can only fail the same way, so the kernel session then runs the hint's fix instead and says so (the whole
cell with the word quoted wherever it is read, or ending with the returned value). A cell that cannot compile only
because its last line returns does not wait for that: it runs at once with the value as its last line (nothing of it
could have run, and a ReWOO plan has no second step to re-send it).
"""

from __future__ import annotations

import ast
import builtins
import importlib
import io
import keyword
import re
import tokenize
from dataclasses import dataclass

_BINDING = {"for", "as", "def", "class", "import", "from", "global", "nonlocal", "del", "lambda"}
_UNDEFINED = re.compile(r"name '(?P<name>\w+)' is not defined")
_NO_ATTRIBUTE = re.compile(r"module '(?P<module>\w+)' has no attribute '(?P<name>\w+)'")
_CANNOT_IMPORT = re.compile(r"cannot import name '(?P<name>\w+)' from '(?P<module>\w+)'")


@dataclass(frozen=True, slots=True)
class Hint:
    text: str  # appended to the traceback
    fix: str  # what the fix does, for the note on the result of a cell that ran with it
    fixed_code: str | None = None  # the whole cell with the fix applied, where there is one


def error_hint(error_name: str, error_value: str, code: str) -> Hint | None:
    """What to add after the traceback, or None when there is nothing useful to say."""
    if error_name == "SyntaxError" and "'return' outside function" in error_value:
        return _return_hint(code)
    if error_name == "IndentationError" and "expected an indented block" in error_value:
        return _indent_hint(code)
    if error_name == "SyntaxError":
        from hanlin.plugins.tools.python_syntax_hints import syntax_hint

        return syntax_hint(code)
    if error_name == "AttributeError" and (missing := _NO_ATTRIBUTE.search(error_value)):
        return _elsewhere_hint(missing["module"], missing["name"], code)
    if error_name == "ImportError" and (missing := _CANNOT_IMPORT.search(error_value)):
        return _imported_elsewhere_hint(missing["module"], missing["name"], code)
    if error_name != "NameError":
        return None
    match = _UNDEFINED.search(error_value)
    if match is None:
        return None
    name = match["name"]
    if keyword.iskeyword(name) or hasattr(builtins, name) or name.startswith("_"):
        return None
    if hint := _import_hint(name, code) or _unset_total_hint(name, code):
        return hint
    quoted = _quoted_uses(code, name)
    if quoted is None:  # a name the cell also assigns is a variable used too early, not a word meant as text
        return None
    first, lines = quoted
    text = f"Hint: no variable is named {name}. If you meant the text {name!r}, put it in quotes:\n{first}"
    return Hint(text, f"{name!r} in quotes", "\n".join(lines))


def _import_hint(name: str, code: str) -> Hint | None:
    """A module used without its import (``math.sqrt(2)``), or a function or class of a common module called
    without one (``date_a + timedelta(days=100)``: Qwen2.5-Coder-0.5B imported only ``date``, python-15, code
    protocol). Told to put 'timedelta' in quotes, which was no fix, it re-sent the cell until the run gave up. Only
    where the cell's own use fits: a module whose every ``name.attr`` exists, a callable that the cell calls."""
    attrs, called = _uses_of(code, name)
    if name in IMPORTABLE and attrs:
        module = _module(name)
        if module is not None and all(hasattr(module, a) for a in attrs):
            return _import_fix(name, f"import {name}", code)
    if not called and not attrs:
        return None
    for module_name in IMPORTED_FROM:
        value = getattr(_module(module_name), name, None)
        if callable(value) and all(hasattr(value, a) for a in attrs):
            return _import_fix(name, f"from {module_name} import {name}", code)
    return None


# Where a function or class called without an import is looked for, in this order.
IMPORTED_FROM = ("math", "datetime", "collections", "itertools", "functools", "statistics", "fractions", "decimal",
                 "random", "calendar", "string")
# The modules a hint may import here, in the agent's process, to look inside: a fixed list, since importing some of
# the standard library has effects (antigravity opens a browser, this prints, turtle starts Tk).
IMPORTABLE = frozenset({*IMPORTED_FROM, "re", "json", "os", "sys", "time", "operator", "heapq", "bisect",
                        "textwrap", "unicodedata", "copy", "pathlib", "sympy"})


def _elsewhere_hint(module_name: str, name: str, code: str) -> Hint | None:
    """A function looked for in the wrong module: ``math.isprime(i)`` (Qwen2.5-Coder-0.5B, python-01 and python-16,
    tools protocol: the same cell six times each). Where a common module, or sympy (installed with torch), has it,
    the hint names the import, and the fix imports it and calls it by its bare name."""
    use = re.compile(rf"\b{re.escape(module_name)}\.{re.escape(name)}\b")
    if not use.search(code):
        return None
    candidate = _module_with(name, besides=module_name)
    if candidate is None:
        return None
    statement = f"from {candidate} import {name}"
    text = f"Hint: {module_name} has no {name}; {candidate} has one:\n{statement}\nthen call {name}(...)"
    return Hint(text, f"'{statement}'", f"{statement}\n{use.sub(name, code)}")


def _module_with(name: str, besides: str) -> str | None:
    """The first common module (or sympy) other than ``besides`` with a callable ``name``."""
    return next((m for m in (*IMPORTED_FROM, "sympy") if m != besides and callable(getattr(_module(m), name, None))),
                None)


def _imported_elsewhere_hint(module_name: str, name: str, code: str) -> Hint | None:
    """The same mistake as an import: ``from math import divisors`` (Qwen2.5-Coder-0.5B, python-17, code protocol;
    it then tried ``pip install math`` until the run gave up). The fix imports the name from the module that has it;
    the other names of that import stay where they were."""
    line = re.compile(rf"^(?P<indent>[ \t]*)from[ \t]+{re.escape(module_name)}[ \t]+import[ \t]+(?P<names>[^\n#(]+?)"
                      r"[ \t]*(?:#[^\n]*)?$", re.M)
    match = next((m for m in line.finditer(code) if name in _imported_names(m["names"])), None)
    if match is None:
        return None
    candidate = _module_with(name, besides=module_name)
    if candidate is None:
        return None
    parts = [p.strip() for p in match["names"].split(",") if p.strip()]
    moved = next(p for p in parts if p.split()[0] == name)  # "mean as m" keeps its alias
    statement = f"from {candidate} import {moved}"
    others = [p for p in parts if p != moved]
    kept = f"{match['indent']}from {module_name} import {', '.join(others)}\n" if others else ""
    fixed = code[:match.start()] + kept + match["indent"] + statement + code[match.end():]
    return Hint(f"Hint: {module_name} has no {name}; {candidate} has one:\n{statement}", f"'{statement}'", fixed)


def _imported_names(names: str) -> list[str]:
    """The names an import binds from its list: "a, b as c" -> ["a", "b"] (the names looked up in the module)."""
    return [part.split()[0] for part in names.split(",") if part.split()]


def _module(name: str) -> object | None:
    if name not in IMPORTABLE:
        return None
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _import_fix(name: str, statement: str, code: str) -> Hint:
    text = f"Hint: {name} is not defined in this session; it needs an import first:\n{statement}"
    return Hint(text, f"'{statement}' added first", f"{statement}\n{code}")


def _uses_of(code: str, name: str) -> tuple[set[str], bool]:
    """(the attributes read from ``name``, whether it is called) in ``code``, by its tokens."""
    tokens = _tokens(code)
    attrs, called = set(), False
    for i, t in enumerate(tokens[:-1]):
        if t.type != tokenize.NAME or t.string != name or (i and tokens[i - 1].string == "."):
            continue
        after = tokens[i + 1].string
        if after == "." and i + 2 < len(tokens):
            attrs.add(tokens[i + 2].string)
        called = called or after == "("
    return attrs, called


def _tokens(code: str) -> list[tokenize.TokenInfo]:
    """The cell's tokens less comments and blank-line breaks (none if it does not tokenize)."""
    try:
        return [t for t in tokenize.generate_tokens(io.StringIO(code).readline)
                if t.type not in (tokenize.NL, tokenize.COMMENT)]
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return []


def _unset_total_hint(name: str, code: str) -> Hint | None:
    """``count += 1`` in a loop with ``count`` never set (python-19, tools protocol, six times): the fix sets it
    before the outermost statement that adds to it, to what adding starts from (0, '' or [], 1 for ``*=``)."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return None
    if any(isinstance(node, ast.Name) and node.id == name and isinstance(node.ctx, ast.Store)
           and not _is_aug_target(tree, node) for node in ast.walk(tree)):
        return None  # assigned somewhere: a variable used too early, which the model has to reorder itself
    for statement in tree.body:
        aug = next((n for n in ast.walk(statement) if isinstance(n, ast.AugAssign)
                    and isinstance(n.target, ast.Name) and n.target.id == name), None)
        if aug is None:
            continue
        start = _start_value(aug)
        if start is None:
            return None
        lines = code.split("\n")
        row = statement.lineno - 1  # a NameError (not UnboundLocalError) comes from a module-level statement
        setting = f"{name} = {start}"
        fixed_code = "\n".join(lines[:row] + [setting] + lines[row:])
        where = "before the loop" if isinstance(statement, (ast.For, ast.While)) else "first"
        text = f"Hint: {name} is added to before it has a value; set it {where}:\n{setting}"
        return Hint(text, f"'{setting}' first", fixed_code)
    return None


def _is_aug_target(tree: ast.AST, name: ast.Name) -> bool:
    return any(isinstance(n, ast.AugAssign) and n.target is name for n in ast.walk(tree))


def _start_value(aug: ast.AugAssign) -> str | None:
    if isinstance(aug.op, ast.Mult):
        return "1"
    if not isinstance(aug.op, (ast.Add, ast.Sub)):
        return None
    value = aug.value
    if isinstance(value, ast.JoinedStr) or (isinstance(value, ast.Constant) and isinstance(value.value, str)):
        return "''"
    if isinstance(value, (ast.List, ast.ListComp)):
        return "[]"
    return "0"


def _indent_hint(code: str) -> Hint | None:
    """Code written inside a JSON string loses its indentation: Qwen2.5-Coder-0.5B sent
    ``"x = 1\nfor i in range(1, 51):\nx += i**2\nprint(x)"`` five times over (python-09, tools). The fix indents
    the one line after each line ending in ':' that is not indented under it: the smallest change that runs (a
    longer body needs the model to say where it ends)."""
    fixed, opener = [], None
    for line in code.split("\n"):
        indent = len(line) - len(line.lstrip())
        if opener is not None and line.strip():
            if indent <= opener:
                line, indent = " " * (opener + 4) + line.lstrip(), opener + 4
            opener = None
        fixed.append(line)
        if line.rstrip().endswith(":") and not line.lstrip().startswith("#"):
            opener = indent
    fixed_code = "\n".join(fixed)
    if fixed_code == code or not compiles(fixed_code):
        return None
    first = next(i for i, (a, b) in enumerate(zip(code.split("\n"), fixed)) if a != b)
    text = ("Hint: the line after a line ending in ':' must be indented under it, like this:\n"
            f"{fixed[first - 1]}\n{fixed[first]}")
    return Hint(text, "the line after each ':' indented", fixed_code)


RETURN_FIX = "its last line's return as a plain value"


def _return_hint(code: str) -> Hint:
    """A cell ending in ``return days`` (Qwen2.5-Coder-0.5B wrote its datetime cells as a function body): the
    value on the last line is what a cell shows, so the fix ends the cell with ``days``. A last line that joins
    statements with ``;`` ("from datetime import date; return date(2000, 1, 1).strftime('%A')") ends the same way."""
    lines = code.rstrip().splitlines()
    text = "Hint: a cell is not a function, so it cannot return; end it with the value to show it (or print it)"
    last = lines[-1] if lines else ""
    before, joined, after = last.rpartition("; return ")
    head, value = (f"{before}; ", after.strip()) if joined else ("", last[len("return "):].strip())
    if not (joined or last.startswith("return ")) or not value:
        return Hint(text + ".", "")
    fixed = "\n".join(lines[:-1] + [head + value])
    if not compiles(fixed):
        return Hint(text + ".", "")
    return Hint(f"{text}: {value}", RETURN_FIX, fixed)


def returning_cell_fix(code: str) -> str | None:
    """The return hint's fixed cell, for a cell that cannot compile only because its last line returns (a SyntaxError,
    so nothing of it would run). Such a cell runs fixed at once, with a note: under ReWOO no step would see the hint
    and send the cell again (tooluse python-06, -07, -10, -12: the planner's cells ended in "return ...", and the
    solver answered from the error)."""
    try:
        compile(code, "<cell>", "exec")
    except SyntaxError as exc:
        if "'return' outside function" in str(exc.msg):
            return _return_hint(code).fixed_code
    except (ValueError, OverflowError):
        return None
    return None


def compiles(code: str) -> bool:
    """Whether ``code`` compiles as a cell (SyntaxError, a null byte or a literal too big all say no)."""
    try:
        compile(code, "<cell>", "exec")
    except (SyntaxError, ValueError, OverflowError):
        return False
    return True


def quoted_line(code: str, name: str) -> str | None:
    """The first line of ``code`` that uses ``name`` as a bare name, with each such use quoted."""
    quoted = _quoted_uses(code, name)
    return quoted[0] if quoted else None


def _quoted_uses(code: str, name: str) -> tuple[str, list[str]] | None:
    """(the first line that reads ``name`` as a bare name, the cell's lines) with each such use quoted; None if
    there is no such use."""
    uses = _bare_uses(code, name)
    if not uses:
        return None
    lines = code.splitlines()
    for row in sorted({t.start[0] for t in uses}):
        line = lines[row - 1]
        for t in sorted((t for t in uses if t.start[0] == row), key=lambda t: t.start[1], reverse=True):
            line = line[: t.start[1]] + repr(name) + line[t.end[1]:]  # from the right: earlier columns stay valid
        lines[row - 1] = line
    return lines[uses[0].start[0] - 1].strip(), lines


def _bare_uses(code: str, name: str) -> list[tokenize.TokenInfo]:
    """Where ``name`` is read as a variable (none if the code does not tokenize, only holds it in a string or an
    attribute, or assigns to it: quoting an assignment target would be a new error, not a fix)."""
    tokens = _tokens(code)
    uses = []
    for i, t in enumerate(tokens):
        if t.type != tokenize.NAME or t.string != name or (i and tokens[i - 1].string == "."):
            continue  # x.name is an attribute, not the undefined name
        after = tokens[i + 1].string if i + 1 < len(tokens) else ""
        before = tokens[i - 1].string if i else ""
        if (after.endswith("=") and after not in ("==", "<=", ">=", "!=")) or before in _BINDING or after == "(":
            return []  # assigned, bound or called: a variable or function, not a word meant as text
        uses.append(t)
    return uses
