"""Code acting (CodeAct; smolagents' CodeAgent): each step the model writes one Python cell.

The cell runs in the python tool's Jupyter kernel for the run's session, so
variables persist across steps. The other offered tools are plain Python
functions inside the cell (see code_bridge): their results come back as Python
values and their errors as exceptions. ``final_answer(value)`` ends the run.
What the cell printed plus its last expression's value, or its traceback, a
SyntaxError or a timeout, is the observation the model sees next.

When the runtime takes a grammar, each step is constrained to a thought line
and one fenced ```python block, so it always parses.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import textwrap
import threading
import uuid
from typing import Any

from hanlin import Completion, Constraint, Message, ParseError, ProtocolError, StepProtocol, Tool, ToolCall, hookimpl
from hanlin.chat_model import ChatModel
from hanlin.events import ErrorEvent, ToolCallEvent, ToolResultEvent
from hanlin.plugins.protocols.code_bridge import Bridge, signature
from hanlin.plugins.protocols.code_fence import MAX_CODE_LINES, MAX_LINE_CHARS, add_code_block
from hanlin.plugins.protocols.tool_plan import requested_tools
from hanlin.protocols import Action, ParsedStep, RunContext

STOP = ["\n```\n", "\nObservation:"]  # a model without the grammar stops after its block
CODE_LANGS = {"", "python", "py", "python3", "ipython"}
NO_OUTPUT_NOTE = "(no output: print() what you need to see, or call final_answer(...))"
REPEATED_FAILURE_NOTE = ("[This is the same code as your previous step and it failed the same way. Change it: fix the "
                         "error, or print() what a function returns and read it before using it.]")
REPEATED_CELL_NOTE = "[This is the same code as your previous step, so now call final_answer(...) with its output.]"
# A failed cell whose tool calls returned first shows those returns, then this, then the error: the model is asked
# to read them as it reads any observation (the task and the nudge follow), not only to fix the code.
FAILED_AFTER_RETURNS = "\n\nThen the code failed:\n"
RETURNS_NOTE = "If the answer is in the text returned above, call final_answer(...) with it; else fix the code."
CORRECTION = "Observation: Error: "  # how an unparseable step is answered (a user turn, but not a new task)
# The task is repeated after each observation: a small model loses it from view after a long one. Telling
# Qwen2.5-Coder-0.5B also "if it still needs a calculation, write the code for that" made it run cells until the run
# gave up (14 of 14 look-up items, from 14 wrong answers), so the nudge only points at the answer.
OBSERVATION_NUDGE = "The task was: {question}\nIf this gives the answer, call final_answer(...) with it."
# While the task names a function the code has not called (see tool_plan): Qwen2.5-Coder-0.5B wrote plain Python
# with numbers it made up for look-up-then-calculate tasks, never calling knowledge_base(...) (tooluse, 0 of 14).
PENDING_NUDGE = "The task was: {question}\nIt asks you to use {pending}, which your code has not called yet."

EXAMPLE = '''Here is an example with a different task:
Task: How many days are there from 2024-01-15 to 2024-03-01?
Thought: I will subtract the two dates with the datetime module.
```python
from datetime import date
days = (date(2024, 3, 1) - date(2024, 1, 15)).days
print(days)
```
Observation:
46
Thought: The difference is 46 days.
```python
final_answer(46)
```'''
EXAMPLE_ANSWER = "46"  # must stay the example's answer: one the model gives with nothing behind it is sent back
# No second example with a look-up function: Qwen2.5-Coder-0.5B copied its answer (2000) into 2 of 63 tooluse answers
# (kb-06, kb-13) and gained nothing on the 14 look-up-then-calculate items (0 of 14 in runs with and without it); the
# dates example's 46 is copied too at times (kb-10, kb-15 before).


def parse_code_step(text: str, finish_reason: str | None = None) -> tuple[str, str]:
    """(thought, code) from a reply: the text before the first fence, and the python blocks joined.

    A block left open is accepted (a stop sequence cut its closing fence) unless the reply hit the token limit.
    """
    thought: list[str] = []
    blocks: list[list[str]] = []
    current: list[str] | None = None
    keep = False
    for line in text.split("\n"):
        stripped = line.strip()
        if current is None and stripped.startswith("```"):
            current, keep = [], stripped[3:].strip().lower() in CODE_LANGS
        elif current is not None and stripped.startswith("```"):
            if keep:
                blocks.append(current)
            current = None
        elif current is not None:
            current.append(line)
        elif not blocks:
            thought.append(line)
    if current is not None and keep:
        if finish_reason == "length":
            raise ParseError("the code block was cut off at the token limit",
                             hint="your code block was cut off at the length limit; write shorter code")
        blocks.append(current)
    code = textwrap.dedent("\n".join("\n".join(b) for b in blocks)).strip("\n")
    if not code.strip():
        raise ParseError(
            "the reply has no ```python code block",
            hint="reply with one line 'Thought: ...' and then one ```python code block; "
                 "to answer, call final_answer(...) in the code",
            text=text,
        )
    idea = "\n".join(thought).strip()
    if idea.lower().startswith("thought:"):
        idea = idea[len("thought:"):].strip()
    return idea, code


def code_grammar(max_lines: int = MAX_CODE_LINES, max_line_chars: int = MAX_LINE_CHARS, final_only: bool = False) -> str:
    """GBNF for one step: ``Thought: <line>`` then one fenced python block whose lines never contain three backticks.
    ``final_only``: the block is one ``final_answer(...)`` line (the step after a repeated cell that worked)."""
    from hanlin.grammar import GrammarBuilder, gbnf_literal, line_rule

    g = GrammarBuilder()
    g.add("thought", line_rule())
    # The closing fence may take a newline: tokenizers often split "```\n" as "``" + "`\n" (Qwen2.5's does), and a
    # model denied that pair writes `` plus junk instead.
    add_code_block(g, max_line_chars)
    body = f"{gbnf_literal('final_answer(')} cline" if final_only else f"cline{{1,{max_lines}}}"
    g.add("root", f"{gbnf_literal('Thought: ')} thought {gbnf_literal(chr(10) + '```python' + chr(10))} "
                  f"{body} {gbnf_literal('```')} {gbnf_literal(chr(10))}?")
    return g.render("root")


def failed_unread(observation: Message) -> bool:
    """A failed cell with nothing in it to answer from. A failure that showed what its tool calls returned
    (FAILED_AFTER_RETURNS) is read like a success: the task is restated after it, and a repeat of the cell is told to
    answer (and may then only call final_answer), not to change the code."""
    return observation.is_error and FAILED_AFTER_RETURNS not in observation.content


def repeated_success(ctx: RunContext) -> bool:
    """Whether this run's last cell repeated the one before it, unchanged, and ran without error: the code protocol's
    loop guard (as ReAct's after a repeated call). Qwen2.5-Coder-0.5B re-ran a cell whose output it had until the run
    gave up; the next step may then only call final_answer. Read from the transcript, so each step can tell."""
    cells: list[str] = []
    last_failed = True
    for m in reversed(ctx.messages):  # this run's turns, back to the task
        if m.role == "user" and not m.content.startswith(CORRECTION):
            break
        if m.role == "tool" and not cells:
            last_failed = failed_unread(m)
        if m.role == "assistant" and m.tool_calls and len(cells) < 2:
            cells.append(str(m.tool_calls[0].arguments.get("code", "")).strip())
    return not last_failed and len(cells) == 2 and cells[0] == cells[1]


class CodeAgent(StepProtocol):
    name = "code"

    def __init__(self, *, python_options: dict[str, Any] | None = None, max_observation_chars: int = 2000,
                 **options: Any) -> None:
        """``python_options``: configuration of the python tool this protocol makes when the run offers none (e.g.
        ``{"timeout": 10}``); ``max_observation_chars``: how much of a cell's output the model sees."""
        super().__init__(**options)
        self.python_options = python_options or {}
        self.max_observation_chars = max_observation_chars
        self._own: Any = None  # the PythonToolkit made here when a run offers no python tool
        self._own_lock = threading.Lock()

    def check_model(self, model: ChatModel) -> None:
        if importlib.util.find_spec("jupyter_client") is None or importlib.util.find_spec("ipykernel") is None:
            raise ProtocolError("protocol 'code' runs the model's code in a Jupyter kernel: pip install 'hanlin[tools]'")

    # ---- the prompt -------------------------------------------------------------------------
    def functions(self, ctx: RunContext) -> dict[str, Tool]:
        """The tools callable from the cell: every offered tool except the python tool itself."""
        return {name: t for name, t in ctx.tools.items() if name != "python"}

    def system_prompt(self, ctx: RunContext) -> str:
        intro = ctx.options.instructions or "You are an expert assistant who solves tasks by writing Python code."
        answer = "final_answer(answer)"
        if ctx.options.output_type is not None:
            answer += " with a dict matching this JSON schema: " + json.dumps(ctx.output_schema())
        stubs = [signature(t) for t in self.functions(ctx).values()]
        stubs.append('def final_answer(answer: Any) -> None:\n    """End the task with `answer` as the final answer."""')
        parts = [
            f"{intro}\n\nEach turn, write one line of thought, then one Python code block, in this format:\n"
            "Thought: what you will do next and why\n```python\n# your code\n```\n"
            "The code runs in a Jupyter kernel: variables and imports persist between your code blocks. "
            'What it prints (use print()) and the value of its last line come back to you as "Observation: ...", '
            "and so does an error's traceback, so you can fix the code.\n"
            f"When you know the answer, call {answer} in your code.",
            "Besides the Python standard library, your code can call these functions, which are already defined "
            "(call them directly, do not import or install them); a failing call raises ToolCallError:\n```python\n" + "\n\n".join(stubs) + "\n```",
        ]
        if getattr(ctx.options, "examples", True):
            parts.append(EXAMPLE)
        parts.append("Compute with code instead of guessing. Begin!")
        return "\n\n".join(parts)

    def example_answers(self, ctx: RunContext) -> tuple[str, ...]:
        return (EXAMPLE_ANSWER,) if getattr(ctx.options, "examples", True) else ()

    def render(self, ctx: RunContext) -> list[Message]:
        out = [Message.system(self.system_prompt(ctx))]
        question, cells = "", ""
        for m in ctx.messages:
            if m.role == "tool":
                task = " ".join(question.split()) or "(see above)"
                pending = [f"{t}(...)" for t in requested_tools(question, self.functions(ctx))
                           if not re.search(rf"\b{re.escape(t)}\s*\(", cells)]
                if failed_unread(m):
                    nudge = ""
                elif pending:
                    nudge = "\n" + PENDING_NUDGE.format(question=task, pending=" and ".join(pending))
                else:
                    nudge = "\n" + OBSERVATION_NUDGE.format(question=task)
                out.append(Message.user(f"Observation:\n{m.content}{nudge}"))
            elif m.role == "system":
                continue  # the app's instructions are part of our own system prompt
            else:
                if m.role == "user" and not m.content.startswith(CORRECTION):
                    question, cells = m.content, ""  # the task the observations that follow serve
                elif m.role == "assistant":
                    cells += "\n" + m.content  # which functions the code has called so far
                out.append(Message(role=m.role, content=m.content))
        return out

    def stop_sequences(self, ctx: RunContext) -> list[str]:
        return STOP

    def constraint(self, ctx: RunContext) -> Constraint | None:
        if "grammar" not in ctx.model.capabilities.constraints:
            return None
        from hanlin.grammar import STEP_MAX_TOKENS

        final_only = repeated_success(ctx) or ctx.last_step  # see RunContext.last_step
        return Constraint(grammar=code_grammar(final_only=final_only), max_tokens=STEP_MAX_TOKENS)

    def parse(self, completion: Completion, ctx: RunContext) -> ParsedStep:
        thought, code = parse_code_step(completion.text, completion.finish_reason)
        return Action([ToolCall(name="python", arguments={"code": code})], thought=thought)

    def assistant_message(self, completion: Completion, parsed: ParsedStep | None) -> Message:
        if not isinstance(parsed, Action):
            return Message.assistant(completion.text)
        # Normalised, so later prompts show only well-formed steps (a stop sequence may have cut the fence).
        code = parsed.calls[0].arguments["code"]
        return Message.assistant(f"Thought: {parsed.thought}\n```python\n{code}\n```", parsed.calls)

    def correction(self, hint: str) -> Message:
        return Message.user(f"{CORRECTION}{hint}")

    # ---- the kernel ---------------------------------------------------------------------------
    def _python(self, ctx: RunContext) -> tuple[Any, bool]:
        """(the PythonToolkit to run cells in, whether this protocol made it)."""
        offered = ctx.tools.get("python")
        kit = getattr(offered, "toolkit", None)
        if hasattr(kit, "run_code"):
            return kit, False
        with self._own_lock:
            if self._own is None:
                from hanlin import load_tool

                kit = load_tool("python", **self.python_options).toolkit
                if not hasattr(kit, "run_code"):
                    raise ProtocolError("protocol 'code' needs hanlin's python tool (a Jupyter kernel), "
                                        f"but the registered 'python' tool is {kit!r}")
                self._own = kit
            return self._own, True

    async def run_cell(self, ctx: RunContext, kit: Any, call: ToolCall, run: str = "") -> tuple[Message, str | None]:
        """Run one cell with the tools bridged in; (its observation, the final answer if it gave one). ``run``
        names the agent run the cell belongs to (see Bridge)."""
        from hanlin.plugins.tools.python_kernel import cut

        ctx.emit(ToolCallEvent(step=ctx.step, call=call))
        bridge = Bridge(ctx, self.functions(ctx), asyncio.get_running_loop(), run=run)
        started = asyncio.get_running_loop().time()
        result = await asyncio.to_thread(kit.run_code, call.arguments["code"], on_input=bridge.handle,
                                         setup=bridge.setup_code())
        content = cut(result.content, self.max_observation_chars)
        silent = content.startswith("(no output") and not result.is_error  # "(no output; total = 42)" too
        if content == "(no output)" and bridge.final is None:
            content = NO_OUTPUT_NOTE
        if (silent or result.is_error) and bridge.final is None:
            returns = bridge.unseen_returns(result.content, self.max_observation_chars)
            if returns and silent:
                content = f"{content}\n{returns}"
            elif returns:
                content = f"{returns}{FAILED_AFTER_RETURNS}{content}\n{RETURNS_NOTE}"
        if result.is_error and bridge.final is None:
            ctx.emit(ErrorEvent(step=ctx.step, kind="tool_failed", message=content))
        ctx.emit(ToolResultEvent(step=ctx.step, call_id=call.id, name=call.name, content=content,
                                 is_error=result.is_error, duration_s=asyncio.get_running_loop().time() - started))
        return Message.tool(content, tool_call_id=call.id, name=call.name, is_error=result.is_error), bridge.final

    # ---- the loop -----------------------------------------------------------------------------
    async def run(self, ctx: RunContext) -> None:
        kit, own = await asyncio.to_thread(self._python, ctx)
        try:
            await self._loop(ctx, kit, uuid.uuid4().hex)
        finally:
            from hanlin import current_session

            session = current_session()
            # The agent ends the sessions of the tools it was given; this kernel is the protocol's own, so a run
            # without a session_id (the agent names its key "run-...") ends its kernel here.
            if own and (session is None or session.startswith("run-")):
                await asyncio.to_thread(kit.end_session, session or "default")

    async def _loop(self, ctx: RunContext, kit: Any, run: str) -> None:
        previous: tuple[str, bool] | None = None  # the last cell's code and whether it failed
        while ctx.steps_left:
            parsed = await self.next_step(ctx)
            if parsed is None:
                if ctx.gave_up_reason is not None:
                    return
                continue
            assert isinstance(parsed, Action)
            observation, final = await self.run_cell(ctx, kit, parsed.calls[0], run)
            code = parsed.calls[0].arguments["code"]
            if final is None and previous is not None and previous[0].strip() == code.strip():
                # Qwen2.5-Coder-0.5B re-sent a failing cell unchanged until the run gave up (3 of 14 look-up items).
                note = REPEATED_FAILURE_NOTE if failed_unread(observation) and previous[1] else REPEATED_CELL_NOTE
                observation = observation.model_copy(update={"content": f"{observation.content}\n{note}"})
            previous = (code, observation.is_error)
            ctx.messages.append(observation if final is not None else ctx.noted_if_last_results(observation))
            if final is None:
                ctx.record_success()  # a failing cell is an observation, not a format mistake
                continue
            if self.finish(ctx, final):
                return
        ctx.give_up("max_steps", f"reached max_steps={ctx.options.max_steps} without a final answer")


@hookimpl
def register_protocols(register: Any) -> None:
    register(CodeAgent)
