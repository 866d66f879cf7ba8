"""The plugin manager: registration per kind, isolation of broken plugins, env filters, typed queries."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

from hanlin import (
    ChatModel,
    ComponentSpec,
    ConfigurationError,
    ModelSpec,
    PluginManager,
    RuntimeSpec,
    ScriptedModel,
    ToolSpec,
    get_plugin_manager,
    hookimpl,
    load_model,
    load_tool,
    tool,
)


@tool
def echo(text: str) -> str:
    """Echo text back.

    Args:
        text: the text
    """
    return text


class GoodPlugin:
    @hookimpl
    def register_tools(self, register):
        register(echo)
        register(ToolSpec(name="echo_upper", factory=lambda upper=True: echo, description="configurable"))

    @hookimpl
    def register_finetuners(self, register):
        register(ComponentSpec(name="toy-sft", factory=lambda: "trainer"))

    @hookimpl
    def register_models(self, register):
        register(
            ModelSpec(
                name="toy-model", format="gguf", locate=lambda: __import__("pathlib").Path("/nonexistent.gguf"),
                installed=lambda: True, aliases=("toy",),
            )
        )

    @hookimpl
    def register_runtimes(self, register):
        register(
            RuntimeSpec(
                name="toy-runtime", formats=frozenset({"gguf"}), priority=1,
                load=lambda spec, path, **config: ScriptedModel(["loaded " + spec.name], name=spec.name),
                available=lambda: None,
            )
        )


def test_temporary_registration_of_every_kind() -> None:
    pm = get_plugin_manager()
    with pm.registered(GoodPlugin(), name="good") as name:
        info = next(i for i in pm.infos() if i.name == name)
        assert info.status == "loaded" and info.source == "registered"
        assert info.kinds == ["models", "runtimes", "tools", "finetuners"]
        assert pm.owner("tools", "echo") == "good"
        assert load_tool("echo").invoke({"text": "hi"}).content == "hi"
        assert pm.finetuners()["toy-sft"].factory() == "trainer"
        model = load_model("toy")  # alias, runtime chosen by priority
        assert isinstance(model, ChatModel) and model.generate("x").text == "loaded toy-model"
    assert "echo" not in pm.tools()
    assert all(i.name != "good" for i in pm.infos())


def test_broken_plugins_are_recorded_not_fatal() -> None:
    class RaisesWhileRegistering:
        @hookimpl
        def register_tools(self, register):
            register(echo)
            raise RuntimeError("database unreachable")

    class RegistersJunk:
        @hookimpl
        def register_models(self, register):
            register("not a spec")

    class TypoHook:
        @hookimpl
        def register_tool(self, register):
            pass

    pm = PluginManager(entry_points=False)
    pm.register(RaisesWhileRegistering(), "raises")
    pm.register(RegistersJunk(), "junk")
    pm.register(TypoHook(), "typo")
    infos = {i.name: i for i in pm.infos()}
    assert infos["raises"].status == "failed" and "database unreachable" in infos["raises"].error
    assert "register_models must register ModelSpec objects, got str" in infos["junk"].error
    assert "unknown hook(s) 'register_tool' (did you mean 'register_tools'?)" in infos["typo"].error
    # built-ins still loaded and usable
    assert "react" in pm.protocols()
    assert infos["hanlin.plugins.protocols.react"].status == "loaded"


def test_failing_import_is_recorded() -> None:
    sys.modules.pop("hanlin_test_broken", None)
    pm = PluginManager(builtins=("hanlin.plugins.protocols.react", "hanlin_test_does_not_exist"), entry_points=False)
    infos = {i.name: i for i in pm.infos()}
    assert infos["hanlin_test_does_not_exist"].status == "failed"
    assert "No module named 'hanlin_test_does_not_exist'" in infos["hanlin_test_does_not_exist"].error
    assert list(pm.protocols()) == ["react"]


def test_duplicate_names_keep_the_first() -> None:
    other = types.SimpleNamespace()

    @hookimpl
    def register_tools(register):
        register(echo)

    other.register_tools = register_tools
    pm = PluginManager(builtins=(), entry_points=False)
    pm.register(GoodPlugin(), "first")
    pm.register(other, "second")
    assert pm.owner("tools", "echo") == "first"
    infos = {i.name: i for i in pm.infos()}
    assert "already registered by plugin 'first'" in infos["second"].error
    message = infos["second"].error
    pm.register(types.SimpleNamespace(), "third")  # each registration rebuilds the registry
    pm.register(types.SimpleNamespace(), "fourth")
    infos = {i.name: i for i in pm.infos()}
    assert infos["second"].error == message and infos["second"].status == "failed"  # said once, not "X; X; X"
    pm.unregister("first")
    infos = {i.name: i for i in pm.infos()}
    assert infos["second"].status == "loaded" and infos["second"].error is None  # the clash is gone, so is the error


def test_unknown_name_lists_what_exists() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown runtime 'cpuu'.*Known runtimes:"):
        get_plugin_manager().get("runtimes", "cpuu")


def test_disable_builtin_by_name_from_env() -> None:
    code = (
        "import json, hanlin; pm = hanlin.get_plugin_manager();"
        "print(json.dumps({i.name: i.status for i in pm.infos()})); print(sorted(pm.protocols()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**__import__("os").environ, "HANLIN_DISABLE_PLUGINS": "hanlin.plugins.protocols.rewoo"},
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    assert '"hanlin.plugins.protocols.rewoo": "disabled"' in out[0]
    assert "rewoo" not in out[1] and "react" in out[1]


def test_plugins_add_cli_commands_and_a_raising_one_is_recorded() -> None:
    import typer
    from typer.testing import CliRunner

    class CommandPlugin:
        @hookimpl
        def register_commands(self, cli):
            @cli.command("hello")
            def hello(name: str) -> None:
                typer.echo(f"hello {name}")

    class RaisingCommandPlugin:
        @hookimpl
        def register_commands(self, cli):
            raise RuntimeError("no commands today")

    pm = PluginManager(builtins=(), entry_points=False)
    pm.register(CommandPlugin(), "cmds")
    pm.register(RaisingCommandPlugin(), "raising")
    app = typer.Typer()

    @app.command("base")
    def base() -> None:
        typer.echo("base")

    pm.add_commands(app)
    pm.add_commands(app)  # idempotent: a group added twice would be listed twice
    result = CliRunner().invoke(app, ["hello", "ada"])
    assert result.exit_code == 0 and result.stdout.strip() == "hello ada"
    infos = {i.name: i for i in pm.infos()}
    assert infos["cmds"].kinds == ["commands"] and infos["cmds"].status == "loaded"
    assert infos["raising"].status == "failed" and "no commands today" in infos["raising"].error
