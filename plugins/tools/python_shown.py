"""What a cell shows beside its own output: the values it computed and left where the model cannot see them.

A model reads a cell's result from what the cell printed. Two ways a small model loses the value it computed:

- the cell prints nothing (it ends on ``total += i**2`` in a loop): it shows the variables its last statement set;
- the cell prints something else. Offered tools in its chat template, Qwen2.5-Coder-0.5B ended 4 of 21 python cells
  under the tools protocol with ``result = {"name": "days_difference", "arguments": {...}}; print(result)``: its
  template's call format, printed in place of ``days_difference = (end - start).days``, which it computed and
  never used; it then answered with a guess. A number the cell computed (not a literal it wrote in) and never read
  again is its result left on the floor, so it is shown after the output, unless the output already holds it.
"""

from __future__ import annotations

import ast
import re

MAX_SHOWN_NAMES = 3
MAX_SHOWN_CHARS = 300
# Read in the kernel, printed: a big list, tuple, dict or set is rendered as its size and its first items, a long
# string as its start, never whole (the note shows 300 characters, and `xs = list(range(10**8))` would otherwise be
# rendered and shipped as a gigabyte string); anything else, and a container of up to 300 items, as its repr.
PREVIEW_ITEMS = 100
BOUNDED_REPR = (
    f"(lambda v, _i=__import__('itertools').islice: repr(v[:{2 * MAX_SHOWN_CHARS}]) if isinstance(v, (str, bytes)) "
    f"else repr(v) if not isinstance(v, (list, tuple, dict, set, frozenset)) or len(v) <= {MAX_SHOWN_CHARS} "
    f"else f'<{{type(v).__name__}} of {{len(v)}} items> ' + repr(list(v[:{PREVIEW_ITEMS}]) "
    f"if isinstance(v, (list, tuple)) else dict(_i(v.items(), {PREVIEW_ITEMS})) if isinstance(v, dict) "
    f"else list(_i(v, {PREVIEW_ITEMS}))))"
)


def bounded_repr_probe(name: str) -> str:
    """The silent cell that prints ``name``'s value, bounded as BOUNDED_REPR says."""
    return f"print({BOUNDED_REPR}({name}))"


def shown_names(code: str) -> list[str]:
    """The variables a silent cell ended by setting: the targets of a final assignment (``total = sum(...)``) or of
    the assignments inside a final loop or if, or the object a final method call changed in place (``words.sort()``).
    Qwen2.5-Coder-0.5B ended cells that way and, shown "(no output)", answered with an invented number (python-09)
    or a guess (python-10); a note asking it to print changed nothing. The values themselves are what it needed."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return []
    if not tree.body:
        return []
    last = tree.body[-1]
    targets: list[ast.expr] = []
    if isinstance(last, ast.Assign):
        targets = list(last.targets)
    elif isinstance(last, (ast.AugAssign, ast.AnnAssign)) and last.value is not None:
        targets = [last.target]
    elif (isinstance(last, ast.Expr) and isinstance(last.value, ast.Call)
          and isinstance(last.value.func, ast.Attribute) and isinstance(last.value.func.value, ast.Name)):
        targets = [last.value.func.value]
    elif isinstance(last, (ast.For, ast.While, ast.If, ast.With)):  # a loop that counts or sums, say
        loop_vars = ({n.id for n in ast.walk(last.target) if isinstance(n, ast.Name)} if isinstance(last, ast.For)
                     else set())
        targets = [t for node in ast.walk(last) if isinstance(node, (ast.AugAssign, ast.Assign))
                   for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
                   if not (isinstance(t, ast.Name) and t.id in loop_vars)]
    names: list[str] = []
    for target in targets:
        for node in ([target] if isinstance(target, ast.Name) else getattr(target, "elts", [])):
            if isinstance(node, ast.Name) and node.id not in names and not node.id.startswith("_"):
                names.append(node.id)
    return names[:MAX_SHOWN_NAMES]


def no_output_text(values: dict[str, str]) -> str:
    """What a cell that printed nothing and ended on no value shows: its last variables, if it set any."""
    if not values:
        return "(no output)"
    shown = "; ".join(f"{name} = {value if len(value) <= MAX_SHOWN_CHARS else value[:MAX_SHOWN_CHARS] + '...'}"
                      for name, value in values.items())
    return f"(no output; {shown})"


_NUMBER = re.compile(r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def unprinted_names(code: str) -> list[str]:
    """The names a cell's top-level statements (or the loops and blocks among them) computed last, not set to a
    literal, and that nothing in the cell reads afterwards: not a later statement, not the loop or block that set
    them, not any function, lambda or class body (which may read them when called later)."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return []
    assigned: dict[str, int] = {}  # name -> index of the top-level statement that set it last
    for index, statement in enumerate(tree.body):
        for node in _outside_definitions(statement):
            if isinstance(node, ast.Assign):
                targets, literal = list(node.targets), _is_literal(node.value)
            elif isinstance(node, (ast.AugAssign, ast.AnnAssign)) and node.value is not None:
                targets, literal = [node.target], isinstance(node, ast.AnnAssign) and _is_literal(node.value)
            else:
                continue
            for target in targets:
                for name in ([target] if isinstance(target, ast.Name) else getattr(target, "elts", [])):
                    if isinstance(name, ast.Name) and not name.id.startswith("_"):
                        assigned.pop(name.id, None)
                        if not literal:  # a number the model wrote in is an input it knows, not a result
                            assigned[name.id] = index
    read: set[str] = set()
    for index, statement in enumerate(tree.body):
        block = not isinstance(statement, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Expr))
        for node in ast.walk(statement):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in assigned:
                if index > assigned[node.id] or (block and index == assigned[node.id]):
                    read.add(node.id)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
                read |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    return [name for name in assigned if name not in read][-2 * MAX_SHOWN_NAMES:]  # numbers among them shown


def _outside_definitions(statement: ast.stmt) -> list[ast.AST]:
    """The nodes of ``statement`` outside any function or class it defines (their variables are local)."""
    out, stack = [], [statement]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        out.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return out


def _is_literal(value: ast.expr | None) -> bool:
    if isinstance(value, ast.UnaryOp) and isinstance(value.op, (ast.USub, ast.UAdd)):
        value = value.operand
    return isinstance(value, ast.Constant) or (isinstance(value, (ast.Tuple, ast.List))
                                               and all(_is_literal(v) for v in value.elts))


def unprinted_text(values: dict[str, str], output: str) -> str:
    """The note after a cell's output for the numbers among ``values`` (reprs) that the output does not show."""
    shown = [f"{name} = {value}" for name, value in values.items()
             if len(value) <= MAX_SHOWN_CHARS and _NUMBER.fullmatch(value) and not re.search(rf"(?<![\d.]){re.escape(value)}(?![\d])", output)]
    return f"\n(not printed: {'; '.join(shown[-MAX_SHOWN_NAMES:])})" if shown else ""
