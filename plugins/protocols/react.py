"""ReAct: Thought / Action / Action Input / Observation, until Final Answer.

Observations go back to the model as user turns ("Observation: ..."), so the
rendered prompt of step n+1 extends the prompt of step n token for token and a
runtime with prefix caching only pays for the new turn. When the runtime can
take a grammar, each step is constrained so the tool name is a registered one
and Action Input is JSON valid for that tool's schema (a tool that runs code
takes a ```python block instead: see code_fence).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from typing import Any

from hanlin import Completion, Constraint, Message, StepProtocol, ToolCall, hookimpl
from hanlin.protocols import Action, Final, ParsedStep, RunContext
from hanlin.protocols.example_guard import just_sent_back
from hanlin.plugins.protocols.code_fence import MAX_CODE_LINES, add_code_block, is_code_tool
from hanlin.plugins.protocols.react_parser import parse_react
from hanlin.plugins.protocols.tool_plan import (by_question, current_question, in_plan_order, pending_tools,
                                                planned_order, requested_tools)

CORRECTION = "Observation: Error: "  # how a malformed step is answered (a user turn, but not a new question)
STOP = ["\nObservation:"]  # not a bare "Observation:": a reply that starts with one would be cut to nothing
# After each observation the question is repeated: after a long observation Qwen2.5-Coder-0.5B lost a multi-step task
# from view and answered look-up-then-calculate questions (14 of 63 tooluse items) with the looked-up fact itself.
# Spelling out "if a calculation is still needed, take the next Action" made it act forever instead (it called the
# calculator again and again with the right result in hand), so the nudge only points at the answer.
OBSERVATION_NUDGE = "The question was: {question}\nIf this answers the question, reply with the Final Answer."
# A question that names tools ("find the rate in the knowledge base, then use the calculator") is a plan the model
# has to finish. Qwen2.5-Coder-0.5B answered such look-up-then-calculate questions with the looked-up fact (0 of 14
# tooluse items): it re-issued its first call, and the repeat guard then forced the answer. So while a tool the
# question names is still unused the nudge says which; once a question naming several tools has had them all, the
# nudge points at the last result (after computing the answer the model read "find the rate" in the restated
# question and answered with the rate, or went back to the first tool).
PENDING_NUDGE = "The question was: {question}\nIt asks you to use {pending}, which you have not used yet."
DONE_NUDGE = ("The question was: {question}\nYou have used the tools it asks for; the last one gave the result above.\n"
              "If this result answers the question, reply with it as the Final Answer.")
# After the plan's last tool has given its result, the model went back to the first ("find the meal limit") and, shown
# that fact again under DONE_NUDGE, answered with it (45 for a 6-day trip after computing 270): so a call to an
# earlier tool of the plan is followed by what the plan's last tool gave.
DONE_EARLIER_NUDGE = ("The question was: {question}\nYou have used the tools it asks for; {tool}, the last of them, "
                      "gave {result}.\nIf that answers the question, reply with it as the Final Answer.")
# Worked examples use invented tools, never ones a run offers (the example is left out if a real tool has one of
# these names). The example looks facts up and then computes with a tool: a looked-up fact is not yet the answer.
EXAMPLE_TOOL = "lookup_population"
EXAMPLE_CALC_TOOL = "add_numbers"
EXAMPLE_TOOLS = (EXAMPLE_TOOL, EXAMPLE_CALC_TOOL)
EXAMPLE_ANSWER = "2000"
EXAMPLE_VALUES = ("1200", "800", EXAMPLE_ANSWER)  # the example's numbers, sent back when given as an answer with
# nothing in the run behind them (see example_guard); tests check the example shows each
REACT_EXAMPLE = (
    f"\nAn example with made-up tools, {EXAMPLE_TOOL} and {EXAMPLE_CALC_TOOL}, that you do not have:\n"
    "Question: How many people live in Arvel and Brisk together?\n"
    "Thought: I need the population of each town, then their sum.\n"
    f"Action: {EXAMPLE_TOOL}\n"
    'Action Input: {"town": "Arvel"}\n'
    "Observation: Arvel has 1200 inhabitants.\n"
    "Thought: Arvel has 1200. Now Brisk.\n"
    f"Action: {EXAMPLE_TOOL}\n"
    'Action Input: {"town": "Brisk"}\n'
    "Observation: Brisk has 800 inhabitants.\n"
    "Thought: The question asks for both together, so I still have to add 1200 and 800.\n"
    f"Action: {EXAMPLE_CALC_TOOL}\n"
    'Action Input: {"a": 1200, "b": 800}\n'
    "Observation: 2000\n"
    "Thought: 2000 is the number of people in both towns.\n"
    f"Final Answer: {EXAMPLE_ANSWER}\n\n"
)


def describe_tools(ctx: RunContext) -> str:
    lines = []
    for tool in ctx.tools.values():
        summary = tool.description.split("\n\n", 1)[0].replace("\n", " ").strip()
        lines.append(f"- {tool.name}: {summary}\n  Arguments (JSON schema): {json.dumps(tool.parameters, ensure_ascii=False)}")
    return "\n".join(lines) or "(no tools: answer directly)"


class ReAct(StepProtocol):
    name = "react"

    def __init__(self, *, max_string_chars: int | None = None, **options: Any) -> None:
        """``max_string_chars``: bound on open JSON strings in constrained steps (default STEP_STRING_CHARS)."""
        super().__init__(**options)
        self.max_string_chars = max_string_chars

    def system_prompt(self, ctx: RunContext) -> str:
        names = ", ".join(ctx.tools) or "none"
        final = "the final answer"
        if ctx.options.output_type is not None:
            final = "a JSON object matching this schema: " + json.dumps(ctx.output_schema())
        intro = ctx.options.instructions or "You are a helpful assistant."
        return (
            f"{intro} You have access to the following tools:\n{describe_tools(ctx)}\n\n"
            "To use a tool, use this format:\n"
            "Thought: think about what to do next\n"
            f"Action: the tool name, one of [{names}]\n"
            "Action Input: the tool's arguments as a JSON object\n"
            f"{self.code_format(ctx)}"
            'The tool\'s result will then be given to you as "Observation: ...".\n\n'
            "When you have the answer, or no tool is needed, use this format:\n"
            "Thought: the reasoning that leads to the answer\n"
            f"Final Answer: {final}\n\n"
            "Do not guess what a tool would return: call it, then answer from its Observation.\n"
            f"{self.example(ctx)}"
            "Begin!"
        )

    def code_format(self, ctx: RunContext) -> str:
        """How a code tool's input is written: a ```python block (see code_fence), not a JSON string. Measured on
        tooluse@react, all 63: python 10 -> 11 of 21 (SyntaxErrors of one-line loops gone: 5 items better; 4 worse,
        whose fenced cells computed a part of the answer, e.g. `2**100` for its digit sum); overall 0.49 -> 0.52 +-
        0.05 paired, within noise. A placeholder asking for "code that computes the whole answer" measured 0.51."""
        names = [name for name, tool in ctx.tools.items() if is_code_tool(tool)]
        if not names:
            return ""
        return (f"For {' or '.join(names)}, Action Input is the code itself in a ```python block, not JSON:\n"
                f"Action: {names[0]}\nAction Input:\n```python\n<the code, printing what you need>\n```\n")

    def example(self, ctx: RunContext) -> str:
        """A short worked run with a made-up tool: it shows the format once, never a real tool's use. Left out when
        switched off, when no tools are offered, when the answer must be JSON (the example's answer is not), or when a
        real tool happens to carry the made-up name."""
        if (not ctx.options.examples or not ctx.tools or ctx.options.output_type is not None
                or set(EXAMPLE_TOOLS) & set(ctx.tools)):
            return ""
        return REACT_EXAMPLE

    def example_answers(self, ctx: RunContext) -> tuple[str, ...]:
        return EXAMPLE_VALUES if self.example(ctx) else ()

    def render(self, ctx: RunContext) -> list[Message]:
        out = [Message.system(self.system_prompt(ctx))]
        last_results: dict[str, str] = {}  # the latest successful result of each tool since the question
        asked = ""
        for m, question, used in by_question(ctx.messages):
            if question != asked:
                asked, last_results = question, {}
            if m.role == "tool":
                prefix = "Error: " if m.is_error else ""
                nudge = observation_nudge(question, ctx.tools, used)
                order = planned_order(question, ctx.tools)
                if (order and m.name in order[:-1] and set(requested_tools(question, ctx.tools)) <= used
                        and (result := last_results.get(order[-1]))):
                    nudge = DONE_EARLIER_NUDGE.format(question=" ".join(question.split()), tool=order[-1],
                                                      result=result)
                if not m.is_error and m.name:
                    last_results[m.name] = m.content.split("\n")[0].strip()[:200]
                out.append(Message.user(f"Observation: {prefix}{m.content}\n{nudge}"))
            elif m.role == "system":
                continue  # the app's instructions are part of our own system prompt
            elif m.role == "assistant":
                # On a question that names several tools, earlier steps are shown without their Thought line:
                # Qwen2.5-Coder-0.5B copied its first thought ("I need to find X") word for word into every later
                # step, and with it the first call. Elsewhere the transcript stays as the model wrote it.
                plan = len(requested_tools(question, ctx.tools)) > 1
                out.append(Message(role="assistant", content=without_thought(m.content) if plan else m.content))
            else:
                out.append(Message(role=m.role, content=m.content))
        return out

    def stop_sequences(self, ctx: RunContext) -> list[str]:
        return STOP

    def parse(self, completion: Completion, ctx: RunContext) -> ParsedStep:
        step = parse_react(completion.text, ctx.tools)
        if step.final is not None:
            return Final(step.final, thought=step.thought)
        assert step.action is not None
        return Action([ToolCall(name=step.action, arguments=step.arguments)], thought=step.thought)

    def correction(self, hint: str) -> Message:
        return Message.user(f"{CORRECTION}{hint}")

    def constraint(self, ctx: RunContext) -> Constraint | None:
        if "grammar" not in ctx.model.capabilities.constraints:
            return None
        from hanlin.grammar import STEP_MAX_TOKENS

        # Stuck re-issuing the previous step's call (see RunContext.repeated): only the answer is left to give, or a
        # tool the question asks for that the run has not used. Offering every tool the run had not called let
        # Qwen2.5-Coder-0.5B call one after another until max_steps: tooluse@react fell from 0.41 to 0.27 on all 63
        # items (answered 51%), plain look-ups from most to 0 of 7.
        # On the run's last step only the answer is left (see RunContext.last_step). Otherwise a tool the question
        # names after "then" waits for the ones it names before (see tool_plan.in_plan_order).
        offered = [] if ctx.last_step else pending_tools(ctx) if ctx.repeated else in_plan_order(ctx)
        # Sent back for answering with the worked example's answer (see example_guard): greedy decoding wrote the
        # same Final Answer again (python-18: "2000" twice, with 717897987691852588770249 from its cell), so the
        # step after offers the tools only.
        final = not (offered and just_sent_back(ctx.messages))
        # Re-issuing a look-up while a tool of the question's sequence ("..., then use the calculator") is unused:
        # only that tool is left, no answer (the model had answered with the looked-up fact, 45 euros a day for a
        # 6-day trip's meals). Alone this moved no item: the model computed 270, looked the limit up again and
        # answered 45; with DONE_EARLIER_NUDGE it answers 270 (kb-13). Tools named as alternatives ("use the
        # calculator or Python") are no sequence: the answer stays open. The loop guard's note still says "reply
        # with the Final Answer" (see RunContext).
        if (ctx.repeated and offered and not ctx.last_step
                and set(offered) <= set(planned_order(current_question(ctx)[0], ctx.tools))):
            final = False
        return Constraint(grammar=react_grammar(ctx, self.max_string_chars, offered, final=final),
                          max_tokens=STEP_MAX_TOKENS)


def observation_nudge(question: str, tools: Iterable[str], used: Collection[str]) -> str:
    """What follows an observation: the question again and, where the question names tools, which are still unused
    (or, once a question naming several has had them all, that the last result is the one to answer with)."""
    q = " ".join(question.split()) or "(see above)"
    requested = requested_tools(question, tools)
    pending = [t for t in requested if t not in used]
    if pending:
        return PENDING_NUDGE.format(question=q, pending=" and ".join(pending))
    return (DONE_NUDGE if len(requested) > 1 else OBSERVATION_NUDGE).format(question=q)


def without_thought(step: str) -> str:
    """A ReAct step less its leading Thought line (the step unchanged when it has no Action/Final line after it)."""
    if not step.lstrip().startswith("Thought:"):
        return step
    for label in ("\nAction:", "\nFinal Answer:"):
        if label in step:
            return step[step.index(label) + 1:]
    return step


def react_grammar(ctx: RunContext, max_string_chars: int | None, offered: Iterable[str], final: bool = True) -> str:
    """GBNF for one step: a thought line, then one valid action (of the ``offered`` tools) or, unless ``final`` is
    False, the final answer."""
    from hanlin.grammar import STEP_STRING_CHARS, GrammarBuilder, gbnf_literal, line_rule

    # Bounded: a runaway string still ends as a valid step (see hanlin.grammar).
    g = GrammarBuilder(max_string_chars=max_string_chars or STEP_STRING_CHARS)
    g.add("thought", line_rule())
    actions = []
    for i, tool in enumerate(ctx.tools[name] for name in offered):
        if is_code_tool(tool):  # the code in a fenced block, as the prompt's format line says
            line = add_code_block(g)
            fence = chr(10) + "Action Input:" + chr(10) + "```python" + chr(10)
            actions.append(f"{gbnf_literal(tool.name)} {gbnf_literal(fence)} {line}{{1,{MAX_CODE_LINES}}} "
                           f"{gbnf_literal('```')}")
            continue
        args = g.schema(tool.parameters, f"args{i}")
        actions.append(f"{gbnf_literal(tool.name)} {gbnf_literal(chr(10) + 'Action Input: ')} {args}")
    schema = ctx.output_schema()
    final_body = g.schema(schema, "answer") if schema else line_rule(STEP_STRING_CHARS)
    g.add("final", f"{gbnf_literal('Final Answer: ')} {final_body}")
    alternatives = ["final"] if final or not actions else []
    if actions:
        g.add("action", f"{gbnf_literal('Action: ')} ( {' | '.join(actions)} )")
        alternatives.insert(0, "action")
    # The step may end with a newline: Qwen2.5's tokenizer writes '"}\n' as one token, and a grammar that refused it
    # made the model put a stray '}' inside the code string instead ("print(n)}": a SyntaxError in most python steps).
    g.add("root", f"{gbnf_literal('Thought: ')} thought {gbnf_literal(chr(10))} ( {' | '.join(alternatives)} ) "
                  f"{gbnf_literal(chr(10))}?")
    return g.render("root")


@hookimpl
def register_protocols(register: Any) -> None:
    register(ReAct)
