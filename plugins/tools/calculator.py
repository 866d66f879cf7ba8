"""calculator: exact, safe arithmetic for agents.

Expressions are parsed with ``ast`` and evaluated by walking the tree: no
eval, no names but the listed constants and functions, and size limits
checked *before* computing, so ``9**9**9`` is refused in microseconds instead
of hanging the agent.

Decisions, because models write arithmetic the way people do:

- ``^`` means power (``2^10`` is 1024). Python's XOR is never what a model
  asking a calculator means. ``×``, ``·``, ``÷`` and ``−`` are * / and -.
- Thousands separators: ``1,000,000`` is one million, but only where a comma
  cannot separate arguments: outside function-call parentheses, groups of
  exactly three digits. Inside a call commas always separate arguments
  (``max(1,000)`` is max(1, 0)), and the error for a miscount says so.
- A trailing ``=`` ("37*91+5 =") is ignored, and so is a result written after it ("216 / 36 = 6"): small models
  write the equation they expect; the left side is computed, and a claimed result that differs is pointed out.
- Integers are exact, big ones included; ``/`` of two integers is exact when
  it divides evenly (``2**200 / 2`` stays an integer), otherwise a float.
- Floats are printed with 15 significant digits, the precision a double
  always carries, so 0.1 + 0.2 reads 0.3 and not 0.30000000000000004.
- Comparisons work and give ``true``/``false``.
- A sum or product written with an ellipsis ("1 + 2 + ... + 250") is the series it shows (calculator_series).
- A percentage is a fraction: "17% of 2350" is 0.17 * 2350, "12.5%" is 0.125; "10 % 3" is still the remainder
  (percentages).
- One clock time minus another ("19:00 - 07:30") is the time between them, "690 minutes (11:30)"
  (calculator_times).
- Inside an agent run the call is checked against the run's request: parentheses the copy dropped, a greatest
  common divisor computed without gcd (calculator_request).
"""

from __future__ import annotations

import ast
import math
import operator
import re
import warnings
from collections.abc import Callable
from typing import Any

from hanlin import ToolInputError, ToolSpec, current_task, hookimpl, tool
from hanlin.plugins.tools.calculator_request import missing_function, read_with_request
from hanlin.plugins.tools.calculator_series import SeriesError, expand_series
from hanlin.plugins.tools.calculator_times import ClockTimeError, time_between
from hanlin.plugins.tools.percentages import as_fractions

MAX_EXPRESSION_CHARS = 500
MAX_RESULT_DIGITS = 4000  # below CPython's 4300-digit int<->str limit, so every allowed result can be printed
MAX_FACTORIAL = 1000
MAX_ROUND_DIGITS = 1000  # round(5, -10**9) would compute 10**(10**9)


class CalculatorError(ToolInputError):
    """A bad expression; the message is what the model will read."""


def _factorial(n: Any) -> int:
    if isinstance(n, float) and n.is_integer():
        n = int(n)
    if not isinstance(n, int) or n < 0:
        raise CalculatorError(f"factorial needs a non-negative integer, got {_show(n)}")
    if n > MAX_FACTORIAL:
        raise CalculatorError(f"factorial({n}) is too large; the limit is factorial({MAX_FACTORIAL})")
    return math.factorial(n)


def _log(x: Any, base: Any = None) -> float:
    return math.log(x) if base is None else math.log(x, base)


def _round(x: Any, ndigits: Any = None) -> Any:
    if ndigits is not None and isinstance(ndigits, int) and abs(ndigits) > MAX_ROUND_DIGITS:
        raise CalculatorError(f"round() digits must be between -{MAX_ROUND_DIGITS} and {MAX_ROUND_DIGITS}")
    return round(x) if ndigits is None else round(x, ndigits)


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "sqrt": math.sqrt, "exp": math.exp, "log": _log, "ln": math.log, "log10": math.log10, "log2": math.log2,
    "sin": math.sin, "cos": math.cos, "tan": math.tan, "asin": math.asin, "acos": math.acos, "atan": math.atan,
    "atan2": math.atan2, "sinh": math.sinh, "cosh": math.cosh, "tanh": math.tanh, "floor": math.floor,
    "ceil": math.ceil, "round": _round, "abs": abs, "min": min, "max": max, "factorial": _factorial,
    "gcd": math.gcd, "lcm": math.lcm, "hypot": math.hypot, "degrees": math.degrees, "radians": math.radians,
}
CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e, "tau": math.tau, "inf": math.inf}
_ALLOWED = f"Constants: {', '.join(CONSTANTS)}. Functions: {', '.join(FUNCTIONS)}"

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
    ast.Eq: operator.eq, ast.NotEq: operator.ne,
}
_SYMBOLS = {"×": "*", "·": "*", "÷": "/", "−": "-", "^": "**", "≤": "<=", "≥": ">=", "≠": "!="}
_NOT_ARITHMETIC = {
    ast.Attribute: "attribute access", ast.Subscript: "indexing", ast.Lambda: "a lambda", ast.IfExp: "an if-expression",
    ast.ListComp: "a comprehension", ast.SetComp: "a comprehension", ast.DictComp: "a comprehension",
    ast.GeneratorExp: "a comprehension", ast.List: "a list", ast.Dict: "a dict", ast.Set: "a set",
    ast.BoolOp: "and/or logic", ast.NamedExpr: "an assignment", ast.Starred: "unpacking",
}
_GROUPED = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\w.,])")  # 1,234,567 or 1,234.5, not 1,2345 or 1,000,00


# ---- reading the expression ---------------------------------------------------------------------
def _normalise(expression: str) -> str:
    text = expression.strip()
    for symbol, python in _SYMBOLS.items():
        text = text.replace(symbol, python)
    return as_fractions(_drop_thousands_separators(_postfix_factorials(text.rstrip("= \t\n"))))


def _postfix_factorials(text: str) -> str:
    """Maths' ``n!`` as ``factorial(n)``: the operand is the number, name or parenthesised group (with its function
    name) just before the ``!``. Asked for "7 factorial divided by 12", Qwen2.5-Coder-0.5B wrote "7! / 12" five times,
    told each time it was invalid syntax, and gave up (tooluse calc-10). ``!=`` stays a comparison; ``n!!``, the
    double factorial, is refused rather than read as (n!)!."""
    i = 0
    while (i := text.find("!", i)) >= 0:
        if text.startswith("!=", i):
            i += 2
            continue
        if text.startswith("!!", i):
            raise CalculatorError(f"{_quoted(text)}: '!!' (the double factorial) is not supported; write the product out")
        end = i
        while end and text[end - 1] == " ":
            end -= 1
        start = end
        if start and text[start - 1] == ")":
            depth = 0
            while start:
                start -= 1
                depth += {")": 1, "(": -1}.get(text[start], 0)
                if depth == 0:
                    break
            if depth:
                raise CalculatorError(f"{_quoted(text)} has a ')' with no '(' before the '!'")
        while start and (text[start - 1].isalnum() or text[start - 1] in "._"):
            start -= 1
        if start == end:
            raise CalculatorError(f"{_quoted(text)}: '!' needs a number before it (n! is factorial(n))")
        replaced = f"factorial({text[start:end]})"
        text = text[:start] + replaced + text[i + 1:]
        i = start + len(replaced)
    return text


def _drop_thousands_separators(text: str) -> str:
    """Remove commas in digit groups, except inside a call's parentheses where they separate arguments."""
    out: list[str] = []
    in_call: list[bool] = []  # one entry per open parenthesis
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "(":
            before = text[:i].rstrip()
            in_call.append(bool(before) and (before[-1].isalnum() or before[-1] in "_)"))
        elif ch == ")" and in_call:
            in_call.pop()
        elif ch.isdigit() and not (i and (text[i - 1].isalnum() or text[i - 1] in "_.")):
            match = None if (in_call and in_call[-1]) else _GROUPED.match(text, i)
            if match:
                out.append(match.group().replace(",", ""))
                i = match.end()
                continue
        out.append(ch)
        i += 1
    return "".join(out)


_UNIT = re.compile(r"(\d(?:[\d.]*\d)?)\s*([A-Za-z]{2,})\b(?!\s*\()")  # "90 minutes / 4", "216 euros * 3"


MAX_QUOTED_CHARS = 80


def _quoted(expression: str) -> str:
    """The expression as an error message quotes it, cut when long. Qwen2.5-Coder-0.5B wrote a divisor of a few
    hundred zeros; each error quoted it whole, beside the call that held it, and three steps filled the 4,096-token
    context (kb-08, tools protocol)."""
    if len(expression) <= MAX_QUOTED_CHARS:
        return f"'{expression}'"
    return f"'{expression[:MAX_QUOTED_CHARS]}...' ({len(expression):,} characters)"


def _numbers_alone(bare: str) -> str | None:
    """The expression with its units dropped, as the unit hint's example: the text less the units if that evaluates,
    else less every word that is not a function or constant, else None. A suggestion that does not evaluate was
    offered before ("'years' after 3 looks like a unit: write the numbers alone, e.g. '3 from the date of
    purchase'")."""
    words = re.sub(r"[A-Za-z_]\w*", lambda m: m[0] if m[0] in FUNCTIONS or m[0] in CONSTANTS else "", bare)
    for candidate in (" ".join(bare.split()), " ".join(words.split())):
        try:
            evaluate(candidate)
        except CalculatorError:
            continue
        return candidate
    return None


def _parse(expression: str, text: str) -> ast.Expression:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "'int' object is not callable" SyntaxWarnings for 2(3+4)
            return ast.parse(text, mode="eval")
    except SyntaxError as exc:
        where = ""
        if exc.lineno == 1 and "\n" not in text and len(text) <= MAX_QUOTED_CHARS:
            column = exc.offset if exc.offset and exc.offset <= len(text) else len(text) + 1  # 0: ran out of input
            where = f"\n  {text}\n  {' ' * (column - 1)}^"
        shown = _quoted(expression) + (f" (read as {_quoted(text)})" if text != expression.strip() else "")
        def unit(m: re.Match[str]) -> bool:
            return m[2] not in CONSTANTS and m[2] not in FUNCTIONS

        units = [u for u in _UNIT.finditer(text) if unit(u)]
        hint = ""
        if units:
            example = _numbers_alone(_UNIT.sub(lambda m: m[1] if unit(m) else m[0], text))
            hint = (f"\n'{units[0][2]}' after {units[0][1]} looks like a unit: write the numbers alone"
                    + (f", e.g. '{example}'" if example else ""))
        raise CalculatorError(f"{shown} is not a valid expression: {exc.msg}{where}{hint}") from None
    except ValueError as exc:  # e.g. null bytes
        raise CalculatorError(f"{_quoted(expression)} is not a valid expression: {exc}") from None


# ---- limits, checked before the work --------------------------------------------------------------
def _digits(n: int) -> int:
    """Decimal digits of ``n``, estimated from its bit length where printing would be slow or refused."""
    bits = abs(n).bit_length()
    return len(str(abs(n))) if bits < 13000 else int(bits * math.log10(2)) + 1


def _show(value: Any) -> str:
    """A value for an error message: huge integers are summarised, never printed in full."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value).bit_length() > 100:
        return f"<a {_digits(value)}-digit integer>"
    return _format(value)


def _too_big(what: str, digits: float) -> CalculatorError:
    about = f"about {digits:,.0f}" if math.isfinite(digits) else "astronomically many"
    return CalculatorError(f"{what} would have {about} digits; the limit is {MAX_RESULT_DIGITS}")


def _check(op: ast.operator, left: Any, right: Any) -> None:
    if not (isinstance(left, int) and isinstance(right, int)):
        return
    if isinstance(op, ast.Pow) and right > 0 and abs(left) > 1:
        digits = right * math.log10(abs(left)) if right.bit_length() < 64 else math.inf
        if digits > MAX_RESULT_DIGITS:
            raise _too_big(f"{_show(left)}**{_show(right)}", digits)
    if isinstance(op, ast.Mult) and left and right:
        digits = (abs(left).bit_length() + abs(right).bit_length() - 1) * math.log10(2)
        if digits > MAX_RESULT_DIGITS + 1:
            raise _too_big("the product", digits)


# ---- evaluation ---------------------------------------------------------------------------------
class _Evaluator:
    def __init__(self, expression: str) -> None:
        self.expression = expression

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
            return self._binary(node.op, self.visit(node.left), self.visit(node.right))
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
            if node.id in FUNCTIONS:
                raise CalculatorError(f"'{node.id}' is a function: call it with parentheses, e.g. {node.id}(2)")
            raise CalculatorError(f"unknown name '{node.id}'. {_ALLOWED}")
        if isinstance(node, ast.Call):
            return self._call(node)
        if isinstance(node, ast.Tuple):
            raise CalculatorError(
                f"'{self.expression}' is a comma-separated list, not one number: commas separate function "
                "arguments, or thousands in groups of three digits (1,000,000)"
            )
        what = _NOT_ARITHMETIC.get(type(node), "a construct")
        raise CalculatorError(
            f"'{ast.unparse(node)}' is {what}, which the calculator does not allow; use numbers, "
            "+ - * / // % ** (or ^), comparisons, parentheses and the listed functions"
        )

    def _binary(self, op: ast.operator, left: Any, right: Any) -> Any:
        _check(op, left, right)
        if isinstance(op, ast.Div) and _is_int(left) and _is_int(right) and right and left % right == 0:
            return left // right  # exact, even where a float could not hold the quotient
        value = _BINARY[type(op)](left, right)
        if isinstance(value, complex):
            raise CalculatorError(
                f"({_show(left)}) ** {_show(right)} is not a real number (a negative base needs a whole exponent)"
            )
        return value

    def _call(self, node: ast.Call) -> Any:
        func = node.func
        if not isinstance(func, ast.Name):
            target = ast.unparse(func)
            raise CalculatorError(
                f"'{target}' is not a function and cannot be called; for multiplication write "
                f"{target} * ({', '.join(ast.unparse(a) for a in node.args)})"
            )
        if func.id in CONSTANTS:
            raise CalculatorError(
                f"'{func.id}' is a constant, not a function; for multiplication write {func.id} * (...)"
            )
        if func.id not in FUNCTIONS:
            raise CalculatorError(f"unknown function '{func.id}'. {_ALLOWED}")
        if node.keywords:
            raise CalculatorError(f"{func.id}() takes positional arguments only")
        args = [self.visit(a) for a in node.args]
        try:
            return FUNCTIONS[func.id](*args)
        except CalculatorError:
            raise
        except (TypeError, ValueError, OverflowError) as exc:
            hint = ""
            if re.search(r"\d,\d{3}(?!\d)", self.expression):
                hint = " (inside a function call commas separate arguments: write 1000000, not 1,000,000)"
            raise CalculatorError(f"{func.id}({', '.join(map(_show, args))}): {exc}{hint}") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
    try:
        span = time_between(expression)
    except ClockTimeError as exc:
        raise CalculatorError(str(exc)) from None
    if span is not None:
        return span
    text, claimed = _claimed_result(_normalise(expression))
    try:
        text = expand_series(text)
    except SeriesError as exc:
        raise CalculatorError(str(exc)) from None
    tree = _parse(expression, text)
    try:
        value = _Evaluator(expression).visit(tree)
    except ZeroDivisionError:
        raise CalculatorError(f"division by zero in {_quoted(expression)}") from None
    except OverflowError:
        raise CalculatorError(
            f"a number in {_quoted(expression)} is too large for a float; use integers or smaller values"
        ) from None
    except RecursionError:
        raise CalculatorError("the expression is nested too deeply") from None
    if _is_int(value) and _digits(value) > MAX_RESULT_DIGITS:
        raise CalculatorError(f"the result has {_digits(value):,} digits; the limit is {MAX_RESULT_DIGITS}")
    result = _format(value)
    if claimed is not None and _claimed_value(expression, claimed) != result:
        return f"{result} (not {claimed}: the result written after '=' was wrong and is ignored)"
    return result


def _claimed_value(expression: str, claimed: str) -> str | None:
    try:
        return _format(_Evaluator(expression).visit(_parse(expression, claimed)))
    except CalculatorError:  # "1.2.3" is no number: not what the expression gives either
        return None


_CLAIMED = re.compile(r"(?P<lhs>.*?[^=<>!])=(?P<rhs>\s*-?[\d.]+(?:e-?\d+)?\s*)")


def _claimed_result(text: str) -> tuple[str, str | None]:
    """("216 / 36 = 6") -> ("216 / 36 ", "6"): one '=' (not ==, <=, >=, !=) followed by a plain number."""
    match = _CLAIMED.fullmatch(text)
    if match is None or "=" in match["lhs"].replace("==", "").replace("<=", "").replace(">=", "").replace("!=", ""):
        return text, None
    return match["lhs"], match["rhs"].strip()


@tool(timeout=5)
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly and return the result.

    Supports + - * / // % ** (or ^), parentheses, comparisons, big integers,
    the constants pi, e, tau, and the functions sqrt, exp, log (log(x) or
    log(x, base)), log10, log2, sin, cos, tan, asin, acos, atan, atan2, sinh,
    cosh, tanh, floor, ceil, round, abs, min, max, factorial (or n!), gcd, lcm,
    hypot, degrees, radians. Angles are in radians. A sum or product may be written
    with an ellipsis: 1 + 2 + ... + 100.

    Args:
        expression: The arithmetic to evaluate, e.g. "37 * 91 + 5" or "sqrt(2) * 10".
    """
    request = current_task()  # inside an agent run: the call is checked against what was asked (calculator_request)
    if (why := missing_function(expression, request)) is not None:
        raise CalculatorError(why)
    return read_with_request(expression, evaluate(expression), request, evaluate)


@hookimpl
def register_tools(register: Any) -> None:
    register(ToolSpec(name="calculator", factory=lambda: calculator, description=calculator.description, default=True))
