"""calculator: exact, safe arithmetic for agents.

Expressions are parsed with ``ast`` and evaluated by walking the tree: no
eval, no names but the listed constants and functions, and size limits
checked *before* computing, so ``9**9**9`` is refused in microseconds instead
of hanging the agent. Integers stay exact (big integers included); floats are
printed with up to 15 significant digits so 0.1 + 0.2 reads 0.3.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable
from typing import Any

from hanlin import ToolInputError, ToolSpec, hookimpl, tool

MAX_EXPRESSION_CHARS = 500
MAX_RESULT_DIGITS = 5000  # integers longer than this are refused
MAX_FACTORIAL = 1000


class CalculatorError(ToolInputError):
    """A bad expression; the message is what the model will read."""


def _factorial(n: Any) -> int:
    if isinstance(n, float) and n.is_integer():
        n = int(n)
    if not isinstance(n, int) or n < 0:
        raise CalculatorError(f"factorial needs a non-negative integer, got {n!r}")
    if n > MAX_FACTORIAL:
        raise CalculatorError(f"factorial({n}) is too large; the limit is factorial({MAX_FACTORIAL})")
    return math.factorial(n)


def _log(x: Any, base: Any = None) -> float:
    return math.log(x) if base is None else math.log(x, base)


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "sqrt": math.sqrt, "exp": math.exp, "log": _log, "ln": math.log, "log10": math.log10, "log2": math.log2,
    "sin": math.sin, "cos": math.cos, "tan": math.tan, "asin": math.asin, "acos": math.acos, "atan": math.atan,
    "atan2": math.atan2, "sinh": math.sinh, "cosh": math.cosh, "tanh": math.tanh, "floor": math.floor,
    "ceil": math.ceil, "round": round, "abs": abs, "min": min, "max": max, "factorial": _factorial,
    "gcd": math.gcd, "lcm": math.lcm, "hypot": math.hypot, "degrees": math.degrees, "radians": math.radians,
}
CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e, "tau": math.tau, "inf": math.inf}

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
    ast.Eq: operator.eq, ast.NotEq: operator.ne,
}


def _normalise(expression: str) -> str:
    """Accept the spellings models use: ^ for power, × and ÷, 1,000 as a thousands separator."""
    text = expression.strip().replace("×", "*").replace("÷", "/").replace("−", "-").replace("^", "**")
    # "1,000,000" -> "1000000": only digit groups of exactly three after a comma, so max(1,2) is untouched.
    text = re.sub(r"(?<![\w.])(\d{1,3})((?:,\d{3})+)(?![\d.]|\s*\))", lambda m: m.group(1) + m.group(2).replace(",", ""), text)
    return text


def _digits(n: int) -> int:
    return len(str(abs(n))) if n.bit_length() < 20000 else int(n.bit_length() * 0.30103) + 1


def _check_power(base: Any, exp: Any) -> None:
    if isinstance(base, int) and isinstance(exp, int) and exp > 0 and abs(base) > 1:
        estimated = exp * math.log10(abs(base))
        if estimated > MAX_RESULT_DIGITS:
            raise CalculatorError(
                f"{base}**{exp} would have about {estimated:,.0f} digits; the limit is {MAX_RESULT_DIGITS}"
            )


def _check_product(a: Any, b: Any) -> None:
    if isinstance(a, int) and isinstance(b, int) and a and b:
        if a.bit_length() + b.bit_length() > MAX_RESULT_DIGITS * 3.33:
            raise CalculatorError(f"the product has more than {MAX_RESULT_DIGITS} digits; the limit is {MAX_RESULT_DIGITS}")


class _Evaluator:
    def visit(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return self.visit(node.body)
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
                raise CalculatorError(f"only numbers are allowed, found {node.value!r}")
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            value = self.visit(node.operand)
            return -value if isinstance(node.op, ast.USub) else +value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = self.visit(node.left), self.visit(node.right)
            if isinstance(node.op, ast.Pow):
                _check_power(left, right)
            if isinstance(node.op, ast.Mult):
                _check_product(left, right)
            return _BINARY[type(node.op)](left, right)
        if isinstance(node, ast.Compare) and all(type(op) in _COMPARE for op in node.ops):
            left = self.visit(node.left)
            for op, comparator in zip(node.ops, node.comparators):
                right = self.visit(comparator)
                if not _COMPARE[type(op)](left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.Name):
            if node.id in CONSTANTS:
                return CONSTANTS[node.id]
            raise CalculatorError(
                f"unknown name '{node.id}'. Constants: {', '.join(CONSTANTS)}. Functions: {', '.join(FUNCTIONS)}"
            )
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
                name = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
                raise CalculatorError(f"unknown function '{name}'. Functions: {', '.join(FUNCTIONS)}")
            if node.keywords:
                raise CalculatorError(f"{node.func.id}() takes positional arguments only")
            args = [self.visit(a) for a in node.args]
            try:
                return FUNCTIONS[node.func.id](*args)
            except CalculatorError:
                raise
            except (TypeError, ValueError, OverflowError) as exc:
                raise CalculatorError(f"{node.func.id}({', '.join(map(_format, args))}): {exc}") from None
        raise CalculatorError(f"'{ast.unparse(node)}' is not arithmetic; use numbers, + - * / // % **, and functions")


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isinf(value) or math.isnan(value):
            return str(value)
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.15g}"
    return str(value)


def evaluate(expression: str) -> str:
    """Evaluate ``expression`` and return the result as text, or raise CalculatorError saying why not."""
    if not isinstance(expression, str) or not expression.strip():
        raise CalculatorError("the expression is empty; write arithmetic such as '37 * 91 + 5'")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"the expression is {len(expression)} characters; the limit is {MAX_EXPRESSION_CHARS}")
    text = _normalise(expression)
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        where = f" near column {exc.offset}" if exc.offset else ""
        raise CalculatorError(f"'{expression}' is not a valid expression{where}: {exc.msg}") from None
    try:
        value = _Evaluator().visit(tree)
    except ZeroDivisionError:
        raise CalculatorError(f"division by zero in '{expression}'") from None
    except OverflowError:
        raise CalculatorError(f"the result of '{expression}' is too large for a float") from None
    except RecursionError:
        raise CalculatorError("the expression is nested too deeply") from None
    if isinstance(value, int) and not isinstance(value, bool) and _digits(value) > MAX_RESULT_DIGITS:
        raise CalculatorError(f"the result has more than {MAX_RESULT_DIGITS} digits")
    return _format(value)


@tool(timeout=5)
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly and return the result.

    Supports + - * / // % ** (or ^), parentheses, big integers, the constants
    pi, e, tau, and functions such as sqrt, log, sin, cos, floor, round, abs,
    min, max, factorial, gcd.

    Args:
        expression: The arithmetic to evaluate, e.g. "37 * 91 + 5" or "sqrt(2) * 10".
    """
    return evaluate(expression)


@hookimpl
def register_tools(register: Any) -> None:
    register(ToolSpec(name="calculator", factory=lambda: calculator, description=calculator.description, default=True))
