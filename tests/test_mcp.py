"""MCP both ways, with real processes: hanlin's client against a third-party-style server
(tests/data/mcp_notes_server.py) and against hanlin's own server (`hanlin mcp serve`), and an agent
using an MCP tool. No mocks: every server here is a subprocess speaking MCP over stdio.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from hanlin import Agent, ScriptedModel, ToolError, ToolResultEvent, load_tools

pytest.importorskip("mcp", reason="pip install 'hanlin[mcp]'")
pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="process checks read /proc (Linux)")

from hanlin.plugins.integrations.mcp_client import load_mcp_tools  # noqa: E402
from hanlin.plugins.integrations.mcp_tool import McpTool  # noqa: E402

NOTES = str(Path(__file__).parent / "data" / "mcp_notes_server.py")
HANLIN_SERVER = ["-m", "hanlin.cli", "mcp", "serve", "--tool", "calculator"]


def proc(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process from /proc, or None when there is none."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    state, ppid = text.rsplit(")", 1)[1].split()[:2]
    return state, int(ppid)


def gone(pid: int) -> bool:
    """No such process: neither running nor a zombie child of ours that nobody reaped.

    (A zombie whose parent exited is dead; init reaps it when it gets to it.)"""
    found = proc(pid)
    return found is None or (found[0] == "Z" and found[1] != os.getpid())


@pytest.fixture(scope="module")
def notes():
    kit = load_mcp_tools(sys.executable, [NOTES], timeout=10)
    yield kit
    kit.close()


def by_name(kit) -> dict[str, McpTool]:
    return {t.name: t for t in kit.tools()}


# ---- the client against a third-party server ------------------------------------------------------
def test_tools_keep_the_servers_names_descriptions_and_schemas(notes) -> None:
    tools = by_name(notes)
    assert set(tools) == {"add_note", "search_notes", "delete_all_notes", "slow_count", "meet", "crash",
                          "export_notes", "notes_stats"}
    add = tools["add_note"]
    assert add.description.startswith("Store a note and return its number.") and "tags:" in add.description
    # the server's inputSchema, verbatim (titles, anyOf, defaults and all), is the tool's JSON schema
    assert add.parameters == add.input_schema
    assert add.parameters["required"] == ["title", "text"]
    assert add.parameters["properties"]["tags"]["anyOf"][0] == {"items": {"type": "string"}, "type": "array"}
    assert add.spec["parameters"] == add.input_schema and add.to_openai()["function"]["name"] == "add_note"
    # a dotted MCP name becomes a valid hanlin name and still calls the right remote tool
    stats = tools["notes_stats"]
    assert stats.remote_name == "notes.stats"
    assert json.loads(stats.invoke({}).content)["pid"] == notes.pid


def test_calls_work_sync_and_async(notes) -> None:
    tools = by_name(notes)
    first = tools["add_note"].invoke({"title": "milk", "text": "buy oat milk", "tags": ["shopping"]})
    assert not first.is_error and first.content.startswith("note ") and first.content.endswith("saved: milk")
    second = asyncio.run(tools["add_note"].ainvoke('{"title": "call Ada", "text": "about the paper"}'))
    assert not second.is_error
    found = tools["search_notes"].invoke({"query": "shopping"})
    assert not found.is_error and "milk: buy oat milk" in found.content and "Ada" not in found.content
    assert found.data == {"result": found.content}  # structured content is kept for programmatic callers


def test_non_text_content_is_described(notes) -> None:
    result = by_name(notes)["export_notes"].invoke({})
    assert not result.is_error
    lines = result.content.split("\n")
    assert lines[0].endswith("notes exported")
    assert lines[1] == "[image: image/png, 68 bytes]"
    assert lines[2] == "[resource notes://all (application/json)]"


def test_a_raising_tool_becomes_an_error_observation(notes) -> None:
    result = by_name(notes)["delete_all_notes"].invoke({"confirm": "no"})
    assert result.is_error
    assert "delete_all_notes" in result.content and "confirm must be 'yes', got 'no'" in result.content


def test_bad_arguments_are_stopped_with_the_schemas_reason(notes) -> None:
    add = by_name(notes)["add_note"]
    missing = add.invoke({"title": "no body"})
    assert missing.is_error and missing.content == (
        "invalid arguments for tool 'add_note': (arguments): 'text' is a required property")
    wrong = add.invoke({"title": "x", "text": "y", "tags": ["ok", 5]})
    assert wrong.is_error and "tags.1: 5 is not of type 'string'" in wrong.content
    assert add.invoke("{not json").is_error
    # the agent's pre-call check (Tool.validate) sees the same problem as a pydantic ValidationError
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="'text' is a required property"):
        add.validate({"title": "x"})
    # and arguments that pass here but not on the server come back as the server's error
    server_side = asyncio.run(notes.acall(by_name(notes)["slow_count"], {"seconds": "soon"}))
    assert server_side.is_error and "seconds" in server_side.content


def test_concurrent_calls_run_at_once(notes) -> None:
    meet = by_name(notes)["meet"]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:  # sync callers on four threads
        results = list(pool.map(lambda _: meet.invoke({"group": "threads", "expected": 4}), range(4)))
    assert [r.content for r in results] == ["met 4"] * 4

    async def together():  # async callers in one loop
        return await asyncio.gather(*(meet.ainvoke({"group": "tasks", "expected": 3}) for _ in range(3)))

    assert [r.content for r in asyncio.run(together())] == ["met 3"] * 3


def test_a_slow_call_times_out_is_cancelled_on_the_server_and_the_session_lives_on(notes) -> None:
    slow = by_name(notes)["slow_count"]
    slow.timeout = 0.5
    try:
        result = slow.invoke({"seconds": 30})
    finally:
        slow.timeout = notes.timeout
    assert result.is_error and "did not finish within 0.5 s" in result.content
    stats = by_name(notes)["notes_stats"]
    deadline = time.monotonic() + 5
    while json.loads(stats.invoke({}).content)["cancelled"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert json.loads(stats.invoke({}).content)["cancelled"] == 1  # the server was told to stop the work
    assert not by_name(notes)["search_notes"].invoke({"query": "milk"}).is_error


def test_a_server_killed_mid_call_gives_a_clear_error_and_close_leaves_no_process() -> None:
    kit = load_tools(["mcp"], command=sys.executable, args=[NOTES], prefix="n_", timeout=20)[0].toolkit
    tools = by_name(kit)
    assert sorted(tools)[0] == "n_add_note"
    pid = kit.pid
    assert not gone(pid) and proc(pid)[1] == os.getpid()  # our child, alive
    pending: list = []
    caller = threading.Thread(target=lambda: pending.append(tools["n_slow_count"].invoke({"seconds": 30})))
    caller.start()
    time.sleep(0.3)  # the call is in flight
    os.kill(pid, signal.SIGKILL)
    caller.join(timeout=10)
    assert not caller.is_alive(), "a call to a dead server must not hang"
    assert pending[0].is_error and "is gone: it was killed by signal SIGKILL" in pending[0].content
    later = tools["n_search_notes"].invoke({"query": "x"})
    assert later.is_error and "is gone" in later.content and "load them again" in later.content
    kit.close()
    assert gone(pid)


def test_a_crashing_server_reports_its_exit_code_and_stderr() -> None:
    kit = load_mcp_tools(sys.executable, [NOTES])
    result = by_name(kit)["crash"].invoke({"message": "fatal: the notes index is corrupt"})
    assert result.is_error and "exited with code 3" in result.content
    assert "fatal: the notes index is corrupt" in result.content
    kit.close()


def test_close_stops_the_server_and_later_calls_say_so() -> None:
    kit = load_mcp_tools(sys.executable, [NOTES])
    pid, add = kit.pid, by_name(kit)["add_note"]
    kit.close()
    assert gone(pid) and proc(pid) is None  # stopped and reaped
    result = add.invoke({"title": "a", "text": "b"})
    assert result.is_error and "was closed" in result.content
    kit.close()  # idempotent


def test_interpreter_exit_stops_even_a_stubborn_server_without_close() -> None:
    # This server ignores both the closed stdin and SIGTERM: only the SIGKILL at the end of close() stops it,
    # and close() runs from atexit because the program never calls it.
    script = textwrap.dedent(f"""
        import sys
        from hanlin.plugins.integrations.mcp_client import load_mcp_tools
        kit = load_mcp_tools(sys.executable, [{NOTES!r}], env={{"NOTES_STUBBORN": "1"}})
        print(kit.pid, flush=True)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    pid = int(out.stdout.split()[0])
    deadline = time.monotonic() + 5
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(pid), "the server outlived the program that started it"


def test_start_up_failures_are_clear(tmp_path) -> None:
    with pytest.raises(ToolError, match="cannot start MCP server 'no-such-mcp-server-xyz'.*installed"):
        load_mcp_tools("no-such-mcp-server-xyz")
    with pytest.raises(ToolError, match=r"(?s)exited during start-up with code 4.*stderr:\nno config found"):
        load_mcp_tools(sys.executable, ["-c", "import sys; print('no config found', file=sys.stderr); sys.exit(4)"])
    silent = tmp_path / "silent.py"
    silent.write_text("import time\ntime.sleep(60)\n")
    started = time.monotonic()
    with pytest.raises(ToolError, match="did not finish starting .* within 1 s"):
        load_mcp_tools(sys.executable, [str(silent)], startup_timeout=1)
    assert time.monotonic() - started < 15  # it was stopped, not waited for
    with pytest.raises(Exception, match="args must be a list"):
        load_mcp_tools(sys.executable, NOTES)
    with pytest.raises(Exception, match="needs command="):
        load_tools(["mcp"])


def test_only_picks_tools_and_names_the_missing_ones() -> None:
    kit = load_mcp_tools(sys.executable, [NOTES], only=["search_notes", "notes.stats"])
    try:
        assert [t.name for t in kit.tools()] == ["search_notes", "notes_stats"]
    finally:
        kit.close()


# ---- the client against hanlin's own server ---------------------------------------------------------
def test_hanlin_serves_its_calculator_over_mcp() -> None:
    kit = load_mcp_tools(sys.executable, HANLIN_SERVER, timeout=20)
    try:
        assert kit.server_name == "hanlin"
        (calc,) = kit.tools()
        assert calc.name == "calculator" and calc.parameters["required"] == ["expression"]
        assert calc.parameters["properties"]["expression"]["type"] == "string"
        assert calc.invoke({"expression": "2^10 + 1,000"}).content == "2024"
        failed = calc.invoke({"expression": "1/0"})
        assert failed.is_error and "division by zero" in failed.content
        # arguments the client lets through are validated by hanlin's Tool.invoke on the server
        bad = asyncio.run(kit.acall(calc, {"expression": 5}))
        assert bad.is_error and "invalid arguments for tool 'calculator'" in bad.content
        # an unknown tool is a protocol error, reported as such
        ghost = McpTool(kit, "ghost", "ghost", "not on the server", {"type": "object"}, 5)
        refused = ghost.invoke({})
        assert refused.is_error and "unknown tool 'ghost'" in refused.content and "calculator" in refused.content
    finally:
        kit.close()


def test_mcp_tools_command_lists_a_servers_tools() -> None:
    out = subprocess.run([sys.executable, "-m", "hanlin.cli", "mcp", "tools", "--", sys.executable, NOTES],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "notes_stats  This server's pid" in out.stdout and "add_note  Store a note" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "hanlin.cli", "mcp", "serve", "--tool", "no-such-tool"],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert bad.returncode == 2 and "unknown tool 'no-such-tool'" in bad.stderr


# ---- an agent using an MCP tool ----------------------------------------------------------------------
def test_an_agent_calls_an_mcp_tool_and_answers(notes) -> None:
    tools = by_name(notes)
    model = ScriptedModel([
        'Thought: I should look in the notes.\nAction: search_notes\nAction Input: {"query": "oat"}',
        "Thought: The note says to buy oat milk.\nFinal Answer: Buy oat milk.",
    ])
    agent = Agent(model, [tools["search_notes"], tools["add_note"]])
    result = agent.run("What should I buy?")
    assert result.status == "answered" and result.output == "Buy oat milk."
    observed = [e for e in result.events if isinstance(e, ToolResultEvent)]
    assert len(observed) == 1 and not observed[0].is_error and "milk: buy oat milk" in observed[0].content
    # the model was shown the server's schema
    assert json.dumps(tools["add_note"].input_schema, ensure_ascii=False) in model.calls[0][0][0].content


def test_import_hanlin_does_not_import_mcp() -> None:
    code = "import sys, hanlin; hanlin.get_plugin_manager().tools(); print('mcp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_the_server_and_its_command_line_are_separate_modules() -> None:
    # A program that serves tools over MCP needs the server, not typer and the CLI's commands.
    code = ("import sys; from hanlin.plugins.integrations.mcp_server import build_server, serve_tools; "
            "print('typer' in sys.modules, 'hanlin.plugins.integrations.mcp_cli' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False False", out.stderr
    from hanlin.plugins.integrations import mcp_cli, mcp_server

    assert not hasattr(mcp_server, "mcp_cli") and callable(mcp_cli.mcp_cli)
