"""The ChatModel protocol every runtime implements.

A runtime subclass writes two methods, ``_stream`` (sync, yields Chunks) and
optionally ``_generate``; the base class derives the other six entry points
(sync/async x stream/non-stream) so each runtime writes its decoding loop once.
Async variants run the sync loop in a worker thread by default, which keeps
the event loop free for runtimes built on blocking C libraries.

One optional capability sits beside generation: ``score`` returns the
log-probability of each token of a continuation after a context (likelihood
scoring of multiple-choice evaluation). Runtimes that implement it set
``capabilities.logprobs``; the others inherit a ``score`` that says which
runtimes can.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hanlin.errors import ConfigurationError
from hanlin.messages import MessageLike, Message, ToolCall, Usage, to_messages
from hanlin.sync_bridge import iterate_in_thread


class Constraint(BaseModel):
    """Constrained decoding asked of a runtime: exactly one of a JSON schema or a GBNF grammar.

    GBNF (llama.cpp's grammar format) is hanlin's common grammar language: the
    protocols build their step grammars in it, and ``hanlin.grammar`` turns
    JSON schemas into it.
    """

    json_schema: dict[str, Any] | None = None
    grammar: str | None = None
    # The token budget the grammar was sized for (its open strings and lines are bounded so that a step always
    # ends inside it); used as the call's max_tokens when the caller set none.
    max_tokens: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _exactly_one(self) -> Constraint:
        if (self.json_schema is None) == (self.grammar is None):
            raise ValueError("a Constraint needs exactly one of json_schema or grammar")
        return self

    @property
    def kind(self) -> Literal["json_schema", "grammar"]:
        return "json_schema" if self.json_schema is not None else "grammar"


class GenerationParams(BaseModel):
    """Sampling and control parameters of one call. ``None`` means the runtime's default."""

    model_config = ConfigDict(extra="forbid")  # a misspelt parameter is an error, not a silent default

    max_tokens: int | None = Field(default=None, gt=0)
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    seed: int | None = None
    # OpenAI's penalties: each token's logit is lowered by frequency_penalty x how often this reply has written it,
    # plus presence_penalty once it has written it at all. Greedy decoding of a small base model loops on one
    # phrase; 0.5 is a usual cure (see examples/pretrain_tiny.py).
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    stop: list[str] = Field(default_factory=list)
    constraint: Constraint | None = None
    tools: list[dict[str, Any]] | None = None  # OpenAI-style function specs, for native tool calling
    tool_choice: str | dict[str, Any] | None = None  # OpenAI's: "auto" (default), "none", "required", a function
    parallel_tool_calls: bool | None = None  # False: at most one call per reply
    # Optional call arguments whose values the conversation never mentions are dropped (the function's default
    # over a small model's invention), and a call whose required values were all made up is withheld
    # (hanlin.runtimes.argument_grounding); False returns the calls as written.
    ground_arguments: bool | None = None


class Completion(BaseModel):
    """The result of a non-streaming call."""

    text: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    finish_reason: Literal["stop", "length", "tool_calls"] = "stop"
    usage: Usage = Field(default_factory=Usage)

    def to_message(self) -> Message:
        return Message.assistant(self.text, self.tool_calls)


@dataclass(slots=True)
class Chunk:
    """One streamed piece: a text delta, and on the last chunk the finish reason, usage and tool calls."""

    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: Literal["stop", "length", "tool_calls"] | None = None
    usage: Usage | None = None


@dataclass(slots=True)
class Capabilities:
    """What a model can do beyond plain generation; protocols read this to choose how to ask."""

    constraints: frozenset[str] = frozenset()  # subset of {"json_schema", "grammar"}
    native_tools: bool = False
    chat_template: bool = True
    context_length: int | None = None
    logprobs: bool = False  # ``score`` works: prompt log-probabilities for likelihood scoring


ScoreRequest = tuple[str, str]  # (context, continuation): plain text, no chat template
LOGPROB_RUNTIMES = "cpu, gpu and transformers"  # named in the error of models that cannot score


def check_score_requests(requests: Sequence[ScoreRequest]) -> None:
    """Refuse what no runtime can score: the first token of an empty context has no prediction to score, and an
    empty continuation has nothing to score."""
    for i, request in enumerate(requests):
        pair = isinstance(request, (tuple, list)) and len(request) == 2
        if not (pair and all(isinstance(t, str) for t in request)):
            raise ConfigurationError(f"score request {i} must be a (context, continuation) pair of strings, got {request!r}")
        context, continuation = request
        if not context:
            raise ConfigurationError(f"score request {i} has an empty context: the first token has no prediction to "
                                     "score; put at least one token (e.g. a newline) before the continuation")
        if not continuation:
            raise ConfigurationError(f"score request {i} has an empty continuation: there is nothing to score; give "
                                     "a non-empty continuation")


def completion_from_chunks(chunks: Iterable[Chunk]) -> Completion:
    """Join a stream into the Completion a non-streaming call would return."""
    parts: list[str] = []
    last = Chunk()
    for chunk in chunks:
        parts.append(chunk.text)
        if chunk.finish_reason is not None or chunk.usage is not None or chunk.tool_calls:
            last = chunk
    return Completion(
        text="".join(parts),
        tool_calls=last.tool_calls,
        finish_reason=last.finish_reason or "stop",
        usage=last.usage or Usage(),
    )


def _coerce_params(params: GenerationParams | None, overrides: dict[str, Any]) -> GenerationParams:
    if params is None:
        if "stop" in overrides and isinstance(overrides["stop"], str):
            overrides = {**overrides, "stop": [overrides["stop"]]}
        try:
            return GenerationParams(**overrides)
        except Exception as exc:  # pydantic ValidationError or unknown keyword
            raise ConfigurationError(f"invalid generation parameters {overrides!r}: {exc}") from None
    if overrides:  # validated like a fresh GenerationParams: model_copy(update=...) would take anything
        try:
            return GenerationParams(**{**dict(params), **overrides})
        except Exception as exc:
            raise ConfigurationError(f"invalid generation parameters {overrides!r}: {exc}") from None
    return params


class ChatModel:
    """Base class of every model hanlin can talk to.

    Subclasses implement ``_stream(messages, params)``; they may also override
    ``_generate`` when a non-streaming path is cheaper, and ``_astream`` when
    they have a native async client.
    """

    name: str = "model"
    capabilities: Capabilities = Capabilities()
    # True where ``_generate`` does more than collect the stream: the remote runtime asks again, on another replica,
    # a reply cut mid-way, which only a caller that has not seen its first tokens can afford. ``agenerate`` and the
    # server's non-streamed routes then go through ``_generate``.
    generates_whole: bool = False

    # ---- what runtimes implement -------------------------------------------------
    def _stream(self, messages: list[Message], params: GenerationParams) -> Iterator[Chunk]:
        raise NotImplementedError(f"{type(self).__name__} does not implement _stream")

    def _generate(self, messages: list[Message], params: GenerationParams) -> Completion:
        return completion_from_chunks(self._stream(messages, params))

    async def _astream(self, messages: list[Message], params: GenerationParams) -> AsyncIterator[Chunk]:
        """Run the sync stream in a thread and hand chunks to the event loop as they come."""
        async for chunk in iterate_in_thread(lambda: self._stream(messages, params)):
            yield chunk

    # ---- the public API ------------------------------------------------------------
    def generate(
        self, messages: str | Iterable[MessageLike], params: GenerationParams | None = None, **kwargs: Any
    ) -> Completion:
        """Complete a conversation. Keyword arguments are ``GenerationParams`` fields."""
        return self._generate(to_messages(messages), _coerce_params(params, kwargs))

    def stream(
        self, messages: str | Iterable[MessageLike], params: GenerationParams | None = None, **kwargs: Any
    ) -> Iterator[Chunk]:
        return self._stream(to_messages(messages), _coerce_params(params, kwargs))

    async def agenerate(
        self, messages: str | Iterable[MessageLike], params: GenerationParams | None = None, **kwargs: Any
    ) -> Completion:
        if self.generates_whole:
            import asyncio

            converted, coerced = to_messages(messages), _coerce_params(params, kwargs)
            return await asyncio.to_thread(self._generate, converted, coerced)
        chunks = [chunk async for chunk in self.astream(messages, params, **kwargs)]
        return completion_from_chunks(chunks)

    async def astream(
        self, messages: str | Iterable[MessageLike], params: GenerationParams | None = None, **kwargs: Any
    ) -> AsyncIterator[Chunk]:
        async for chunk in self._astream(to_messages(messages), _coerce_params(params, kwargs)):
            yield chunk

    # ---- raw text completion (optional: runtimes that own their tokenizer) -----------------------
    def _stream_prompt(self, prompt: str, params: GenerationParams) -> Iterator[Chunk]:
        raise NotImplementedError(f"model '{self.name}' ({type(self).__name__}) does not support raw text completion")

    def stream_prompt(self, prompt: str, params: GenerationParams | None = None, **kwargs: Any) -> Iterator[Chunk]:
        """Continue ``prompt`` as plain text, with no chat template."""
        return self._stream_prompt(prompt, _coerce_params(params, kwargs))

    async def astream_prompt(self, prompt: str, params: GenerationParams | None = None, **kwargs: Any) -> AsyncIterator[Chunk]:
        params = _coerce_params(params, kwargs)
        async for chunk in iterate_in_thread(lambda: self._stream_prompt(prompt, params)):
            yield chunk

    # ---- prompt log-probabilities (optional: capabilities.logprobs) ------------------------------
    def score(self, requests: Sequence[ScoreRequest]) -> list[list[float]]:
        """For each (context, continuation) pair of plain texts, the natural-log probability of every token of the
        continuation given the context and the continuation's tokens before it. Runtimes batch the requests.

        Where the tokenizer would merge the last context token with the first continuation token, the two texts are
        tokenized apart, so the context's tokens are always the same whatever follows them.
        """
        raise ConfigurationError(
            f"model '{self.name}' ({type(self).__name__}) cannot score log-probabilities, which likelihood evaluation "
            f"needs; the {LOGPROB_RUNTIMES} runtimes can (e.g. load_model(name, runtime='transformers'), or "
            "hanlin eval --runtime transformers), or evaluate in generation mode"
        )

    def supports(self, constraint: Constraint | None) -> bool:
        return constraint is None or constraint.kind in self.capabilities.constraints

    def close(self) -> None:
        """Release weights, contexts or connections. Safe to call twice."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
