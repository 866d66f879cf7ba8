"""@tool, Toolkit and Tool.invoke: specs from type hints and docstrings, validation, failures as results."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, Field

from hanlin import Tool, ToolError, Toolkit, ToolResult, load_tool, tool
from hanlin.tools import as_tools


@tool
def weather(city: str, unit: Literal["c", "f"] = "c", days: int = 1) -> dict:
    """Forecast the weather.

    Longer explanation that stays in the description.

    Args:
        city: Name of the city,
            possibly with a country.
        unit: Temperature unit.
        days (int): How many days ahead.

    Returns:
        A forecast.
    """
    return {"city": city, "unit": unit, "days": days}


def test_spec_from_hints_and_docstring() -> None:
    spec = weather.spec
    assert spec["name"] == "weather"
    assert spec["description"].startswith("Forecast the weather.")
    assert "Longer explanation" in spec["description"] and "Returns" not in spec["description"]
    params = spec["parameters"]
    assert params["required"] == ["city"]
    assert params["properties"]["city"] == {"type": "string", "description": "Name of the city, possibly with a country."}
    assert params["properties"]["unit"]["enum"] == ["c", "f"]
    assert params["properties"]["days"]["default"] == 1
    assert params["additionalProperties"] is False
    assert weather.to_openai()["function"]["name"] == "weather"


def test_invoke_coerces_and_serialises() -> None:
    result = weather.invoke({"city": "Oslo", "days": "3"})
    assert not result.is_error
    assert result.data == {"city": "Oslo", "unit": "c", "days": 3}
    assert result.content == '{"city": "Oslo", "unit": "c", "days": 3}'
    assert weather.invoke('{"city": "Rome"}').data["city"] == "Rome"
    assert weather("Paris")["city"] == "Paris"  # still a plain function


@pytest.mark.parametrize(
    "arguments,fragment",
    [
        ({}, "city: Field required"),
        ({"city": "x", "unit": "k"}, "unit: Input should be 'c' or 'f'"),
        ({"city": "x", "days": "many"}, "days: Input should be a valid integer"),
        ({"city": "x", "colour": "red"}, "colour: Extra inputs are not permitted"),
        ('{"city": ', "not valid JSON"),
        ("[1, 2]", "Input should be a valid dictionary"),
    ],
)
def test_invalid_arguments_become_error_results(arguments, fragment) -> None:
    result = weather.invoke(arguments)
    assert result.is_error and fragment in result.content
    assert result.content.startswith(("invalid arguments for tool 'weather'", "arguments for tool 'weather'"))


def test_exception_and_timeout_become_error_results() -> None:
    @tool(timeout=0.2)
    def sleepy(seconds: float) -> str:
        """Sleep."""
        time.sleep(seconds)
        return "done"

    @tool
    def broken() -> str:
        """Break."""
        return {}["missing"]

    assert sleepy.invoke({"seconds": 0.01}).content == "done"
    started = time.perf_counter()
    late = sleepy.invoke({"seconds": 1.0})
    assert late.is_error and "did not finish within 0.2 s" in late.content
    assert time.perf_counter() - started < 0.9
    failed = broken.invoke({})
    assert failed.is_error and "KeyError: 'missing'" in failed.content


def test_a_tools_own_timeout_error_is_its_failure_not_our_deadline() -> None:
    @tool(timeout=5)
    def fetch(url: str) -> str:
        """Fetch."""
        raise socket.timeout("timed out reading from the server")

    @tool(timeout=5)
    async def afetch(url: str) -> str:
        """Fetch."""
        raise TimeoutError("upstream took too long")

    for result in (fetch.invoke({"url": "x"}), asyncio.run(fetch.ainvoke({"url": "x"}))):
        assert result.is_error and "raised TimeoutError: timed out reading from the server" in result.content
        assert "did not finish within" not in result.content
    for result in (afetch.invoke({"url": "x"}), asyncio.run(afetch.ainvoke({"url": "x"}))):
        assert result.is_error and "raised TimeoutError: upstream took too long" in result.content


def test_generation_parameter_overrides_are_validated() -> None:
    from hanlin import ConfigurationError, GenerationParams, ScriptedModel

    model = ScriptedModel(["a", "b", "c"])
    with pytest.raises(ConfigurationError, match="temprature"):
        model.generate("hi", GenerationParams(max_tokens=5), temprature=0.5)
    with pytest.raises(ConfigurationError, match="top_p"):
        model.generate("hi", GenerationParams(max_tokens=5), top_p=7)
    assert model.generate("hi", GenerationParams(max_tokens=5), temperature=0.5).text == "a"


def test_async_tools_sync_and_async_paths() -> None:
    @tool(timeout=0.2)
    async def ping(host: str, wait: float = 0.0) -> str:
        """Ping a host.

        Args:
            host: where
            wait: delay
        """
        await asyncio.sleep(wait)
        return f"pong from {host}"

    assert ping.is_async
    assert ping.invoke({"host": "a"}).content == "pong from a"
    assert asyncio.run(ping.ainvoke({"host": "b"})).content == "pong from b"
    assert "did not finish" in asyncio.run(ping.ainvoke({"host": "c", "wait": 1})).content
    assert "did not finish" in ping.invoke({"host": "c", "wait": 1}).content


def test_returning_tool_result_and_models() -> None:
    class Point(BaseModel):
        x: int
        y: int

    @tool
    def origin() -> Point:
        """The origin."""
        return Point(x=0, y=0)

    @tool
    def picture() -> ToolResult:
        """A picture."""
        return ToolResult(content="saved plot.png", artifacts=["plot.png"])

    assert origin.invoke().content == '{"x":0,"y":0}'
    assert picture.invoke().artifacts == ["plot.png"]


def test_toolkit_shares_state() -> None:
    class Counter(Toolkit):
        def __init__(self) -> None:
            self.count = 0

        @tool
        def increment(self, by: int = 1) -> int:
            """Add to the counter.

            Args:
                by: how much
            """
            self.count += by
            return self.count

        @tool(name="read_counter")
        def read(self) -> int:
            """Read the counter."""
            return self.count

    kit = Counter()
    tools = {t.name: t for t in kit.tools()}
    assert set(tools) == {"increment", "read_counter"}
    tools["increment"].invoke({"by": 5})
    assert tools["read_counter"].invoke({}).content == "5"
    assert "self" not in tools["increment"].parameters["properties"]


def test_definition_errors_are_clear() -> None:
    with pytest.raises(ToolError, match="parameter 'x' of tool 'untyped' has no type hint"):

        @tool
        def untyped(x):  # noqa: ANN001
            """No hints."""

    with pytest.raises(ToolError, match="takes \\*args"):

        @tool
        def star(*args: int) -> None:
            """Varargs."""

    with pytest.raises(ToolError, match="not usable"):
        Tool(lambda: 1, name="has space")
    with pytest.raises(ToolError, match="share the name"):
        as_tools([weather, weather])


def test_plain_function_becomes_a_tool() -> None:
    def shout(text: str) -> str:
        """Shout it.

        Args:
            text: what to shout
        """
        return text.upper()

    (t,) = as_tools(shout)
    assert t.invoke({"text": "hi"}).content == "HI"


def test_load_tool_unknown_name() -> None:
    from hanlin import ConfigurationError

    with pytest.raises(ConfigurationError, match="unknown tool 'nope'"):
        load_tool("nope")


def test_annotated_field_constraints_reach_the_schema_and_validation() -> None:
    @tool
    def shout(text: Annotated[str, Field(max_length=5)]) -> str:
        """Shout.

        Args:
            text: what to shout
        """
        return text.upper()

    assert shout.parameters["properties"]["text"]["maxLength"] == 5
    assert shout.parameters["properties"]["text"]["description"] == "what to shout"
    assert shout.invoke({"text": "hey"}).content == "HEY"
    result = shout.invoke({"text": "too long"})
    assert result.is_error and "text" in result.content and "5" in result.content
