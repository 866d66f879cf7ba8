"""The entry-point path, for real: install plugin distributions and use them from a fresh process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A target dir holding two real installed distributions: the example plugin and a broken one."""
    target = tmp_path_factory.mktemp("site")
    for package in (ROOT / "examples" / "plugin_package", ROOT / "tests" / "broken_plugin_pkg"):
        # built from a copy: setuptools writes build/ and *.egg-info into the source folder, and a leftover one from
        # another run must not change what is installed
        source = tmp_path_factory.mktemp("build") / package.name
        shutil.copytree(package, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
        out = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
             "--target", str(target), str(source)],
            capture_output=True, text=True, cwd=source.parent,
            # a checkout on PYTHONPATH shadows PyPI packages with its top-level folders (transformers imports the
            # `kernels` package from the Hub, and would find hanlin's kernels/ folder)
            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        )
        assert out.returncode == 0, f"pip could not install {package.name}:\n{out.stdout}\n{out.stderr}"
    return target


def run(site: Path, *args: str, env: dict | None = None, code: str | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("HANLIN_PLUGINS", "HANLIN_DISABLE_PLUGINS")}
    environ.update({"PYTHONPATH": str(site), **(env or {})})
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "hanlin.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=environ, timeout=120)


def test_installed_plugin_tools_are_listed_with_their_plugin(site) -> None:
    out = run(site, "tools", "--json")
    assert out.returncode == 0, out.stderr
    tools = {t["name"]: t for t in json.loads(out.stdout)}
    assert tools["reverse_text"]["plugin"] == "demo-text-tools"
    assert tools["word_count"]["parameters"]["required"] == ["text"]
    assert "calculator" in tools  # built-ins are still there


def test_plugins_json_shows_sources_and_the_broken_plugin(site) -> None:
    out = run(site, "plugins", "--json")
    assert out.returncode == 0, out.stderr
    infos = {i["name"]: i for i in json.loads(out.stdout)}
    assert set(next(iter(infos.values()))) == {"name", "kinds", "source", "status", "error"}
    assert infos["demo-text-tools"] == {
        "name": "demo-text-tools", "kinds": ["tools"], "source": "entry_point", "status": "loaded", "error": None
    }
    broken = infos["broken"]
    assert broken["status"] == "failed" and broken["source"] == "entry_point"
    assert "No module named 'hanlin_dependency_that_is_not_installed'" in broken["error"]
    assert infos["hanlin.plugins.protocols.react"]["status"] == "loaded"


def test_the_plugin_tool_works_in_an_agent_run(site) -> None:
    code = """
import json
from hanlin import Agent, ScriptedModel, load_tools
model = ScriptedModel([
    'Thought: reverse it\\nAction: reverse_text\\nAction Input: {"text": "hanlin"}',
    'Thought: done\\nFinal Answer: nilnah',
])
result = Agent(model, load_tools(["reverse_text"])).run("Reverse 'hanlin'")
print(json.dumps({"status": result.status, "observation": result.messages[2].content, "output": result.output}))
"""
    out = run(site, code=code)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"status": "answered", "observation": "nilnah", "output": "nilnah"}


def test_hanlin_run_uses_the_plugin_model_runtime_and_tool(site) -> None:
    """`hanlin run` end to end through entry points: the plugin's model, on its runtime, calling its tool."""
    question = "How many words are in 'the quick brown fox jumps'?"
    out = run(site, "run", question, "--model", "demo-scripted", "--tool", "word_count")
    assert out.returncode == 0, out.stderr
    assert '→ word_count({"text": "the quick brown fox jumps"})' in out.stdout
    assert "← word_count: 5" in out.stdout
    assert "Final answer: The text has 5 words." in out.stdout
    record = json.loads(run(site, "run", question, "-m", "demo-scripted", "-r", "scripted-demo", "-t", "word_count", "--json").stdout)
    assert record["status"] == "answered" and record["output"] == "The text has 5 words."
    assert [m["role"] for m in record["messages"]] == ["user", "assistant", "tool", "assistant"]
    assert record["messages"][2]["content"] == "5"
    models = {m["name"]: m for m in json.loads(run(site, "models", "--json").stdout)}
    assert models["demo-scripted"]["plugin"] == "demo-scripted-model" and models["demo-scripted"]["installed"] is True
    infos = {i["name"]: i for i in json.loads(run(site, "plugins", "--json").stdout)}
    assert infos["demo-scripted-model"]["kinds"] == ["models", "runtimes"]
    # The plugin's model without its tool is a clear error, not a crash.
    missing = run(site, "run", question, "-m", "demo-scripted", "-t", "no_such_tool")
    assert missing.returncode == 2 and "unknown tool 'no_such_tool'" in missing.stderr


def test_hanlin_chat_keeps_a_session_through_the_plugin_model(site) -> None:
    environ = {k: v for k, v in os.environ.items() if k not in ("HANLIN_PLUGINS", "HANLIN_DISABLE_PLUGINS")}
    environ["PYTHONPATH"] = str(site)
    turns = "Count 'one two'\nCount 'a b c d'\n/reset\nCount 'x'\n/exit\n"
    out = subprocess.run([sys.executable, "-m", "hanlin.cli", "chat", "-m", "demo-scripted", "-t", "word_count"],
                         input=turns, capture_output=True, text=True, env=environ, timeout=120)
    assert out.returncode == 0, out.stderr
    # The model sees the earlier turn (question 2), and nothing of it after /reset (question 1 again).
    answers = [line for line in out.stdout.splitlines() if line.startswith("Final answer:")]
    assert answers == ["Final answer: The text has 2 words.", "Final answer: The text has 4 words.",
                       "Final answer: The text has 1 word."]
    asked = [line.split("(question ")[1].split(" ")[0] for line in out.stdout.splitlines() if "(question " in line]
    assert asked == ["1", "2", "1"]
    assert "(history cleared)" in out.stdout and "error" not in out.stderr


def test_hanlin_plugins_env_restricts_third_party_plugins(site) -> None:
    out = run(site, "plugins", "--json", env={"HANLIN_PLUGINS": "broken"})
    infos = {i["name"]: i for i in json.loads(out.stdout)}
    assert infos["demo-text-tools"]["status"] == "disabled"
    assert infos["broken"]["status"] == "failed"
    tools = [t["name"] for t in json.loads(run(site, "tools", "--json", env={"HANLIN_PLUGINS": ""}).stdout)]
    assert "reverse_text" not in tools and "calculator" in tools  # built-ins are not third-party


def test_hanlin_disable_plugins_blocks_by_name(site) -> None:
    out = run(site, "plugins", "--json", env={"HANLIN_DISABLE_PLUGINS": "demo-text-tools,broken"})
    infos = {i["name"]: i for i in json.loads(out.stdout)}
    assert infos["demo-text-tools"]["status"] == "disabled" and infos["broken"]["status"] == "disabled"
    tools = [t["name"] for t in json.loads(run(site, "tools", "--json", env={"HANLIN_DISABLE_PLUGINS": "demo-text-tools"}).stdout)]
    assert "reverse_text" not in tools
