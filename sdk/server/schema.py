"""OpenAI request bodies, validated: a bad field is a 400 that names the field."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: dict[str, Any] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class FunctionSpec(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema of the arguments object


class ToolSpec(BaseModel):
    """One entry of ``tools``: OpenAI's ``{"type": "function", "function": {"name", "description", "parameters"}}``."""

    model_config = ConfigDict(extra="allow")

    type: Literal["function"]
    function: FunctionSpec


class ChoiceFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"] = "function"
    function: ChoiceFunction


# What the message parser (hanlin.messages.Message.from_openai) reads: documented here so clients and the fuzz tests
# see the shape; the parser itself checks it and says what was wrong.
_TOOL_CALL = {"type": "object", "required": ["function"], "properties": {
    "id": {"type": "string"}, "type": {"const": "function"},
    "function": {"type": "object", "required": ["name"],
                 "properties": {"name": {"type": "string"}, "arguments": {"type": "string"}}}}}
_MESSAGE = {"type": "object", "required": ["role"], "properties": {
    "role": {"enum": ["system", "developer", "user", "assistant", "tool"]},
    "content": {"anyOf": [{"type": "string"}, {"type": "null"}, {"type": "array", "items": {
        "type": "object", "required": ["type", "text"],
        "properties": {"type": {"const": "text"}, "text": {"type": "string"}}}}]},
    "tool_calls": {"type": "array", "items": _TOOL_CALL},
    "tool_call_id": {"type": "string"},
    "name": {"type": "string"}}}


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # unknown OpenAI fields are ignored, as OpenAI-compatible servers do

    model: str
    messages: list[dict[str, Any]] = Field(min_length=1, json_schema_extra={"items": _MESSAGE})
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, gt=0)
    max_completion_tokens: int | None = Field(default=None, gt=0)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1, le=1)
    tools: list[ToolSpec] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    # hanlin's own (the openai client sends it with extra_body): False returns calls with every argument as written
    ground_arguments: bool | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> list[str] | None:
        if value is None:
            return None
        values = [value] if isinstance(value, str) else value
        if len(values) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        return values

    def tool_specs(self) -> list[dict[str, Any]] | None:
        """``tools`` as the plain OpenAI dicts the runtimes take, with the fields the client sent and only those."""
        return None if self.tools is None else [t.model_dump(exclude_unset=True) for t in self.tools]

    def tool_choice_value(self) -> str | dict[str, Any] | None:
        """``tool_choice`` as OpenAI spells it (a string, or a dict naming a function)."""
        choice = self.tool_choice
        return choice.model_dump() if isinstance(choice, NamedToolChoice) else choice


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    prompt: str
    stream: bool = False
    max_tokens: int | None = Field(default=16, gt=0)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1, le=1)


_WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def chat_examples(model: str) -> dict[str, dict[str, Any]]:
    """Request bodies for the OpenAPI document: one per way a chat request is served (clients read them as
    documentation; the fuzz tests start from them)."""
    ask = [{"role": "user", "content": "What's the weather in Rome?"}]
    bodies = {
        "chat": {"model": model, "messages": [{"role": "system", "content": "Be brief."},
                                              {"role": "user", "content": "Name two colours."}], "max_tokens": 32},
        "streamed": {"model": model, "messages": ask, "stream": True, "stream_options": {"include_usage": True}},
        "tools": {"model": model, "messages": ask, "tools": [_WEATHER_TOOL]},
        "forced tool call": {"model": model, "messages": ask, "tools": [_WEATHER_TOOL], "tool_choice": "required"},
        "named tool, streamed": {"model": model, "messages": ask, "tools": [_WEATHER_TOOL], "stream": True,
                                 "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
        "tool result": {"model": model, "tools": [_WEATHER_TOOL], "messages": [
            *ask, {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
                "name": "get_weather", "arguments": "{\"city\": \"Rome\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 24 C"}]},
        "json": {"model": model, "messages": ask, "response_format": {"type": "json_object"}},
    }
    return {name: {"summary": name, "value": body} for name, body in bodies.items()}


def completion_examples(model: str) -> dict[str, dict[str, Any]]:
    bodies = {"completion": {"model": model, "prompt": "The capital of France is", "max_tokens": 8},
              "streamed": {"model": model, "prompt": "Once upon a time", "stream": True, "stop": ["\n"]}}
    return {name: {"summary": name, "value": body} for name, body in bodies.items()}
