"""RunContext: what a protocol uses to talk to the model and the tools during one run.

It is the agent loop's machinery, shared by every protocol: it streams model
calls into token events, checks tool names and arguments, runs tools under
their timeouts, counts usage, and keeps the transcript. Protocols decide
*what* to do; the context makes sure every outcome becomes an event.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from hanlin.chat_model import ChatModel, Completion, Constraint, GenerationParams, completion_from_chunks
from hanlin.events import ErrorEvent, Event, FinalAnswer, StepStarted, TokenDelta, ToolCallEvent, ToolResultEvent
from hanlin.messages import Message, ToolCall, Usage
from hanlin.protocols.runaway import RUNAWAY_PENALTY, is_runaway, penalised
from hanlin.tools import Tool, ToolResult, _format_validation_error


# After the tool results of the step before a run's last (see RunContext.last_step).
LAST_CALL_NOTE = "\n[No tool calls are left in this run: answer the question now, from the results above.]"
# appended to the earlier result when a call repeats one of the previous step's (the loop guard below)
REPEAT_NOTE = ("\n[The same {name} call as in your previous step, so it was not run again; its result is above. Use "
               "it: reply with the Final Answer.]")


@dataclass(slots=True)
class RunOptions:
    max_steps: int = 10
    max_retries: int = 2  # consecutive malformed/unknown/invalid steps tolerated before giving up
    constrained: bool | None = None  # None: use constrained decoding when the model supports it
    instructions: str | None = None  # the app's system prompt, merged into the protocol's own
    output_type: type[BaseModel] | None = None
    examples: bool = True  # protocols show a short worked example (with made-up tools) in their prompts


@dataclass(slots=True)
class ToolOutcome:
    call: ToolCall
    result: ToolResult
    failure: str | None = None  # "unknown_tool" / "invalid_arguments" count as the model's mistake


@dataclass
class RunContext:
    model: ChatModel
    tools: dict[str, Tool]
    messages: list[Message]  # the transcript: history + this run, without the protocol's system prompt
    params: GenerationParams
    options: RunOptions
    emit: Callable[[Event], None]
    step: int = 0
    usage: Usage = field(default_factory=Usage)
    retries: int = 0  # consecutive failures so far
    answered: bool = False
    output: Any = None
    output_text: str = ""
    gave_up_reason: str | None = None
    # Loop guard: a call identical to one of the previous step's is not run again. Small models get stuck
    # re-issuing the call whose result they were just shown; `repeated` tells the protocol to ask for the answer
    # (ReAct's grammar then allows only a Final Answer, native calling offers no tools). It holds for the step after
    # the repeat only: the step after that offers the tools again.
    repeated: bool = False
    _repeat_seen: bool = False  # a call of this step repeated one of the previous step's
    _step_calls: dict[str, ToolResult] = field(default_factory=dict)
    _previous_calls: dict[str, ToolResult] = field(default_factory=dict)
    # The last call exactly as the model saw it (the protocol's rendered messages, the tool specs it was offered)
    # plus its reply: a trace keeps it so fine-tuning trains the format the protocol will ask for.
    model_view: dict[str, Any] | None = None

    # ---- steps and failures --------------------------------------------------------------
    def start_step(self, phase: str = "act") -> None:
        self.step += 1
        self._previous_calls, self._step_calls = self._step_calls, {}
        self.repeated, self._repeat_seen = self._repeat_seen, False
        self.emit(StepStarted(step=self.step, phase=phase))

    @property
    def steps_left(self) -> bool:
        return self.step < self.options.max_steps

    @property
    def last_step(self) -> bool:
        """This is the run's last step and an earlier one acted: only an answer can still end the run well (a call
        made now would run with no step left to read its result). Protocols then ask for the answer, as after a
        repeated call, and the model sees LAST_CALL_NOTE after the results of the step before. Qwen2.5-Coder-0.5B
        went on calling tools to the end of its steps with the right result in hand (3150 / 42 = 75, then 3150 / 75
        = 42, in turn) and such runs ended with no answer at all; agent frameworks answer from the transcript."""
        return self.step > 1 and self.step >= self.options.max_steps

    @property
    def next_is_last(self) -> bool:
        """The next step will be the run's last (see last_step)."""
        return self.step >= 1 and self.step == self.options.max_steps - 1

    def noted_if_last_results(self, observation: Message) -> Message:
        """``observation`` with LAST_CALL_NOTE when it ends the step before the last, in the model's view only."""
        if not self.next_is_last:
            return observation
        return observation.model_copy(update={"content": observation.content + LAST_CALL_NOTE})

    def record_failure(self, kind: str, message: str) -> bool:
        """Note a model mistake shown back to it; returns False once the retry budget is spent."""
        self.retries += 1
        if self.retries > self.options.max_retries:
            return False  # the caller gives up, and that emits the final, unrecoverable error
        self.emit(ErrorEvent(step=self.step, kind=kind, message=message, recoverable=True))  # type: ignore[arg-type]
        return True

    def record_success(self) -> None:
        self.retries = 0

    # ---- the model -----------------------------------------------------------------------
    @property
    def use_constraints(self) -> bool:
        if self.options.constrained is False:
            return False
        return bool(self.model.capabilities.constraints)

    async def generate(
        self,
        messages: list[Message],
        *,
        stop: list[str] | None = None,
        constraint: Constraint | None = None,
        tools: list[dict[str, Any]] | None = None,
        parallel_tool_calls: bool | None = None,
    ) -> Completion:
        """Call the model, streaming its text out as token events."""
        update: dict[str, Any] = {}
        if stop is not None:
            update["stop"] = list(dict.fromkeys([*self.params.stop, *stop]))
        if constraint is not None and self.use_constraints and self.model.supports(constraint):
            update["constraint"] = constraint
            if constraint.max_tokens is not None and self.params.max_tokens is None:
                update["max_tokens"] = constraint.max_tokens
        if tools is not None:
            update["tools"] = tools
            if parallel_tool_calls is not None:
                update["parallel_tool_calls"] = parallel_tool_calls
        params = self.params.model_copy(update=update)
        completion = await self._complete(messages, params, tools)
        if is_runaway(completion, params):  # greedy, the same loop would come back on every retry (runaway)
            self.emit(ErrorEvent(step=self.step, kind="runaway", recoverable=True, message=(
                f"the reply looped (one piece written over and over) until it was cut off; decoded again with "
                f"frequency_penalty={RUNAWAY_PENALTY}")))
            completion = await self._complete(messages, penalised(params), tools)
        return completion

    async def _complete(self, messages: list[Message], params: GenerationParams,
                        tools: list[dict[str, Any]] | None) -> Completion:
        """One model call: streamed out as token events, counted, kept as the run's model view, checked for a full
        context (which raises)."""
        chunks = []
        async for chunk in self.model.astream(messages, params):
            if chunk.text:
                self.emit(TokenDelta(step=self.step, text=chunk.text))
            chunks.append(chunk)
        completion = completion_from_chunks(chunks)
        self.usage = self.usage + completion.usage
        self.model_view = {
            "messages": [m.model_dump(mode="json", exclude_defaults=True)
                         for m in [*messages, completion.to_message()]],
            "tools": tools,
        }
        self._check_context(completion)
        return completion

    def _check_context(self, completion: Completion) -> None:
        """A reply cut because the transcript filled the context is not a model mistake to retry: every retry
        would be cut the same way. End the run with a clear error instead (the run's documented policy)."""
        limit = self.model.capabilities.context_length
        used = completion.usage.prompt_tokens + completion.usage.completion_tokens
        if completion.finish_reason != "length" or not limit or used < limit - 1:
            return
        from hanlin.errors import ContextOverflowError

        raise ContextOverflowError(
            f"the transcript filled the model's context ({used} of {limit} tokens) at step {self.step}; "
            "start a new session, lower max_steps, return shorter tool results, or use a model with a longer context"
        )

    # ---- tools ---------------------------------------------------------------------------
    def tool_specs(self) -> list[dict[str, Any]]:
        return [t.spec for t in self.tools.values()]

    def check_call(self, call: ToolCall) -> ToolOutcome | None:
        """Reject an unknown tool or invalid arguments before running anything."""
        tool = self.tools.get(call.name)
        if tool is None:
            known = ", ".join(self.tools) or "(no tools)"
            msg = f"there is no tool named '{call.name}'. Available tools: {known}."
            return ToolOutcome(call, ToolResult.error(msg), "unknown_tool")
        try:
            tool.validate(call.arguments)
        except ValidationError as exc:
            return ToolOutcome(call, ToolResult.error(_format_validation_error(call.name, exc)), "invalid_arguments")
        return None

    async def call_tool(self, call: ToolCall) -> ToolOutcome:
        """Run one call and emit its events. Never raises for anything the model or the tool did."""
        self.emit(ToolCallEvent(step=self.step, call=call))
        started = time.perf_counter()
        outcome = self.check_call(call)
        key = f"{call.name}\0{json.dumps(call.arguments, sort_keys=True, default=str)}"
        if outcome is None and (earlier := self._previous_calls.get(key)) is not None and not earlier.is_error:
            self._repeat_seen = True
            note = REPEAT_NOTE.format(name=call.name)
            outcome = ToolOutcome(call, earlier.model_copy(update={"content": earlier.content + note}))
            self._step_calls[key] = earlier
        elif outcome is None:
            result = await self.tools[call.name].ainvoke(call.arguments)
            outcome = ToolOutcome(call, result)
            if result.is_error:
                self.emit(ErrorEvent(step=self.step, kind="tool_failed", message=result.content))
            self._step_calls[key] = result
        self.emit(
            ToolResultEvent(
                step=self.step,
                call_id=call.id,
                name=call.name,
                content=outcome.result.content,
                is_error=outcome.result.is_error,
                duration_s=time.perf_counter() - started,
            )
        )
        return outcome

    def answer(self, output: Any, text: str) -> None:
        """Record the final answer and emit it."""
        self.answered, self.output, self.output_text = True, output, text
        self.emit(FinalAnswer(step=self.step, output=output, text=text))

    def give_up(self, kind: str, reason: str) -> None:
        """End the run without an answer; everything so far stays in the transcript."""
        self.gave_up_reason = reason
        self.emit(ErrorEvent(step=self.step, kind=kind, message=reason, recoverable=False))  # type: ignore[arg-type]

    def skip_tool(self, call: ToolCall, reason: str) -> ToolOutcome:
        """Report a call that was planned but not run (e.g. its input failed)."""
        self.emit(ToolCallEvent(step=self.step, call=call))
        self.emit(ToolResultEvent(step=self.step, call_id=call.id, name=call.name, content=reason, is_error=True))
        return ToolOutcome(call, ToolResult.error(reason))

    # ---- the final answer ----------------------------------------------------------------
    def parse_output(self, text: str) -> tuple[Any, str | None]:
        """Validate a final answer against ``output_type``: (value, None) or (None, what was wrong)."""
        output_type = self.options.output_type
        if output_type is None:
            return text.strip(), None
        candidate = _extract_json(text)
        try:
            return output_type.model_validate_json(candidate), None
        except ValidationError as exc:
            schema = json.dumps(output_type.model_json_schema())
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors()[:5])
            return None, f"the final answer must be JSON matching this schema: {schema}. Problems: {problems}"

    def output_schema(self) -> dict[str, Any] | None:
        return self.options.output_type.model_json_schema() if self.options.output_type else None


def _extract_json(text: str) -> str:
    """The JSON object inside a reply that may wrap it in prose or a code fence."""
    stripped = text.strip()
    if stripped.startswith("```"):
        stripped = stripped.strip("`")
        stripped = stripped.split("\n", 1)[1] if "\n" in stripped else stripped
    start, end = stripped.find("{"), stripped.rfind("}")
    return stripped[start : end + 1] if 0 <= start < end else stripped
