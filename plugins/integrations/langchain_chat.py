"""A hanlin ChatModel as a LangChain chat model.

``HanlinChatModel`` lets LangChain code (chains, LangGraph agents, ``with_structured_output``) run on any model
hanlin can load: a local GGUF on llama.cpp, the GPU engine, a remote endpoint. Messages are mapped one to one
onto hanlin's ``Message`` schema (``to_hanlin_messages`` / ``to_langchain_messages``), so tool calls, tool
results and their ids survive the trip both ways.

How tools reach the model:

- ``tool_choice`` auto (the default): the tool specs go to the runtime's native tool calling; a model without
  it (``capabilities.native_tools`` false) is refused with a message saying to force a call instead.
- a forced call (``tool_choice="any"``/``"required"``/a tool name): where the runtime supports JSON-schema
  constrained decoding, the call is produced under a schema of ``{"name", "arguments"}`` over the allowed
  tools, so even a small local model cannot write a malformed call (hanlin's server does the same); else it
  is passed to native tool calling with the ``tool_choice``.
- ``with_structured_output``: ``method="json_schema"`` (the default where constraints are supported) decodes
  the answer under the schema itself; ``"function_calling"`` forces a tool call as above; ``"json_mode"``
  constrains to any JSON object. ``strict`` is accepted and has no effect: constrained output is exact anyway.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, PrivateAttr, model_validator

from hanlin.chat_model import ChatModel, Chunk, Completion, Constraint, GenerationParams, completion_from_chunks
from hanlin.errors import ConfigurationError
from hanlin.messages import Message, ToolCall, Usage, new_call_id
# First: it raises the error naming `pip install 'hanlin[langchain]'` when langchain-core is missing.
from hanlin.plugins.integrations.langchain_tools import (
    call_schema,
    content_text,
    normalize_tool_choice,
    parse_forced_call,
    to_tool_specs,
)
from hanlin.tools import Tool

from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    UsageMetadata,
)
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.openai_tools import JsonOutputKeyToolsParser, PydanticToolsParser
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass

# Constructor keywords LangChain's hosted providers share (and its standard tests pass). They configure a
# network client; a hanlin model is already loaded (a remote endpoint is configured through hanlin.load_model),
# so they are accepted and have no effect.
_CLIENT_KEYWORDS = frozenset({"api_key", "timeout", "max_retries"})
_SAMPLING = ("temperature", "max_tokens", "top_p", "top_k", "seed", "frequency_penalty", "presence_penalty")
_CALL_OPTIONS = frozenset({*_SAMPLING, "tools", "tool_choice", "constraint", "model", "stream",
                           "ls_structured_output_format"})
_ANY_JSON = Constraint(json_schema={"type": "object"})


# ---- messages ------------------------------------------------------------------------------------
_ROLES = {"human": "user", "user": "user", "ai": "assistant", "assistant": "assistant", "system": "system",
          "developer": "system", "tool": "tool"}


def _text(content: Any, kind: str, *, strict: bool) -> str:
    """Text of a message's content. hanlin models read text: other blocks in a user or system turn are an
    error; in an assistant turn (reasoning, provider tool-use blocks) they are left out, its calls travel in
    ``tool_calls``."""
    if isinstance(content, str):
        return content
    parts = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        elif strict:
            kind_of = block.get("type") if isinstance(block, dict) else type(block).__name__
            raise ConfigurationError(f"hanlin chat models read text only; a {kind} holds a {kind_of!r} content block")
    return "".join(parts)


def to_hanlin_messages(messages: Sequence[BaseMessage]) -> list[Message]:
    """LangChain messages as hanlin Messages; a ToolMessage without a name takes its call's tool name."""
    out: list[Message] = []
    names: dict[str, str] = {}
    for m in messages:
        if isinstance(m, AIMessage):
            calls = [ToolCall(id=c.get("id") or new_call_id(), name=c["name"], arguments=c["args"]) for c in m.tool_calls]
            names.update({c.id: c.name for c in calls})
            out.append(Message(role="assistant", content=_text(m.content, "AIMessage", strict=False),
                               tool_calls=calls, name=m.name))
        elif isinstance(m, ToolMessage):
            out.append(Message.tool(content_text(m.content), tool_call_id=m.tool_call_id,
                                    name=m.name or names.get(m.tool_call_id), is_error=m.status == "error"))
        elif isinstance(m, (HumanMessage, SystemMessage, ChatMessage)):
            role = _ROLES.get(m.role if isinstance(m, ChatMessage) else m.type)
            if role is None or role in ("assistant", "tool"):
                raise ConfigurationError(f"ChatMessage role {getattr(m, 'role', m.type)!r} is not one hanlin can send; "
                                         "use user/system, or AIMessage/ToolMessage for the others")
            out.append(Message(role=role, content=_text(m.content, type(m).__name__, strict=True), name=m.name))
        else:
            raise ConfigurationError(
                f"HanlinChatModel cannot send a {type(m).__name__}; use System/Human/AI/Tool messages"
            )
    return out


def to_langchain_messages(messages: Sequence[Message]) -> list[BaseMessage]:
    """hanlin Messages (an agent trace, a dataset row) as LangChain messages."""
    out: list[BaseMessage] = []
    for m in messages:
        if m.role == "system":
            out.append(SystemMessage(m.content, name=m.name))
        elif m.role == "user":
            out.append(HumanMessage(m.content, name=m.name))
        elif m.role == "assistant":
            out.append(AIMessage(m.content, name=m.name, tool_calls=[
                {"type": "tool_call", "name": c.name, "args": c.arguments, "id": c.id} for c in m.tool_calls]))
        else:
            out.append(ToolMessage(m.content, tool_call_id=m.tool_call_id or "", name=m.name,
                                   status="error" if m.is_error else "success"))
    return out


def usage_metadata(usage: Usage) -> UsageMetadata:
    """hanlin token counts in LangChain's shape; tokens the runtime took from its KV cache are ``cache_read``."""
    meta = UsageMetadata(input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens,
                         total_tokens=usage.total_tokens)
    if usage.prompt_tokens_reused is not None:
        meta["input_token_details"] = {"cache_read": usage.prompt_tokens_reused}
    return meta


def _schema_of(schema: Any) -> tuple[str, dict[str, Any]]:
    """Name and JSON schema of a structured-output schema (pydantic class, TypedDict, JSON schema, OpenAI tool)."""
    if isinstance(schema, type) and is_basemodel_subclass(schema):
        return schema.__name__, schema.model_json_schema()
    function = convert_to_openai_tool(schema)["function"]
    return function["name"], function.get("parameters") or {"type": "object", "properties": {}}


@dataclass(slots=True)
class _StreamState:
    forced_json: bool
    held: list[Chunk] = field(default_factory=list)
    finished: bool = False


# ---- the chat model ---------------------------------------------------------------------------------
class HanlinChatModel(BaseChatModel):
    """Any hanlin ChatModel (or a model name for ``hanlin.load_model``) as a LangChain chat model.

    ``model`` is a ChatModel or a name/path; with a name, ``runtime`` and ``load_options`` go to
    ``load_model`` and ``close()`` releases what was loaded. Sampling fields are defaults that per-call
    keywords (``invoke(..., temperature=0.7)``, ``bind(seed=1)``) override.
    """

    model: ChatModel | str | Path
    runtime: str | None = None
    load_options: dict[str, Any] = Field(default_factory=dict)
    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    stop: list[str] | None = None
    streaming: bool = False
    """LangChain's switch: ``invoke`` goes through the streaming path when true."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    _chat: ChatModel = PrivateAttr()
    _owned: bool = PrivateAttr(default=False)

    @model_validator(mode="before")
    @classmethod
    def _hanlin_known_keywords(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(k for k in data if k not in cls.model_fields and k not in _CLIENT_KEYWORDS)
            if unknown:
                raise ValueError(
                    f"HanlinChatModel got unknown keyword(s) {unknown}; it takes {sorted(cls.model_fields)} "
                    "(options for loading a model by name go in load_options={...})"
                )
            data = {k: v for k, v in data.items() if k not in _CLIENT_KEYWORDS}
        return data

    @model_validator(mode="after")
    def _load_hanlin_model(self) -> HanlinChatModel:
        if isinstance(self.model, ChatModel):
            if self.runtime is not None or self.load_options:
                raise ValueError("runtime and load_options apply to a model given by name, not to a loaded ChatModel")
            self._chat = self.model
        else:
            from hanlin.loading import load_model

            self._chat = load_model(self.model, runtime=self.runtime, **self.load_options)
            self._owned = True
        return self

    @property
    def chat_model(self) -> ChatModel:
        """The hanlin ChatModel underneath."""
        return self._chat

    def close(self) -> None:
        """Release the model if this wrapper loaded it by name (a ChatModel passed in is the caller's to close)."""
        if self._owned:
            self._chat.close()

    # ---- LangChain's descriptive hooks --------------------------------------------------------------
    @property
    def _llm_type(self) -> str:
        return "hanlin"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        params = {"model_name": self._chat.name, "model_class": type(self._chat).__name__}
        params.update({k: getattr(self, k) for k in (*_SAMPLING, "stop") if getattr(self, k) is not None})
        return params

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        override = kwargs.get("model")
        params = LangSmithParams(ls_provider="hanlin", ls_model_type="chat",
                                 ls_model_name=override if isinstance(override, str) else self._chat.name)
        if (temperature := kwargs.get("temperature", self.temperature)) is not None:
            params["ls_temperature"] = temperature
        if (max_tokens := kwargs.get("max_tokens", self.max_tokens)) is not None:
            params["ls_max_tokens"] = max_tokens
        if stops := (stop or self.stop):
            params["ls_stop"] = stops
        return params

    # ---- tools and structured output ---------------------------------------------------------------
    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool | Tool],
        *,
        tool_choice: str | dict[str, Any] | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[Any, AIMessage]:
        """Offer tools (LangChain tools, hanlin Tools/Toolkits, pydantic classes, functions, OpenAI dicts)."""
        specs = to_tool_specs(tools)
        if tool_choice is not None:
            kwargs["tool_choice"] = normalize_tool_choice(tool_choice, [s["function"]["name"] for s in specs])
        return self.bind(tools=specs, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type,
        *,
        method: Literal["function_calling", "json_schema", "json_mode"] | None = None,
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[Any, Any]:
        """Answers parsed into ``schema``: a pydantic instance for a pydantic class, else a dict."""
        if kwargs:
            raise ValueError(f"with_structured_output got unsupported arguments {sorted(kwargs)}")
        constrained = self._chat.supports(_ANY_JSON)
        method = method or ("json_schema" if constrained else "function_calling")
        name, json_schema = _schema_of(schema)
        is_pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
        trace = {"kwargs": {"method": method, "strict": strict}, "schema": schema}
        if method == "function_calling":
            llm = self.bind_tools([schema], tool_choice=name, ls_structured_output_format=trace)
            parser: Runnable[Any, Any] = (PydanticToolsParser(tools=[schema], first_tool_only=True) if is_pydantic
                                          else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True))
        elif method in ("json_schema", "json_mode"):
            if not constrained:
                raise ConfigurationError(
                    f"model '{self._chat.name}' cannot constrain its output to JSON, so method={method!r} is "
                    "unsupported; use method='function_calling' (needs native tool calling)"
                )
            target = json_schema if method == "json_schema" else {"type": "object"}
            llm = self.bind(constraint={"json_schema": target}, ls_structured_output_format=trace)
            parser = PydanticOutputParser(pydantic_object=schema) if is_pydantic else JsonOutputParser()
        else:
            raise ValueError(f"method must be 'function_calling', 'json_schema' or 'json_mode', got {method!r}")
        if not include_raw:
            return llm | parser
        parse = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
        fallback = RunnablePassthrough.assign(parsed=lambda _: None)
        return RunnableMap(raw=llm) | parse.with_fallbacks([fallback], exception_key="parsing_error")

    # ---- one call: LangChain's arguments -> hanlin's ------------------------------------------------
    def _call(self, messages: list[BaseMessage], stop: list[str] | None,
              kwargs: dict[str, Any]) -> tuple[list[Message], GenerationParams, bool]:
        """hanlin messages, generation params, and whether a forced tool call comes back as constrained JSON."""
        unknown = sorted(set(kwargs) - _CALL_OPTIONS)
        if unknown:
            raise ConfigurationError(
                f"HanlinChatModel got unknown call option(s) {unknown}; it takes {sorted(_CALL_OPTIONS)}"
            )
        override = kwargs.get("model")
        if override is not None and override != self._chat.name:
            raise ConfigurationError(
                f"this HanlinChatModel serves '{self._chat.name}', not '{override}'; make another HanlinChatModel for it"
            )
        sampling = {k: kwargs[k] if k in kwargs else getattr(self, k) for k in _SAMPLING}
        constraint = kwargs.get("constraint")
        if isinstance(constraint, dict):
            constraint = Constraint(**constraint)
        tools = to_tool_specs(kwargs["tools"]) if kwargs.get("tools") else None
        choice = normalize_tool_choice(kwargs.get("tool_choice"), [s["function"]["name"] for s in tools or []])
        forced_json = False
        native_choice: str | dict[str, Any] | None = None
        if tools is None or choice == "none":
            tools = None
        elif choice == "auto":
            if not self._chat.capabilities.native_tools:
                raise ConfigurationError(
                    f"model '{self._chat.name}' has no native tool calling; bind tools with tool_choice='any' or a "
                    "tool name (served with constrained decoding), or use a hanlin Agent with protocol='react'"
                )
        else:
            wanted = None if choice == "required" else choice["function"]["name"]
            forced = [s for s in tools if wanted in (None, s["function"]["name"])]
            if self._chat.supports(_ANY_JSON) and constraint is None:
                constraint, tools, forced_json = Constraint(json_schema=call_schema(forced)), None, True
            elif self._chat.capabilities.native_tools:
                native_choice = choice
            else:
                raise ConfigurationError(
                    f"model '{self._chat.name}' can neither call tools natively nor constrain its output, so it "
                    "cannot be made to call a tool"
                )
        if constraint is not None and not self._chat.supports(constraint):
            raise ConfigurationError(f"model '{self._chat.name}' cannot decode under a {constraint.kind} constraint")
        stops = list(dict.fromkeys([*(self.stop or []), *(stop or [])]))
        try:
            params = GenerationParams(**sampling, stop=stops, constraint=constraint, tools=tools, tool_choice=native_choice)
        except ValueError as exc:
            raise ConfigurationError(f"invalid generation parameters for HanlinChatModel: {exc}") from None
        return to_hanlin_messages(messages), params, forced_json

    # ---- hanlin's answers -> LangChain's ----------------------------------------------------------
    def _metadata(self, finish: str) -> dict[str, Any]:
        return {"finish_reason": finish, "model_name": self._chat.name, "model_provider": "hanlin"}

    @staticmethod
    def _answer(completion: Completion, forced_json: bool) -> tuple[str, list[ToolCall], str]:
        """Text, tool calls and finish reason; a forced call's JSON becomes the call it encodes (a call cut
        short by max_tokens is not valid JSON and stays visible as text)."""
        if forced_json and (call := parse_forced_call(completion.text)) is not None:
            return "", [call], "tool_calls"
        return completion.text, completion.tool_calls, completion.finish_reason

    def _result(self, completion: Completion, forced_json: bool) -> ChatResult:
        text, calls, finish = self._answer(completion, forced_json)
        message = AIMessage(
            content=text,
            tool_calls=[{"type": "tool_call", "name": c.name, "args": c.arguments, "id": c.id} for c in calls],
            usage_metadata=usage_metadata(completion.usage),
            response_metadata=self._metadata(finish),
        )
        return ChatResult(generations=[ChatGeneration(message=message, generation_info={"finish_reason": finish})],
                          llm_output={"model_name": self._chat.name})

    def _chunk(self, chunk: Chunk, finish: str | None = None) -> ChatGenerationChunk:
        """One LangChain chunk; the one with ``finish`` set closes the stream and carries calls, usage, metadata."""
        message = AIMessageChunk(
            content=chunk.text,
            tool_call_chunks=[{"type": "tool_call_chunk", "name": c.name, "args": json.dumps(c.arguments),
                               "id": c.id, "index": i} for i, c in enumerate(chunk.tool_calls)],
            usage_metadata=usage_metadata(chunk.usage) if chunk.usage is not None else None,
            response_metadata=self._metadata(finish) if finish else {},
            chunk_position="last" if finish else None,
        )
        return ChatGenerationChunk(message=message, generation_info={"finish_reason": finish} if finish else None)

    def _convert(self, piece: Chunk | None, state: _StreamState) -> list[ChatGenerationChunk]:
        """hanlin chunks to LangChain chunks; ``None`` marks the end of the hanlin stream."""
        if state.forced_json:  # a forced call's JSON is not text for the user: hold it, send the call at the end
            if piece is not None:
                state.held.append(piece)
                return []
            completion = completion_from_chunks(state.held)
            text, calls, finish = self._answer(completion, forced_json=True)
            return [self._chunk(Chunk(text=text, tool_calls=calls, usage=completion.usage), finish)]
        if piece is None:  # a runtime that ended without a closing chunk still gets one
            return [] if state.finished else [self._chunk(Chunk(), "stop")]
        if piece.finish_reason is None and piece.usage is None and not piece.tool_calls:
            return [self._chunk(piece)] if piece.text else []
        state.finished = True
        return [self._chunk(piece, "tool_calls" if piece.tool_calls else (piece.finish_reason or "stop"))]

    # ---- the four entry points --------------------------------------------------------------------
    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        hanlin_messages, params, forced_json = self._call(messages, stop, kwargs)
        return self._result(self._chat.generate(hanlin_messages, params), forced_json)

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                         **kwargs: Any) -> ChatResult:
        hanlin_messages, params, forced_json = self._call(messages, stop, kwargs)
        return self._result(await self._chat.agenerate(hanlin_messages, params), forced_json)

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        hanlin_messages, params, forced_json = self._call(messages, stop, kwargs)
        state = _StreamState(forced_json)
        for piece in itertools.chain(self._chat.stream(hanlin_messages, params), [None]):
            for out in self._convert(piece, state):
                if run_manager is not None:
                    run_manager.on_llm_new_token(out.text, chunk=out)
                yield out

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        hanlin_messages, params, forced_json = self._call(messages, stop, kwargs)
        state = _StreamState(forced_json)

        async def pieces() -> AsyncIterator[Chunk | None]:
            async for piece in self._chat.astream(hanlin_messages, params):
                yield piece
            yield None

        async for piece in pieces():
            for out in self._convert(piece, state):
                if run_manager is not None:
                    await run_manager.on_llm_new_token(out.text, chunk=out)
                yield out
