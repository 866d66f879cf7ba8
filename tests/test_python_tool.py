"""The python tool on a real Jupyter kernel: state, errors, timeouts, crashes, limits, images."""

from __future__ import annotations

import base64
import importlib.util
import os
import struct
import sys
import zlib

import pytest

import json

from hanlin import Agent, ScriptedModel, load_tool, load_tools, tool_session

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("jupyter_client") is None or importlib.util.find_spec("ipykernel") is None,
    reason="pip install 'hanlin[tools]'",
)


@pytest.fixture(scope="module")
def python(tmp_path_factory):
    tool = load_tool("python", workdir=tmp_path_factory.mktemp("work"), timeout=3, max_output_chars=500)
    yield tool
    tool.toolkit.close()


def run(tool, code: str):
    return tool.invoke({"code": code})


def test_state_persists_and_output_is_returned(python) -> None:
    first = run(python, "x = 37 * 91 + 5\nprint('computed')\nx")
    assert not first.is_error and first.content == "computed\n3372"
    assert run(python, "x + 1").content == "3373"


def test_errors_are_trimmed_tracebacks(python) -> None:
    result = run(python, "def f():\n    return 1 / 0\nf()")
    assert result.is_error and "ZeroDivisionError: division by zero" in result.content
    assert result.content.count("\n") <= 8


def test_a_word_written_as_a_bare_name_gets_the_quoted_line_as_a_hint(python) -> None:
    """Qwen2.5-Coder-0.5B wrote mississippi.count('s'); the bare NameError alone made it re-send the cell."""
    result = run(python, "word_count = 1\nmississippi.count('s')")
    assert result.is_error and "NameError" in result.content
    assert result.content.endswith("put it in quotes:\n'mississippi'.count('s')")
    # sent again unchanged, it would only fail again: the hint's fix runs instead, and the reply says so
    again = run(python, "word_count = 1\nmississippi.count('s')")
    assert not again.is_error and again.content == "[run with 'mississippi' in quotes, as the hint said]\n4"
    # only straight after the failure: another cell in between, and the same cell fails as written
    run(python, "evaluation[::-1]")
    run(python, "1 + 1")
    assert run(python, "evaluation[::-1]").content.startswith("NameError")
    # other errors get no hint
    assert "Hint" not in run(python, "1 / 0").content


def test_a_cell_that_ends_by_returning_runs_with_the_value_as_its_last_line(python) -> None:
    """Qwen2.5-Coder-0.5B wrote its datetime cells as a function body ending in `return days`, six times over, and
    under ReWOO no step sees a hint: the cell could not compile, so it runs fixed at once and says so."""
    cell = "from datetime import date\ndays = (date(2024, 11, 3) - date(2024, 1, 15)).days\nreturn days"
    ran = run(python, cell)
    assert not ran.is_error and ran.content == "[run with its last line's return as a plain value: a cell cannot return]\n293"
    joined = run(python, "from datetime import date; return date(2000, 1, 1).strftime('%A')")
    assert joined.content.endswith("a cell cannot return]\n'Saturday'")
    # a return that is not the last line cannot be read as the cell's value: the error and the hint, nothing run
    early = run(python, "x = 5\nif x:\n    return x\nprint('after')")
    assert early.is_error and "'return' outside function" in early.content and "after" not in early.content
    assert early.content.endswith("end it with the value to show it (or print it).")


def test_a_block_that_lost_its_indentation_is_shown_indented_and_runs_indented_when_sent_again(python) -> None:
    """Code inside a JSON string loses its indentation: Qwen2.5-Coder-0.5B sent this five times (python-09, tools)."""
    cell = "total = 0\nfor i in range(1, 51):\ntotal += i**2\nprint(total)"
    first = run(python, cell)
    assert first.is_error and "IndentationError" in first.content
    assert first.content.endswith("must be indented under it, like this:\nfor i in range(1, 51):\n    total += i**2")
    again = run(python, cell)
    assert not again.is_error and again.content == "[run with the line after each ':' indented, as the hint said]\n42925"
    nested = run(python, "for i in range(3):\nif i:\nprint(i)\nprint('end')")
    assert nested.is_error and run(python, "for i in range(3):\nif i:\nprint(i)\nprint('end')").content.endswith(
        "as the hint said]\n1\n2\nend")
    assert "Hint" not in run(python, "def f():").content  # nothing to indent: no hint and no fix


def test_a_cell_that_reads_sys_argv_is_told_it_holds_the_kernels_command_line(python) -> None:
    """Qwen2.5-Coder-0.5B read its words from sys.argv[1], printed the kernel's "-f" and answered from it."""
    from hanlin.plugins.tools.python_kernel import ARGV_NOTE

    read = run(python, "import sys\nwords = sys.argv[1].split()\nprint(words[-1])")
    assert not read.is_error and read.content == f"-f\n{ARGV_NOTE}"
    failed = run(python, "from sys import argv\nprint(argv[7])")
    assert failed.is_error and "IndexError" in failed.content and ARGV_NOTE in failed.content
    assert ARGV_NOTE not in run(python, "import sys\nprint(sys.version_info[0])").content


def test_quoted_line_leaves_attributes_and_strings_alone() -> None:
    from hanlin.plugins.tools.python_hints import error_hint, quoted_line

    undefined = "name 'evaluation' is not defined"

    assert quoted_line("s = 'evaluation'\nx.evaluation + evaluation[::-1]", "evaluation") == \
        "x.evaluation + 'evaluation'[::-1]"
    assert quoted_line("print('evaluation')", "evaluation") is None
    assert error_hint("NameError", undefined, "print(evaluation") is None  # does not tokenize: no line to show
    assert error_hint("NameError", "name 'len' is not defined", "len(x)") is None
    fixed = error_hint("NameError", undefined, "r = evaluation[::-1]\nprint(r, len(evaluation))").fixed_code
    assert fixed == "r = 'evaluation'[::-1]\nprint(r, len('evaluation'))"
    for binds in ("print(evaluation)\nevaluation = 1", "for evaluation in x: pass"):
        assert error_hint("NameError", undefined, binds) is None  # a variable used too early, not a word
    assert error_hint("NameError", undefined, "evaluation += 1").fixed_code == "evaluation = 0\nevaluation += 1"
    # a name the cell calls is a function never defined, not a word: quoting it would be no fix
    assert error_hint("NameError", "name 'is_prime' is not defined", "print(is_prime(7))") is None


def test_a_name_used_without_its_import_is_shown_the_import_and_runs_with_it_when_sent_again(python) -> None:
    """Qwen2.5-Coder-0.5B imported only `date` and used `timedelta` (python-15, code protocol); told to quote the
    name, it re-sent the cell until the run gave up."""
    cell = "from datetime import date\nd = date(2024, 2, 20) + timedelta(days=100)\nprint(d)"
    first = run(python, cell)
    assert first.is_error and first.content.endswith("it needs an import first:\nfrom datetime import timedelta")
    again = run(python, cell)
    assert again.content == "[run with 'from datetime import timedelta' added first, as the hint said]\n2024-05-30"
    assert run(python, "print(math.floor(2.5))").content.endswith("needs an import first:\nimport math")
    assert run(python, "print(math.floor(2.5))").content.endswith("as the hint said]\n2")
    # a module off the list is not imported here to look inside (antigravity would open a browser)
    assert "import antigravity" not in run(python, "antigravity.fly()").content
    assert "antigravity" not in sys.modules


def test_a_total_added_to_before_it_is_set_starts_from_zero_when_sent_again(python) -> None:
    """`count += 1` in a loop, count never set: sent six times over (python-19, tools protocol)."""
    cell = "for i in range(1, 10001):\n    if int(i ** 0.5) ** 2 == i:\n        count += 1\nprint(count)"
    first = run(python, cell)
    assert first.is_error and first.content.endswith("set it before the loop:\ncount = 0")
    assert run(python, cell).content == "[run with 'count = 0' first, as the hint said]\n100"


def test_statements_crammed_on_one_line_and_percentages_get_their_fix(python) -> None:
    """`for ...: if ...: ...` on one line (python-08, tools protocol) and `17% * 2350` (calc-05, code protocol), each
    re-sent unchanged until the run gave up."""
    cell = "n = 0\nfor i in range(1, 501): if i % 3 == 0 or i % 5 == 0: n += 1\nprint(n)"
    first = run(python, cell)
    assert first.is_error and first.content.endswith(
        "give each its own line, indented:\nfor i in range(1, 501):\n    if i % 3 == 0 or i % 5 == 0: n += 1")
    assert run(python, cell).content == "[run with each statement after a ':' on its own line, as the hint said]\n233"
    first = run(python, "print(25% * 80)")
    assert first.is_error and first.content.endswith("a percentage is a fraction: 25 / 100")
    assert run(python, "print(25% * 80)").content == \
        "[run with each percentage written as a fraction, as the hint said]\n20.0"


def test_a_number_written_with_a_leading_zero_gets_its_fix(python) -> None:
    """`datetime(2024, 11, 03)`: Python's message suggests 0o, which the model took for the fix (python-05 and
    python-14, tools protocol, re-sent to the end of the run)."""
    from hanlin.plugins.tools.python_syntax_hints import syntax_hint

    cell = "from datetime import date\nprint((date(2024, 11, 03) - date(2024, 01, 15)).days)"
    first = run(python, cell)
    assert first.is_error and first.content.endswith(
        "Hint: in Python a whole number cannot start with 0: write 3, not 03 (an 0o prefix would make it octal, which "
        "a date or a count is not)")
    assert run(python, cell).content == "[run with the leading zeros of each number dropped, as the hint said]\n293"
    # strings, comments, floats, 0o/0x literals and a plain 00 are not touched
    assert syntax_hint('x = "03"  # 03\nprint(x, 0o7, 0x1f, 00, 007.5, 0.5)') is None
    assert syntax_hint('print(05, "05", 0o7)  # 05').fixed_code == 'print(5, "05", 0o7)  # 05'


def test_a_function_looked_for_in_the_wrong_module_is_imported_from_the_right_one(python) -> None:
    """`math.isprime(i)`, sent six times over (python-01 and python-16, tools protocol): sympy has isprime."""
    from hanlin.plugins.tools.python_hints import error_hint

    first = run(python, "import math\nprint(math.mean([1, 2, 6]))")
    assert first.is_error and first.content.endswith(
        "Hint: math has no mean; statistics has one:\nfrom statistics import mean\nthen call mean(...)")
    assert run(python, "import math\nprint(math.mean([1, 2, 6]))").content == \
        "[run with 'from statistics import mean', as the hint said]\n3"
    prime = error_hint("AttributeError", "module 'math' has no attribute 'isprime'",
                       "import math\nprint([i for i in range(9) if math.isprime(i)])")
    assert prime.fixed_code == "from sympy import isprime\nimport math\nprint([i for i in range(9) if isprime(i)])"
    nowhere = "module 'math' has no attribute 'nothing_has_this'"
    assert error_hint("AttributeError", nowhere, "math.nothing_has_this()") is None


def test_a_name_imported_from_the_wrong_module_is_imported_from_the_right_one(python) -> None:
    """`from math import divisors` (python-17, code protocol; the model then tried `pip install math` until the run
    gave up): sympy has divisors."""
    from hanlin.plugins.tools.python_hints import error_hint

    cell = "from math import divisors\nprint(len(divisors(360)))"
    first = run(python, cell)
    assert first.is_error
    assert first.content.endswith("Hint: math has no divisors; sympy has one:\nfrom sympy import divisors")
    assert run(python, cell).content == "[run with 'from sympy import divisors', as the hint said]\n24"
    several = error_hint("ImportError", "cannot import name 'mean' from 'math' (unknown location)",
                         "import os\n    from math import sqrt, mean as m  # both\nprint(m([1, 2]), sqrt(4))")
    assert several.fixed_code == ("import os\n    from math import sqrt\n    from statistics import mean as m\n"
                                  "print(m([1, 2]), sqrt(4))")
    nowhere = "cannot import name 'nothing_has_this' from 'math'"
    assert error_hint("ImportError", nowhere, "from math import nothing_has_this") is None
    assert error_hint("ImportError", "cannot import name 'mean' from 'math'", "import math") is None  # no such line


def test_syntax_hints_split_only_real_headers_and_leave_modulo_alone() -> None:
    from hanlin.plugins.tools.python_syntax_hints import syntax_hint

    assert syntax_hint("for i in range(3): print(i % 2)") is None  # compiles: nothing to fix
    nested = syntax_hint("if d[1:2] == ':': for f in [lambda x: x]: print(f(1))")
    assert nested is not None and nested.fixed_code == "if d[1:2] == ':':\n    for f in [lambda x: x]: print(f(1))"
    assert syntax_hint("x = 10 % 3 +") is None  # a broken cell no fix makes compile gets no hint
    assert syntax_hint("rate = 4.5%\nprint(rate, 7 % 2)").fixed_code == "rate = (4.5 / 100)\nprint(rate, 7 % 2)"


def test_a_number_the_cell_computed_and_printed_nowhere_is_shown_after_its_output(python) -> None:
    """Under the tools protocol Qwen2.5-Coder-0.5B computed `days_difference` and printed a dict in its template's call
    format instead (python-05, -09, -13, -14 of tooluse), then answered with a guess."""
    cell = ("from datetime import datetime\nstart = datetime(2024, 1, 15)\nend = datetime(2024, 11, 3)\n"
            "days_difference = (end - start).days\n"
            "result = {'name': 'days_difference', 'arguments': {'start': str(start.date())}}\nprint(result)")
    assert run(python, cell).content == ("{'name': 'days_difference', 'arguments': {'start': '2024-01-15'}}\n"
                                         "(not printed: days_difference = 293)")
    # a value the cell read again, or printed, or that is not a number, is not repeated
    assert run(python, "n = 50\ntotal = sum(i * i for i in range(n + 1))\nprint(total)").content == "42925"
    assert run(python, "k = 6 * 7\nprint('the answer is', 42)").content == "the answer is 42"
    assert run(python, "rate, n = 0.3, -2\nprint('set')").content == "set"  # literals are inputs, not results
    assert run(python, "label = 'x' * 2\nflag = 2 > 1\nprint('done')").content == "done"
    # a total that a loop built and nothing printed; a global a function reads when called later is used
    assert run(python, "acc = 0\nfor i in range(4):\n    acc += i\nprint('looped')").content == \
        "looped\n(not printed: acc = 6)"
    assert run(python, "def f():\n    return g * 2\ng = 2 * 2\nprint('defined')").content == "defined"
    # a value the loop itself reads is an intermediate; what the loop computed last is shown
    assert run(python, "acc = 0\nfor i in range(4):\n    acc += i\n    mean = acc / 4\nprint('looped')").content == \
        "looped\n(not printed: mean = 1.5)"
    assert run(python, "x = 1.5\nx").content == "1.5"  # the cell's value is its output
    # only numbers are read back: an object the note would not show is never rendered (a big list, a frame)
    cell = ("class Loud:\n    def __repr__(self):\n        open('repr_ran', 'w').close()\n        return 'L'\n"
            "obj = Loud()\nprint(1)")
    assert run(python, cell).content == "1"
    assert run(python, "import os\nos.path.exists('repr_ran')").content == "False"


def test_a_cell_that_prints_nothing_shows_the_variables_it_ended_by_setting(python) -> None:
    """Shown "(no output)" after `total += i**2` in a loop, Qwen2.5-Coder-0.5B answered with an invented number."""
    assert run(python, "total = 0\nfor i in range(1, 51):\n    total += i**2").content == "(no output; total = 42925)"
    assert run(python, "words = ['pear', 'fig']\nwords.sort()").content == "(no output; words = ['fig', 'pear'])"
    assert run(python, "a, b = 1, 'x'").content == "(no output; a = 1; b = 'x')"
    assert run(python, "import math").content == "(no output)"  # nothing was set
    long = run(python, "s = 'y' * 1000").content
    assert long.startswith("(no output; s = 'yyy") and long.endswith("...)") and len(long) < 400
    assert run(python, "d = {'b': 1, 'a': 2}").content == "(no output; d = {'b': 1, 'a': 2})"  # as repr shows it
    # a big container is read as its size and first items: the items past them are never rendered
    cell = ("class Loud:\n    def __repr__(self):\n        open('big_repr_ran', 'w').close()\n        return 'L'\n"
            "xs = list(range(10**6)) + [Loud()]")
    assert run(python, cell).content.startswith("(no output; xs = <list of 1000001 items> [0, 1, 2, 3, ")
    assert run(python, "import os\nos.path.exists('big_repr_ran')").content == "False"
    assert run(python, "ys = set(range(5000))").content.startswith("(no output; ys = <set of 5000 items> [0, 1, ")
    # the silent cells that read the values stay out of the history: the next cell's number follows on
    before = run(python, "get_ipython().execution_count").content
    run(python, "c = 3")
    assert int(run(python, "get_ipython().execution_count").content) == int(before) + 2


def test_timeout_interrupts_and_keeps_state(python) -> None:
    result = run(python, "kept = 'yes'\nimport time\nwhile True:\n    time.sleep(0.05)")
    assert result.is_error and result.content.endswith("timed out after 3 s and was interrupted; variables defined "
                                                       "before that are kept")  # no hint: no fix keeps its meaning
    assert run(python, "kept").content == "'yes'"


def test_a_function_that_calls_itself_twice_runs_again_with_a_cache_after_a_timeout(python) -> None:
    """The textbook recursive fibonacci(40) (python-20, react and rewoo) took 20 to 40 s, and after a timeout the
    model re-sent the same cell until the run gave up; shown the fix, it answered with a number of its own."""
    define = ("def fibonacci(n):\n    if n <= 2:\n        return 1\n    else:\n"
              "        return fibonacci(n-1) + fibonacci(n-2)\n\n")
    at_once = run(python, define + "print(fibonacci(40))")
    assert not at_once.is_error
    assert at_once.content == "[timed out after 3 s; run again with @functools.cache on fibonacci]\n102334155"
    looped = define.replace("fibonacci", "fib") + "for n in [36, 40]:\n    print(n, fib(n))"  # a loop may print twice
    first = run(python, looped)
    assert first.is_error and "timed out after 3 s" in first.content
    assert first.content.endswith("Hint: fib calls itself twice in each call, so the work multiplies with every step "
                                  "of its argument. With @functools.cache on it each result is computed once:\n"
                                  "import functools\n@functools.cache\n" + looped)
    again = run(python, looped)
    assert again.content == "[run with @functools.cache on fib, as the hint said]\n36 14930352\n40 102334155"


def test_the_cache_hint_leaves_single_and_cached_recursion_alone() -> None:
    from hanlin.plugins.tools.python_timeout_hints import reruns_safely, timeout_hint

    assert timeout_hint("def f(n):\n    return 1 if n < 2 else n * f(n - 1)\nf(5000)") is None  # one call: linear
    cached = "import functools\n@functools.lru_cache(None)\ndef f(n):\n    return n if n < 2 else f(n-1) + f(n-2)"
    assert timeout_hint(cached) is None
    assert timeout_hint("while True:\n    pass") is None and timeout_hint("def (") is None
    assert reruns_safely("import math\nx: int = 2\ndef f():\n    pass\nclass C: pass\nprint(f())")
    assert not reruns_safely("total = []\nfor i in range(9):\n    total.append(i)") and not reruns_safely("x += 1")
    nested = timeout_hint("class C:\n    def paths(self, n):\n        return 1 if n < 2 else "
                          "self.paths(n-1) + paths(n-2)\n\n    @staticmethod\n    def walk(n):\n"
                          "        return 0 if n < 1 else walk(n-1) + walk(n-2) + walk(n-3)\n")
    assert nested.fix == "@functools.cache on walk"  # self.paths is an attribute call: not counted, left alone
    assert "    @staticmethod\n    @functools.cache\n    def walk(n):" in nested.fixed_code
    assert "walk calls itself three times" in nested.text
    method = "class A:\n    def f(self, n):\n        return n if n < 2 else f(n-1) + f(n-2)"
    long = timeout_hint("x = 1\n" * 40 + method)
    assert long.text.endswith("once:\nimport functools\n    @functools.cache\n    def f(self, n):\n"
                              "        return n if n < 2 else f(n-1) + f(n-2)")  # a long cell: its function only


def test_input_fails_fast(python) -> None:
    result = run(python, "input('your name? ')")
    assert result.is_error and "input() is not available" in result.content


def test_long_output_is_cut_with_a_note(python) -> None:
    result = run(python, "print('a' * 5000)")
    assert "characters cut" in result.content and len(result.content) < 700


def test_memory_limit(python) -> None:
    """The limit is read back inside the kernel (an allocation failing alone would also fail on a small machine
    without any limit); the sandbox tests cover cpu_seconds and that the limits cannot be raised."""
    assert run(python, "import resource\nresource.getrlimit(resource.RLIMIT_AS)").content == f"({2 ** 31}, {2 ** 31})"
    result = run(python, "block = bytearray(3 * 1024 ** 3)")
    assert result.is_error and "MemoryError" in result.content
    assert run(python, "1 + 1").content == "2"  # the kernel survived


def _png() -> bytes:
    raw = b"\x00\xff\x00\x00"  # one red pixel
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def test_images_are_saved_as_files(python) -> None:
    code = f"import base64\nfrom IPython.display import Image, display\ndisplay(Image(data=base64.b64decode({base64.b64encode(_png())!r})))"
    result = run(python, code)
    assert not result.is_error and result.artifacts
    assert open(result.artifacts[0], "rb").read() == _png()
    assert f"[image saved to {result.artifacts[0]}]" in result.content


def test_working_directory(python) -> None:
    result = run(python, "import os\nopen('note.txt', 'w').write('hi')\nos.getcwd()")
    workdir = result.content.strip("'")
    assert os.path.isfile(os.path.join(workdir, "note.txt"))


def test_a_dead_kernel_is_restarted_and_the_model_is_told(python) -> None:
    run(python, "before = 1")
    died = run(python, "import os\nos._exit(1)")
    assert died.is_error and "restarted" in died.content and "variables and imports are gone" in died.content
    assert "NameError" in run(python, "before").content
    assert run(python, "2 * 21").content == "42"


def test_agent_uses_the_python_tool(tmp_path) -> None:
    (tool,) = [load_tool("python", workdir=tmp_path)]
    model = ScriptedModel([
        'Thought: compute\nAction: python\nAction Input: {"code": "sum(range(101))"}',
        "Thought: done\nFinal Answer: 5050",
    ])
    agent = Agent(model, [tool])
    try:
        result = agent.run("Sum 0..100")
        assert result.status == "answered" and result.messages[2].content == "5050"
    finally:
        agent.close()
    assert tool.toolkit.sessions() == []  # the run had no session_id: its kernel ended with the run


def _kernel_pids(toolkit) -> set[int]:
    return {k._km.provisioner.process.pid for k in toolkit._kernels.values() if k._km is not None}


def test_sessions_get_their_own_kernels_and_folders(tmp_path) -> None:
    (tool,) = load_tools(["python"], workdir=tmp_path, max_kernels=2)
    kit = tool.toolkit

    def step(code: str) -> str:
        return f'Thought: run\nAction: python\nAction Input: {json.dumps({"code": code})}'

    script = ScriptedModel([
        step("secret = 'ada'; open('mine.txt', 'w').write('a')"), "Thought: ok\nFinal Answer: set",  # session a
        step("print(globals().get('secret', 'unset'))"), "Thought: ok\nFinal Answer: checked",      # session b
        step("print(secret)"), "Thought: ok\nFinal Answer: again",                                  # a again
        step("print(1)"), "Thought: ok\nFinal Answer: c",                                           # c evicts b
        step("print(globals().get('secret', 'unset'))"), "Thought: ok\nFinal Answer: b back",       # b back
    ])
    agent = Agent(script, [tool])
    try:
        assert agent.run("set", session_id="a").status == "answered"
        def observed(result) -> str:
            return [m for m in result.messages if m.role == "tool"][-1].content

        assert "unset" in observed(agent.run("check", session_id="b"))  # no leak between sessions
        assert "ada" in observed(agent.run("again", session_id="a"))  # state kept across runs
        assert (kit.folder("a") / "mine.txt").exists() and not (kit.folder("b") / "mine.txt").exists()
        assert kit.sessions() == ["b", "a"]
        agent.run("c", session_id="c")  # pool of 2: b, least recently used, is shut down
        assert kit.sessions() == ["a", "c"]
        back = observed(agent.run("b again", session_id="b"))
        assert "state was discarded" in back and "unset" in back
        pids = _kernel_pids(kit)
        agent.reset("a")
        assert "a" not in kit.sessions()
    finally:
        agent.close()
    assert kit.sessions() == []
    for pid in pids:  # the kernel processes are gone, not orphaned
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_concurrent_sessions_run_in_parallel(tmp_path) -> None:
    import threading
    import time

    (tool,) = load_tools(["python"], workdir=tmp_path)
    kit = tool.toolkit
    for key in ("s1", "s2"):  # start both kernels first: startup time is not what is measured
        with tool_session(key):
            assert tool.invoke({"code": "1"}).content.strip() == "1"
    spans: dict[str, tuple[float, float]] = {}

    def work(key: str) -> None:
        with tool_session(key):
            start = time.perf_counter()
            result = tool.invoke({"code": "import time; time.sleep(1.0); print('done')"})
            spans[key] = (start, time.perf_counter())
            assert "done" in result.content

    threads = [threading.Thread(target=work, args=(k,)) for k in ("s1", "s2")]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        (a0, a1), (b0, b1) = spans["s1"], spans["s2"]
        assert max(a0, b0) < min(a1, b1)  # the two cells overlapped in time
    finally:
        kit.close()


def test_ctrl_c_leaves_no_kernel_behind(tmp_path) -> None:
    import signal
    import subprocess
    import sys
    import time

    script = (
        "import time\n"
        "from hanlin import load_tool\n"
        "tool = load_tool('python')\n"
        "tool.invoke({'code': '1'})\n"
        "(kernel,) = tool.toolkit._kernels.values()\n"
        "print(kernel._km.provisioner.process.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    # The program starts as a user's would, with Ctrl-C's default handling: a library loaded earlier in this test
    # process may have set SIGINT to "ignore", which a child inherits and Python then never turns into
    # KeyboardInterrupt (seen in the full suite: the child slept through the signal).
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        kernel_pid = int(proc.stdout.readline())
        os.kill(kernel_pid, 0)  # alive while the program runs
        proc.send_signal(signal.SIGINT)
        # communicate() drains stderr while waiting: a child blocked on a full pipe would never exit
        _, err = proc.communicate(timeout=30)
        assert "KeyboardInterrupt" in err
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(kernel_pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"kernel {kernel_pid} outlived its program after Ctrl-C")
    finally:
        proc.kill()
