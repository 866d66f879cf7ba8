"""ReWOO: plan all tool calls up front, run them (independent ones concurrently), then solve.

One model call plans, the worker runs the plan as a dependency graph (a step
starts as soon as the steps it mentions have finished), and one model call
writes the answer from the evidence. Fewer model calls than ReAct, and the
tools of independent steps overlap in time.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from hanlin import AgentProtocol, Constraint, Message, ParseError, ToolCall, hookimpl
from hanlin.protocols import RunContext

from hanlin.plugins.protocols.code_fence import MAX_CODE_LINES, add_code_block, is_code_tool
from hanlin.plugins.protocols.react import EXAMPLE_TOOL, describe_tools
from hanlin.plugins.protocols.rewoo_parser import PlanStep, parse_plan, substitute, without_cut_line


# Invented tools, so the example shows the format and #E references without suggesting a real tool's use.
EXAMPLE_TOOLS = (EXAMPLE_TOOL, "add_numbers")
PLAN_EXAMPLE = (
    "An example, for another task, with made-up tools you do not have:\n"
    "Task: How many people live in Arvel and Brisk together?\n"
    "Plan: find the population of Arvel\n"
    f'#E1 = {EXAMPLE_TOOL}[{{"town": "Arvel"}}]\n'
    "Plan: find the population of Brisk\n"
    f'#E2 = {EXAMPLE_TOOL}[{{"town": "Brisk"}}]\n'
    "Plan: add the two\n"
    '#E3 = add_numbers[{"a": "#E1", "b": "#E2"}]'
)

# No worked example for the solver: Qwen2.5-Coder-0.5B copied its answer ("2000") into 15 of 20 tool-use answers.


class ReWOO(AgentProtocol):
    name = "rewoo"

    def __init__(self, *, max_plan_steps: int = 12, max_string_chars: int | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.max_plan_steps = max_plan_steps
        self.max_string_chars = max_string_chars  # bound on open JSON strings in a constrained plan

    # ---- prompts ---------------------------------------------------------------------------
    def planner_prompt(self, ctx: RunContext) -> list[Message]:
        system = "\n\n".join(
            [
                ctx.options.instructions or "You are a planner that solves tasks with tools.",
                f"Tools:\n{describe_tools(ctx)}",
                "Write a plan that gets the evidence needed for the task. For each step write two lines:\n"
                "Plan: <what this step does>\n"
                "#E<n> = <tool>[<arguments as one JSON object>]\n"
                "Number steps #E1, #E2, ... A later step may use an earlier result by writing #E<n> inside a "
                "string argument. Use as few steps as the task needs. Write only the plan; do not answer.",
                *self.code_format(ctx),
                *self.example(ctx),
            ]
        )
        history = [m for m in ctx.messages[:-1] if m.role == "user" or (m.role == "assistant" and not m.tool_calls)]
        return [Message.system(system), *history, ctx.messages[-1]]

    def code_format(self, ctx: RunContext) -> list[str]:
        """How a code tool's step is written: its code in a ```python block after the step line, not in a JSON string
        (see code_fence). In JSON, Qwen2.5-Coder-0.5B left the code's string open and the plan ran on inside it
        ("...return len(primes)}] #E2 = python[{" as code), or crammed loops onto one line: python 1 of 21 tooluse
        items answered."""
        names = [name for name, tool in ctx.tools.items() if is_code_tool(tool)]
        if not names:
            return []
        return [f"For {' or '.join(names)}, write the code on the lines after the step, in a ```python block, not "
                f"as JSON:\nPlan: <what this step does>\n#E1 = {names[0]}\n```python\n<the code, printing what you "
                "need>\n```"]

    def example(self, ctx: RunContext) -> list[str]:
        """A short plan with made-up tools (none when switched off or when a real tool carries one of their names)."""
        if not ctx.options.examples or not ctx.tools or set(EXAMPLE_TOOLS) & set(ctx.tools):
            return []
        return [PLAN_EXAMPLE]

    def solver_prompt(self, ctx: RunContext, task: str, plan: list[PlanStep], evidence: dict[int, str]) -> list[Message]:
        lines = []
        for step in plan:
            lines.append(f"Plan: {step.description or '(no description)'}")
            tool = ctx.tools.get(step.tool)
            if tool is not None and is_code_tool(tool) and set(step.arguments) == {"code"}:
                lines.append(f"{step.label} = {step.tool}\n```python\n{step.arguments['code']}\n```")
            else:
                lines.append(f"{step.label} = {step.tool}[{json.dumps(step.arguments, ensure_ascii=False)}]")
            lines.append(f"Evidence: {evidence.get(step.id, '(not run)')}")
        final = "the answer only"
        if ctx.options.output_type is not None:
            final = "only a JSON object matching this schema: " + json.dumps(ctx.output_schema())
        # "Use it as it is": told only to "solve the task using the plan and the evidence", Qwen2.5-Coder-0.5B worked
        # answers out again and got them wrong ("The square root of 1849 is 27." with 43 as the evidence); replayed
        # on the 55 solver prompts of a tooluse run, this wording answered 31 right against 27.
        system = (ctx.options.instructions or "You solve tasks from evidence.") + (
            "\n\nAnswer the task from the evidence below: the evidence is what the tools returned for each step of "
            f"the plan. Use it as it is; do not work it out again. Reply with {final}."
        )
        body = f"Task: {task}\n\n" + ("\n".join(lines) if lines else "(no tools were needed)") + "\n\nAnswer:"
        return [Message.system(system), Message.user(body)]

    def plan_constraint(self, ctx: RunContext) -> Constraint | None:
        if not ctx.use_constraints or "grammar" not in ctx.model.capabilities.constraints or not ctx.tools:
            return None
        from hanlin.grammar import STEP_MAX_TOKENS, STEP_STRING_CHARS, GrammarBuilder, gbnf_literal, line_rule

        g = GrammarBuilder(max_string_chars=self.max_string_chars or STEP_STRING_CHARS)
        # Each tool with its own argument schema, as in ReAct's step grammar (evidence goes inside string arguments,
        # "#E1"). With any JSON object allowed, 45% of Qwen2.5-Coder-0.5B's planned calls on the tooluse set had
        # invalid arguments ({"question": ...} for the knowledge base's "query", the schema's own keys copied in).
        calls = " | ".join(self._call_rule(g, name, tool, i) for i, (name, tool) in enumerate(ctx.tools.items()))
        g.add("step", f'{gbnf_literal("Plan: ")} {line_rule()} "\\n#E" [1-9] [0-9]? " = " ( {calls} )')
        # A plan may end with a newline: '}]\n' is one token to Qwen2.5, and a grammar without the optional end
        # read it as the start of another step, forcing the model into a step it did not want.
        g.add("root", f'step ( "\\n" step ){{0,{self.max_plan_steps - 1}}} "\\n"?')
        # A plan has several steps; each is bounded like a ReAct step.
        return Constraint(grammar=g.render("root"), max_tokens=STEP_MAX_TOKENS * 2)

    @staticmethod
    def _call_rule(g: Any, name: str, tool: Any, i: int) -> str:
        """One tool's step body: ``name[{json}]``, or for a code tool ``name`` and a fenced block (see code_format)."""
        from hanlin.grammar import gbnf_literal

        if is_code_tool(tool):
            line = add_code_block(g)
            return f"{gbnf_literal(name + chr(10) + '```python' + chr(10))} {line}{{1,{MAX_CODE_LINES}}} {gbnf_literal('```')}"
        return f'{gbnf_literal(name)} "[" {g.schema(tool.parameters, f"args{i}")} "]"'

    # ---- the run ---------------------------------------------------------------------------
    async def run(self, ctx: RunContext) -> None:
        task = ctx.messages[-1].content
        plan: list[PlanStep] | None = None
        while plan is None:
            if not ctx.steps_left:
                return ctx.give_up("max_steps", f"reached max_steps={ctx.options.max_steps} without a usable plan")
            ctx.start_step("plan")
            completion = await ctx.generate(self.planner_prompt(ctx), constraint=self.plan_constraint(ctx))
            text = without_cut_line(completion.text) if completion.finish_reason == "length" else completion.text
            try:
                if not text.strip() and completion.text.strip():
                    raise ParseError("the plan was cut off at the token limit before its first step was complete",
                                     hint="Write a short plan: one step per piece of evidence, each step once.")
                plan = parse_plan(text, ctx.tools, max_steps=self.max_plan_steps)
            except ParseError as exc:
                ctx.messages.append(Message.assistant(completion.text))
                ctx.messages.append(Message.user(f"That plan could not be used: {exc}. {exc.hint}"))
                if not ctx.record_failure("parse", str(exc)):
                    return ctx.give_up("parse", f"no valid plan after {ctx.retries} attempts: {exc}")
            else:
                ids = {s.id: ToolCall(name=s.tool, arguments=s.arguments) for s in plan}
                ctx.messages.append(Message.assistant(completion.text, list(ids.values())))
        ctx.record_success()

        if plan:
            if not ctx.steps_left:  # the plan came on the last step: no step is left to run it
                return ctx.give_up("max_steps", f"reached max_steps={ctx.options.max_steps} before the plan could run")
            ctx.start_step("work")
        evidence = await self.work(ctx, plan, ids)
        for step in plan:
            call = ids[step.id]
            outcome_text, is_error = evidence[step.id]
            ctx.messages.append(Message.tool(outcome_text, tool_call_id=call.id, name=call.name, is_error=is_error))

        texts = {k: v[0] for k, v in evidence.items()}
        while ctx.steps_left:
            ctx.start_step("solve")
            completion = await ctx.generate(self.solver_prompt(ctx, task, plan, texts))
            text = completion.text.strip()
            value, problem = ctx.parse_output(text) if text else (None, "the answer was empty")
            ctx.messages.append(Message.assistant(completion.text))
            if problem is None:
                return ctx.answer(value, text)
            ctx.messages.append(Message.user(f"That answer could not be used: {problem}"))
            if not ctx.record_failure("output_invalid", problem):
                return ctx.give_up("output_invalid", f"the solver never produced a valid answer: {problem}")
        ctx.give_up("max_steps", f"reached max_steps={ctx.options.max_steps} before the solver answered")

    async def work(self, ctx: RunContext, plan: list[PlanStep], calls: dict[int, ToolCall]) -> dict[int, tuple[str, bool]]:
        """Run every step once its dependencies are done; independent steps overlap."""
        done: dict[int, asyncio.Future[tuple[str, bool]]] = {
            s.id: asyncio.get_running_loop().create_future() for s in plan
        }

        async def run_step(step: PlanStep) -> None:
            deps = {d: await done[d] for d in sorted(step.depends_on)}
            failed = [f"#E{d}" for d, (_, err) in deps.items() if err]
            call = calls[step.id]
            if failed:
                outcome = ctx.skip_tool(call, f"skipped: it depends on {', '.join(failed)}, which failed")
            else:
                tool = ctx.tools.get(step.tool)
                arguments = substitute(step.arguments, {d: t for d, (t, _) in deps.items()},
                                       tool.parameters if tool is not None else None)
                outcome = await ctx.call_tool(call.model_copy(update={"arguments": arguments}))
            done[step.id].set_result((outcome.result.content, outcome.result.is_error))

        await asyncio.gather(*(run_step(s) for s in plan))
        return {sid: fut.result() for sid, fut in done.items()}


@hookimpl
def register_protocols(register: Any) -> None:
    register(ReWOO)
