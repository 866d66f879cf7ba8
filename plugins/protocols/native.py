"""Native tool calling: the runtime returns structured tool calls (OpenAI style).

The transcript is sent as it is, tools go in the request's ``tools`` field, and
the runtime's own chat template and parser do the formatting. Only models whose
runtime declares ``native_tools`` can use it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from typing import Any

from hanlin import (ChatModel, Completion, Constraint, Message, ParseError, ProtocolError, StepProtocol, ToolCall,
                    hookimpl)
from hanlin.protocols import Action, Final, ParsedStep, RunContext
from hanlin.protocols.base import CORRECTION_PREFIX
from hanlin.protocols.context import LAST_CALL_NOTE, REPEAT_NOTE

from hanlin.plugins.protocols.code_fence import fenced_code, is_code_tool, through_fenced_code
from hanlin.plugins.protocols.react import EXAMPLE_ANSWER, EXAMPLE_TOOL, EXAMPLE_VALUES
from hanlin.plugins.protocols.tool_plan import by_question, current_question, in_plan_order, requested_tools
from hanlin.runtimes.tool_calls import looks_like_call

_DECODER = json.JSONDecoder()
# ReAct's label at the head of a plain reply: Qwen2.5-Coder-0.5B wrote "Final Answer: 1411381" or "The Final Answer:
# 50" as its whole answer in 43 of 63 tooluse runs under this protocol; the label is format, not the answer.
ANSWER_LABEL = re.compile(r"^\s*(?:the\s+)?final\s+answer\s*(?:is\s*)?[:：]\s*", re.IGNORECASE)
RESULT_NUDGE = "(If this answers the question, reply with the answer in words; call a tool only for what is still missing.)"
# While the question names a tool not used yet (see tool_plan): Qwen2.5-Coder-0.5B answered look-up-then-calculate
# questions with the looked-up fact, never calling the calculator the question asked for (tooluse kb+calc, 0 of 14).
PENDING_NUDGE = "(The question also asks you to use {pending}, which you have not used yet.)"

# Told in words: the call itself is written in the model's own tool-call format, which the runtime's template sets.
NATIVE_EXAMPLE = (
    f"An example with a made-up tool, {EXAMPLE_TOOL}, that you do not have: asked how many people live in Arvel "
    f'and Brisk together, you would call {EXAMPLE_TOOL} with {{"town": "Arvel"}}, read its result (1200), call it '
    f'with {{"town": "Brisk"}} (800), then reply with the answer: {EXAMPLE_ANSWER}. Call a tool only for what you '
    "cannot know; answer from the results the tools return."
)


def unknown_call(text: str, names: Collection[str]) -> tuple[str, Any] | None:
    """(name, arguments) of a call the model wrote as text to a tool nobody offered (a JSON object with "name" and
    "arguments"/"parameters", possibly fenced), or None. The runtimes leave such a call in the text (that is how a
    reply to an irrelevant request stays text); inside an agent run it is a mistake to correct, not the answer."""
    for start in (i for i, ch in enumerate(text) if ch == "{"):
        try:
            value, _ = _DECODER.raw_decode(text, start)
        except ValueError:
            continue
        if (isinstance(value, dict) and isinstance(value.get("name"), str) and value["name"] not in names
                and ("arguments" in value or "parameters" in value)):
            return value["name"], value.get("arguments", value.get("parameters"))
        break  # only the first object counts: prose that quotes JSON later is still an answer
    return None


def only_tool_taking(arguments: Any, ctx: RunContext) -> str | None:
    """The one offered tool whose schema these arguments fit (None for none or several). Qwen2.5-Coder-0.5B named
    its knowledge_base call after what it looked for ({"name": "lumen_harbor_travel_policy", "arguments": {"query":
    ...}}) and, told the name was wrong, wrote the same call again until the run gave up (2 of 7 look-up items); the
    arguments say which tool it meant when exactly one tool takes them."""
    if not isinstance(arguments, dict) or not arguments:
        return None
    # Every argument one of the tool's properties: an args_model that ignores unknown keys would take anything.
    fits = [name for name, tool in ctx.tools.items() if set(arguments) <= set(tool.parameters.get("properties", {}))
            and ctx.check_call(ToolCall(name=name, arguments=arguments)) is None]
    return fits[0] if len(fits) == 1 else None


def code_format(ctx: RunContext) -> str:
    """The prompt's line that lets a call to the code tool be a ```python block (see code_fence), as ReAct and ReWOO
    ask, while the question names that tool ("use Python"). Inside a JSON string Qwen2.5-Coder-0.5B wrote worse code
    than in a fence (`'e' in s` for a count, the sentence read from ``sys.argv``): tooluse@tools python items 9 -> 11
    of 21 with the line (all 63, paired: 0.46 -> 0.49; 13 of 21 when the python items ran alone). Shown for every
    question it cost more than that: the model then answered look-ups with a passage count ("3") and calculator
    questions with numbers from nowhere (all 63: 0.46 -> 0.40)."""
    names = [name for name, tool in ctx.tools.items() if is_code_tool(tool)]
    if not names or not requested_tools(current_question(ctx)[0], names[:1]):
        return ""
    return (f"To run Python with {names[0]}, you can write the code itself in a ```python block instead of a JSON "
            f"call: it runs as a {names[0]} call and you get what it printed.")


def code_written_as_text(text: str, ctx: RunContext) -> ToolCall | None:
    """A reply whose one fenced ```python block is a call to the code tool. Where the prompt says so (code_format),
    always; otherwise only before that tool has returned a result in this run (afterwards code in a reply illustrates
    the answer): asked to "find out", Qwen2.5-Coder-0.5B explained with code rather than calling the tool (5 of 21
    python items of the tooluse set, each answered with no result). One fenced block only."""
    name = next((name for name, tool in ctx.tools.items() if is_code_tool(tool)), None)
    if name is None:
        return None
    if not code_format(ctx) and any(m.role == "tool" and m.name == name and not m.is_error for m in ctx.messages):
        return None
    code = fenced_code(text)
    return None if code is None else ToolCall(name=name, arguments={"code": code})


def echoed_correction(text: str, ctx: RunContext) -> str | None:
    """The hint of the correction this reply answers, when the reply repeats that hint instead of answering."""
    last = ctx.messages[-1] if ctx.messages else None
    if last is None or last.role != "user" or not last.content.startswith(CORRECTION_PREFIX):
        return None
    hint = last.content[len(CORRECTION_PREFIX):].strip()
    return hint if hint and hint[:60] in text else None


# The first sentence of the loop guard's note on a repeated call, for any tool's name.
_REPEAT = re.compile(re.escape(REPEAT_NOTE.strip().lstrip("[").split(";")[0]).replace(re.escape("{name}"),
                                                                                     r"[\w.-]+"), re.IGNORECASE)


def echoed_note(text: str) -> str | None:
    """The loop guard's note, when the reply repeats it instead of answering: told its call was a repeat ("[The same
    python call as in your previous step, so it was not run again; ...]"), Qwen2.5-Coder-0.5B replied with that
    sentence, and it was taken for the answer (tooluse python-10); corrected once, it replied with it again, and
    that was taken; in python-05 it was the end of "...modify the code to run the same Python call as in your
    previous step, so it was not run again" (the tool's name capitalised). The note's own sentence is never an
    answer, wherever it comes and however it is capitalised."""
    match = _REPEAT.search(text)
    return match[0] if match else None


class NativeTools(StepProtocol):
    name = "tools"
    # One call per reply. Qwen2.5-Coder-0.5B writes a lone call in a ```json fence; the runtimes' call grammar frames
    # a fence as an array when several calls are allowed, and forced to open "[" the model corrupts the call
    # ("print(i)}" inside the code: 1 of 10 tooluse items answered). The loop runs one call a step anyway.
    parallel_tool_calls = False

    def check_model(self, model: ChatModel) -> None:
        if not model.capabilities.native_tools:
            raise ProtocolError(
                f"model '{model.name}' does not produce native tool calls; use protocol='react' "
                "(works with any model) or a runtime/model with a tool-calling chat template"
            )

    def shows_example(self, ctx: RunContext) -> bool:
        return bool(ctx.options.output_type is None and ctx.options.examples and ctx.tools
                    and EXAMPLE_TOOL not in ctx.tools)

    def example_answers(self, ctx: RunContext) -> tuple[str, ...]:
        return EXAMPLE_VALUES if self.shows_example(ctx) else ()

    def render(self, ctx: RunContext) -> list[Message]:
        system = ctx.options.instructions or "You are a helpful assistant. Use the tools when they help."
        if ctx.options.output_type is not None:
            system += "\nGive your final answer as a JSON object matching this schema: " + json.dumps(ctx.output_schema())
        elif self.shows_example(ctx):
            system += "\n" + NATIVE_EXAMPLE
        if ctx.options.output_type is None and (fmt := code_format(ctx)):
            system += "\n" + fmt
        # Small models re-issue the call they were just answered; a nudge after each result (as ReAct's) points at
        # the answer. Added here, in the model's view only: the transcript keeps the tool's own result.
        # (Not after the last results of a run: LAST_CALL_NOTE says that no call is left.)
        turns = []
        for m, question, used in by_question(ctx.messages):
            if m.role == "tool" and not m.is_error and not m.content.endswith(LAST_CALL_NOTE):
                pending = [t for t in requested_tools(question, ctx.tools) if t not in used]
                nudge = PENDING_NUDGE.format(pending=" and ".join(pending)) if pending else RESULT_NUDGE
                m = m.model_copy(update={"content": f"{m.content}\n{nudge}"})
            if m.role != "system":
                turns.append(m)
        return [Message.system(system), *turns]

    def constraint(self, ctx: RunContext) -> Constraint | None:
        """Only on the step after a repeated call and on the last step (tools withdrawn): one line of words that
        cannot open a JSON object, an array, a fence or a tag. Offered no tools, Qwen2.5-Coder-0.5B still wrote the
        call again as text, over and over, until the run gave up (3 of the first 10 tooluse items); the answer was in
        the result it was shown."""
        if (not (ctx.repeated or ctx.last_step) or ctx.options.output_type is not None
                or "grammar" not in ctx.model.capabilities.constraints):
            return None
        from hanlin.grammar import STEP_STRING_CHARS

        return Constraint(grammar=f"root ::= [^{{\\[`<\\n \\t] [^\\n]{{0,{STEP_STRING_CHARS}}}")

    def native_tools(self, ctx: RunContext) -> list[dict[str, Any]] | None:
        if ctx.repeated or ctx.last_step:  # stuck re-issuing a call, or out of steps: no tools, so the model answers
            return None
        allowed = in_plan_order(ctx)  # a tool named after "then" waits for those before it (see tool_plan)
        return [t.to_openai() for name, t in ctx.tools.items() if name in allowed] or None

    def parse(self, completion: Completion, ctx: RunContext) -> ParsedStep:
        if completion.tool_calls:
            return Action(list(completion.tool_calls), thought=completion.text.strip())
        text = completion.text.strip()
        if not text:
            raise ParseError(
                "the model returned neither text nor tool calls",
                hint="Either call one of the tools or write your final answer.",
            )
        specs = [t.to_openai() for t in ctx.tools.values()]
        if completion.finish_reason == "length" and looks_like_call(text, specs):
            # A call the token limit cut off is no answer: kb-08 ended "answered" with half a python call whose
            # expression ran into hundreds of zeros.
            raise ParseError("the reply was cut off at the token limit inside a tool call",
                             hint="your tool call was cut off at the length limit; write a shorter call")
        if (ctx.repeated or ctx.last_step) and looks_like_call(text, specs):
            # Tools were withdrawn for this step (a repeated call, the last step), yet the model wrote a call as text.
            raise ParseError("the model wrote a tool call while no tools were offered",
                             hint="No tool can be called now. Reply with your final answer in plain words, using "
                                  "the tool results above.")
        unknown = unknown_call(text, ctx.tools)
        if unknown is not None and (tool := only_tool_taking(unknown[1], ctx)) is not None:
            return Action([ToolCall(name=tool, arguments=unknown[1])], thought=text)
        # A python block runs even beside a JSON "call" to no tool: Qwen2.5-Coder-0.5B showed its code, then what it
        # expected it to print, {"name": "count_s", "arguments": {"count": 2}} in a ```json fence (python-11).
        if not ctx.repeated and (call := code_written_as_text(text, ctx)) is not None:
            return Action([call], thought=text)
        if unknown is not None:
            known = ", ".join(ctx.tools) or "(no tools)"
            raise ParseError(f"the model called '{unknown[0]}', which is not a tool",
                             hint=f"there is no tool named '{unknown[0]}'. Call one of: {known}; or reply with your "
                                  "final answer in plain words.")
        if (hint := echoed_correction(text, ctx)) is not None:
            # Corrected, the same model replied with the correction itself ("The last reply could not be used:
            # there is no tool named 'count_s'. ..."), and that was taken for its answer.
            raise ParseError("the model repeated the correction instead of answering",
                             hint="that was the message about your previous reply, not an answer. " + hint)
        if echoed_note(text) is not None:
            raise ParseError("the model repeated the note on the tool result instead of answering",
                             hint="that sentence was a note about your call, not an answer. Reply with the answer to "
                                  "the question, taken from the tool result above.")
        return Final(ANSWER_LABEL.sub("", text, count=1).strip() or text)

    def assistant_message(self, completion: Completion, parsed: ParsedStep | None) -> Message:
        # parsed.calls: the runtime's calls, or the code the reply showed (code_written_as_text), so each tool
        # result in the transcript answers a call of the turn before it. A reply whose code block became the call
        # is kept only up to that block: the rest guessed at the output the tool is about to return (the whole
        # reply was streamed as the step's TokenDelta events). Tooluse, all 63, paired: 0.49 -> 0.51 (python-07
        # and -17 answered with the result instead of the guess; python-10 lost to an echoed note).
        calls = parsed.calls if isinstance(parsed, Action) else []
        text = completion.text
        shown = fenced_code(text)
        if calls and not completion.tool_calls and shown is not None and calls[0].arguments.get("code") == shown:
            text = through_fenced_code(text)
        return Message.assistant(text, calls)


@hookimpl
def register_protocols(register: Any) -> None:
    register(NativeTools)
