"""The protocol contract, and StepProtocol: the think-act-observe loop ReAct and native calling share.

A protocol renders the prompt, parses what the model wrote, and decides the
next step. ``AgentProtocol.run`` is free-form (ReWOO plans, works, then
solves); ``StepProtocol`` implements the common loop once so a new step-style
protocol only writes ``render`` and ``parse``.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from hanlin.chat_model import ChatModel, Completion, Constraint
from hanlin.errors import ParseError
from hanlin.messages import Message, ToolCall
from hanlin.protocols.context import RunContext, ToolOutcome
from hanlin.protocols.example_guard import copied_example_answer, example_answer_hint

CORRECTION_PREFIX = "Your last reply could not be used: "  # how StepProtocol.correction shows a mistake to the model


@dataclass(slots=True)
class Action:
    """The model asked for one or more tool calls."""

    calls: list[ToolCall]
    thought: str = ""


@dataclass(slots=True)
class Final:
    """The model gave its final answer."""

    text: str
    thought: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


ParsedStep = Action | Final


class AgentProtocol(ABC):
    """An agent style. Subclasses set ``name`` and implement ``run``.

    ``run`` ends by calling ``ctx.answer(...)`` or ``ctx.give_up(...)``; if it
    simply returns, the run counts as given up. Exceptions from the model end
    the run with status ``error``; the agent catches them, the protocol need not.
    """

    name: ClassVar[str]

    def __init__(self, **options: Any) -> None:
        self.options = options

    def check_model(self, model: ChatModel) -> None:
        """Raise ProtocolError when this protocol cannot drive ``model``."""

    @abstractmethod
    async def run(self, ctx: RunContext) -> None: ...


class StepProtocol(AgentProtocol):
    """Render, generate, parse, act, observe — until a final answer, the step limit or the retry limit."""

    # ---- what subclasses write ------------------------------------------------------------
    @abstractmethod
    def render(self, ctx: RunContext) -> list[Message]:
        """The messages to send to the model for the next step."""

    @abstractmethod
    def parse(self, completion: Completion, ctx: RunContext) -> ParsedStep:
        """Turn the model's reply into an Action or a Final, or raise ParseError with a hint."""

    def stop_sequences(self, ctx: RunContext) -> list[str] | None:
        return None

    def constraint(self, ctx: RunContext) -> Constraint | None:
        """A grammar/schema admitting only well-formed steps, when the model can honour one."""
        return None

    def native_tools(self, ctx: RunContext) -> list[dict[str, Any]] | None:
        return None

    # With native tools: whether one reply may hold several calls (None: the runtime's default, which allows them).
    parallel_tool_calls: ClassVar[bool | None] = None

    def example_answers(self, ctx: RunContext) -> tuple[str, ...]:
        """The final answers of the worked examples this protocol shows in ``ctx``'s prompt (none by default): a
        final answer that repeats one with nothing in the run behind it is sent back (see example_guard)."""
        return ()

    def assistant_message(self, completion: Completion, parsed: ParsedStep | None) -> Message:
        calls = parsed.calls if isinstance(parsed, Action) else []
        return Message.assistant(completion.text, calls)

    def observation(self, outcome: ToolOutcome) -> Message:
        return Message.tool(
            outcome.result.content, tool_call_id=outcome.call.id, name=outcome.call.name, is_error=outcome.result.is_error
        )

    def correction(self, hint: str) -> Message:
        """How a mistake is shown back to the model."""
        return Message.user(f"{CORRECTION_PREFIX}{hint}")

    # ---- the loop -------------------------------------------------------------------------
    async def next_step(self, ctx: RunContext) -> ParsedStep | None:
        """Start a step, ask the model, parse its reply. None when the reply could not be parsed: the model is shown
        the correction, and once the retries are spent the run has given up (``ctx.gave_up_reason`` is set)."""
        ctx.start_step()
        constraint = self.constraint(ctx) if ctx.use_constraints else None
        completion = await ctx.generate(
            self.render(ctx), stop=self.stop_sequences(ctx), constraint=constraint, tools=self.native_tools(ctx),
            parallel_tool_calls=self.parallel_tool_calls,
        )
        try:
            parsed = self.parse(completion, ctx)
        except ParseError as exc:
            ctx.messages.append(self.assistant_message(completion, None))
            ctx.messages.append(self.correction(exc.hint))
            if not ctx.record_failure("parse", str(exc)):
                ctx.give_up("parse", f"the model's output could not be parsed {ctx.retries} times in a row: {exc}")
            return None
        ctx.messages.append(self.assistant_message(completion, parsed))
        return parsed

    def finish(self, ctx: RunContext, text: str) -> bool:
        """Take ``text`` as the final answer if it matches the output type; True when the run ended (answered, or
        gave up after the retries), False when the model was shown why it must answer again."""
        # A guess, so only while a retry is left: with max_retries=0 (or spent) the answer is taken as it is.
        copied = (copied_example_answer(text, self.example_answers(ctx), ctx.messages)
                  if ctx.retries < ctx.options.max_retries else None)
        if copied is not None:
            hint = example_answer_hint(copied)
            ctx.messages.append(self.correction(hint))
            ctx.record_failure("example_answer", hint)  # within the budget: checked above
            return False
        value, problem = ctx.parse_output(text)
        if problem is None:
            ctx.answer(value, text)
            return True
        ctx.messages.append(self.correction(problem))
        if not ctx.record_failure("output_invalid", problem):
            ctx.give_up("output_invalid", f"the final answer never matched the output type: {problem}")
            return True
        return False

    async def run(self, ctx: RunContext) -> None:
        while ctx.steps_left:
            parsed = await self.next_step(ctx)
            if parsed is None:
                if ctx.gave_up_reason is not None:
                    return
                continue
            if isinstance(parsed, Final):
                if self.finish(ctx, parsed.text):
                    return
                continue
            outcomes = await asyncio.gather(*(ctx.call_tool(call) for call in parsed.calls))
            observations = [self.observation(o) for o in outcomes]
            if observations:  # the results' events stay as they were
                observations[-1] = ctx.noted_if_last_results(observations[-1])
            ctx.messages.extend(observations)
            failures = [o for o in outcomes if o.failure]
            if not failures:
                ctx.record_success()
            elif not ctx.record_failure(failures[0].failure or "tool_failed", failures[0].result.content):
                return ctx.give_up(
                    failures[0].failure or "tool_failed",
                    f"the model made {ctx.retries} invalid tool calls in a row; last: {failures[0].result.content}",
                )
        ctx.give_up("max_steps", f"reached max_steps={ctx.options.max_steps} without a final answer")
