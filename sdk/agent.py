"""Agent: a model, tools and a protocol, run as a loop that always ends in a clear state.

Every run ends ``answered``, ``gave_up`` (step or retry budget spent) or
``error`` (the model itself failed), with the full transcript and events kept.
The async path is the real one; the sync methods drive it on a private event
loop so scripts and notebooks get the same behaviour.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from hanlin.chat_model import ChatModel, GenerationParams
from hanlin.errors import ConfigurationError, HanlinError
from hanlin.events import ErrorEvent, Event, RunFinished, RunStatus, TokenDelta, parse_event
from hanlin.messages import Message, Usage, to_messages
from hanlin.protocols.base import AgentProtocol
from hanlin.protocols.context import RunContext, RunOptions
from hanlin.sync_bridge import iterate_sync, run_sync
from hanlin.tools import Tool, as_tools, tool_session, tool_task


class RunResult(BaseModel):
    """The outcome of one agent run, and the trace it can be saved as."""

    model_config = {"arbitrary_types_allowed": True}

    status: RunStatus
    output: Any = None
    output_text: str = ""
    messages: list[Message] = Field(default_factory=list)
    events: list[Event] = Field(default_factory=list)
    # The model's last call as it saw it (protocol-rendered messages + offered tool specs) and its reply; the
    # conversation a finetuner trains on, since ``messages`` is the protocol-neutral transcript.
    model_view: dict[str, Any] | None = None
    usage: Usage = Field(default_factory=Usage)
    steps: int = 0
    error: str | None = None
    # Self-consistency (``Agent(samples=N)``): how many runs were made, the share of them whose final answer
    # matched this one's (votes for the winner / N), and each run's final answer text (None: it did not answer).
    # A single run has samples 1, agreement None and no sample_answers.
    samples: int = 1
    agreement: float | None = None
    sample_answers: list[str | None] | None = None

    @property
    def tool_calls(self) -> list[Any]:
        return [c for m in self.messages if m.role == "assistant" for c in m.tool_calls]

    def to_record(self, *, token_deltas: bool = False) -> dict[str, Any]:
        """One JSON line of a trace file: ``messages`` is the same schema finetuners train on.

        Token deltas are left out unless asked for: they repeat the messages' text one token at a time, so a trace
        with them grows with every generated token rather than with the run's steps."""
        output = self.output.model_dump(mode="json") if isinstance(self.output, BaseModel) else self.output
        return {
            "messages": [m.model_dump(mode="json", exclude_defaults=True) for m in self.messages],
            "status": self.status,
            "output": output,
            "error": self.error,
            "steps": self.steps,
            "usage": self.usage.model_dump(mode="json"),
            "model_view": self.model_view,
            "samples": self.samples,
            "agreement": self.agreement,
            "sample_answers": self.sample_answers,
            "events": [e.model_dump(mode="json") for e in self.events if token_deltas or not isinstance(e, TokenDelta)],
        }

    def save_trace(self, path: str | Path, *, append: bool = True, token_deltas: bool = False) -> Path:
        """Write this run as one JSONL line (appending builds a dataset of runs); see ``to_record`` for deltas."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a" if append else "w", encoding="utf-8") as fh:
            fh.write(json.dumps(self.to_record(token_deltas=token_deltas), ensure_ascii=False, default=str) + "\n")
        return path


def load_traces(path: str | Path) -> list[RunResult]:
    """Read a trace file written by ``save_trace``; a bad line is an error naming its number."""
    results = []
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            results.append(
                RunResult(
                    status=record["status"],
                    output=record.get("output"),
                    messages=to_messages(record["messages"]),
                    events=[parse_event(e) for e in record.get("events", [])],
                    usage=Usage(**record.get("usage", {})),
                    steps=record.get("steps", 0),
                    error=record.get("error"),
                    model_view=record.get("model_view"),
                    samples=record.get("samples", 1),
                    agreement=record.get("agreement"),
                    sample_answers=record.get("sample_answers"),
                )
            )
        except Exception as exc:
            raise ConfigurationError(f"{path}:{lineno}: not a hanlin trace record ({exc})") from None
    return results


SAMPLE_TEMPERATURE = 0.7  # self-consistency's temperature when the agent's params are greedy


class Agent:
    """A model that uses tools through a protocol.

    ``model`` is a ChatModel or a model name for ``load_model`` (a model the agent loaded itself is closed by
    ``close()``; one passed in belongs to the caller). ``tools`` are Tools, Toolkits, typed functions or registered
    tool names ("calculator"). ``protocol`` is "react", "rewoo", "tools" (native calling) or an ``AgentProtocol``.
    ``session_id`` on a run keeps a conversation's memory across runs.

    ``examples``: the protocol's prompt shows a short worked example with a made-up tool.

    ``samples`` > 1 is self-consistency: each run is made ``samples`` times, one after another, sampled (the params'
    temperature, or 0.7 when they are greedy; seeds ``seed``, ``seed + 1``, ... from the params' seed or 0), and
    the answered runs vote on their normalised final answers (see ``answer_key``; ties go to the answer that came
    first). The result is the first run with the winning answer, with ``agreement`` (its votes / samples) and the
    usage of all runs; no run answered: the first run, agreement 0. Each sample runs in its own tool session, so
    samples do not see each other's Python state; a ``session_id`` keeps the winning run's transcript. Events: the
    samples run silently, then the winning run's events are replayed, ending with a ``RunFinished`` that carries
    the summed usage, so a stream shows one coherent run.
    """

    def __init__(
        self,
        model: ChatModel | str,
        tools: Iterable[Any] | Tool | None = None,
        protocol: str | AgentProtocol = "react",
        *,
        instructions: str | None = None,
        max_steps: int = 10,
        max_retries: int = 2,
        output_type: type[BaseModel] | None = None,
        constrained: bool | None = None,
        params: GenerationParams | dict[str, Any] | None = None,
        examples: bool = True,
        samples: int = 1,
    ) -> None:
        from hanlin.loading import load_model, load_protocol

        if max_steps < 1:
            raise ConfigurationError(f"max_steps must be at least 1, got {max_steps}")
        if max_retries < 0:
            raise ConfigurationError(f"max_retries must be 0 or more, got {max_retries}")
        if samples < 1:
            raise ConfigurationError(f"samples must be at least 1, got {samples}")
        self.samples = samples
        self._owns_model = isinstance(model, str)
        self.model = load_model(model) if isinstance(model, str) else model
        try:
            self.tools = as_tools(tools)
            self.protocol = load_protocol(protocol) if isinstance(protocol, str) else protocol
            if not isinstance(self.protocol, AgentProtocol):
                raise ConfigurationError(f"protocol must be a name or an AgentProtocol, got {self.protocol!r}")
            self.protocol.check_model(self.model)
        except BaseException:
            if self._owns_model:  # nobody else can release the model this constructor loaded
                self.model.close()
            raise
        self.options = RunOptions(
            max_steps=max_steps,
            max_retries=max_retries,
            constrained=constrained,
            instructions=instructions,
            output_type=output_type,
            examples=examples,
        )
        if params is None:
            params = GenerationParams()
        elif isinstance(params, dict):
            params = GenerationParams(**params)
        self.params = params
        self._sessions: dict[str, list[Message]] = {}
        self._session_lock = threading.Lock()
        self._turn_locks: dict[str, threading.Lock] = {}

    # ---- sessions --------------------------------------------------------------------
    def history(self, session_id: str) -> list[Message]:
        with self._session_lock:
            return list(self._sessions.get(session_id, []))

    def reset(self, session_id: str | None = None) -> None:
        """Forget a session's history and what its tools hold for it (e.g. its Python kernel); None: all sessions."""
        with self._session_lock:
            if session_id is None:
                self._sessions.clear()
            else:
                self._sessions.pop(session_id, None)
        self._end_tool_sessions(session_id)

    def _toolkits(self) -> list[Any]:
        return list({id(t.toolkit): t.toolkit for t in self.tools if t.toolkit is not None}.values())

    def _end_tool_sessions(self, session_id: str | None) -> None:
        for kit in self._toolkits():
            kit.end_session(session_id)

    # ---- running -----------------------------------------------------------------------
    async def astream(
        self, task: str | Message, *, session_id: str | None = None, history: list[Message] | None = None
    ) -> AsyncIterator[Event]:
        """Run the agent, yielding events as they happen; the last one is ``RunFinished``.

        ``history`` gives earlier turns explicitly (e.g. from an API request) instead of a stored session.
        """
        async for event in self._astream(task, session_id, None, history):
            yield event

    async def _astream(
        self, task: str | Message, session_id: str | None, sink: list[RunResult] | None,
        history: list[Message] | None = None,
    ) -> AsyncIterator[Event]:
        if session_id is None:
            async for event in self._astream_turn(task, session_id, sink, history):
                yield event
            return
        async with self._session_turn(session_id):
            async for event in self._astream_turn(task, session_id, sink, history):
                yield event

    @contextlib.asynccontextmanager
    async def _session_turn(self, session_id: str) -> AsyncIterator[None]:
        """One run at a time per session: a second run reads the history only after the first has stored its turn
        (otherwise both start from the same history and the later store drops the other's turn). Runs may come from
        different threads and event loops (``run`` drives its own), so the lock is a thread lock, polled so that the
        waiting loop stays responsive and a cancelled waiter leaves nothing held."""
        with self._session_lock:
            lock = self._turn_locks.setdefault(session_id, threading.Lock())
        delay = 0.001
        while not lock.acquire(blocking=False):
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
        try:
            yield
        finally:
            lock.release()

    async def _astream_turn(
        self, task: str | Message, session_id: str | None, sink: list[RunResult] | None,
        history: list[Message] | None = None,
    ) -> AsyncIterator[Event]:
        if self.samples == 1:
            async for event in self._astream_one(task, session_id, sink, history):
                yield event
            return
        if history is None:
            history = self.history(session_id) if session_id else []
        temperature = self.params.temperature or SAMPLE_TEMPERATURE
        seed = self.params.seed or 0
        runs: list[RunResult] = []
        for i in range(self.samples):  # one after another: a local model serves one call at a time anyway
            params = self.params.model_copy(update={"temperature": temperature, "seed": seed + i})
            async for _ in self._astream_one(task, None, runs, history, params):
                pass
        winner, votes = vote(runs)
        usage = runs[0].usage
        for run in runs[1:]:
            usage = usage + run.usage
        chosen = runs[winner]
        finished = RunFinished(step=chosen.steps, status=chosen.status, usage=usage)
        answers = [r.output_text if r.status == "answered" else None for r in runs]
        result = chosen.model_copy(update={"usage": usage, "samples": self.samples, "agreement": votes / self.samples,
                                           "sample_answers": answers, "events": [*chosen.events[:-1], finished]})
        if session_id:
            with self._session_lock:
                self._sessions[session_id] = list(result.messages)
        for event in result.events[:-1]:
            yield event
        if sink is not None:
            sink.append(result)
        yield finished

    async def _astream_one(
        self, task: str | Message, session_id: str | None, sink: list[RunResult] | None,
        history: list[Message] | None = None, params: GenerationParams | None = None,
    ) -> AsyncIterator[Event]:
        if history is None:
            history = self.history(session_id) if session_id else []
        message = task if isinstance(task, Message) else Message.user(task)
        events: asyncio.Queue[Event | None] = asyncio.Queue()
        seen: list[Event] = []
        ctx = RunContext(
            model=self.model,
            tools={t.name: t for t in self.tools},
            messages=[*history, message],
            params=params or self.params,
            options=self.options,
            emit=events.put_nowait,
        )
        error: str | None = None

        async def drive() -> None:
            nonlocal error
            try:
                await self.protocol.run(ctx)
            except HanlinError as exc:
                error = f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # a runtime bug must still end the run cleanly
                error = f"unexpected {type(exc).__name__} from the model or protocol: {exc}"
            if error is not None:
                ctx.emit(ErrorEvent(step=ctx.step, kind="model", message=error, recoverable=False))
            await events.put(None)

        # Tool calls of this run belong to its session; a run without one gets its own, ended with the run. They
        # also see the run's request (hanlin.tools.current_task).
        tool_key = session_id or f"run-{uuid.uuid4().hex[:12]}"
        with tool_session(tool_key), tool_task(message.content or None):
            task_handle = asyncio.ensure_future(drive())  # the task copies the context, session included
        try:
            while (event := await events.get()) is not None:
                seen.append(event)
                yield event
            await task_handle
            status: RunStatus = "error" if error else ("answered" if ctx.answered else "gave_up")
            finished = RunFinished(step=ctx.step, status=status, usage=ctx.usage)
            seen.append(finished)
            if session_id:
                with self._session_lock:
                    self._sessions[session_id] = list(ctx.messages)
            if sink is not None:
                sink.append(
                    RunResult(
                        status=status,
                        output=ctx.output,
                        output_text=ctx.output_text,
                        messages=list(ctx.messages),
                        events=seen,
                        usage=ctx.usage,
                        steps=ctx.step,
                        error=error or ctx.gave_up_reason,
                        model_view=ctx.model_view,
                    )
                )
            yield finished
        finally:
            if not task_handle.done():
                task_handle.cancel()
                await asyncio.gather(task_handle, return_exceptions=True)
            if session_id is None:
                await asyncio.to_thread(self._end_tool_sessions, tool_key)

    async def arun(
        self, task: str | Message, *, session_id: str | None = None, on_event: Callable[[Event], None] | None = None,
        history: list[Message] | None = None,
    ) -> RunResult:
        """Run to the end; ``on_event`` sees every event as it happens (for progress display)."""
        sink: list[RunResult] = []
        async for event in self._astream(task, session_id, sink, history):
            if on_event is not None:
                on_event(event)
        return sink[0]

    def run(
        self, task: str | Message, *, session_id: str | None = None, on_event: Callable[[Event], None] | None = None
    ) -> RunResult:
        """Run to the end and return the result (works inside a running event loop too)."""
        return run_sync(self.arun(task, session_id=session_id, on_event=on_event), thread_name="hanlin-agent-run")

    def stream(self, task: str | Message, *, session_id: str | None = None) -> Iterator[Event]:
        """Sync event stream: the run happens on a background event loop while you iterate."""
        return iterate_sync(self.astream(task, session_id=session_id), thread_name="hanlin-agent-stream")

    def close(self) -> None:
        """Release what the tools hold (kernels, sessions): each toolkit once; and the model, if this agent loaded
        it from a name (a ChatModel passed in stays open: it belongs to the caller)."""
        for kit in self._toolkits():
            kit.close()
        if self._owns_model:
            self.model.close()

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Agent model={self.model.name!r} protocol={self.protocol.name!r} tools={[t.name for t in self.tools]}>"


# ---- self-consistency ---------------------------------------------------------------------------------------
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\w])")


def normalise_answer(text: str) -> str:
    """The form final answers are compared in when runs vote. Exactly one number in the text ("The total is 1,200.",
    "1200.0"): that number's value, since small models wrap numbers in prose. Anything else: lower case, punctuation
    dropped, spaces collapsed."""
    numbers = _NUMBER.findall(text)
    if len(numbers) == 1:
        value = float(numbers[0].replace(",", "")) + 0.0  # + 0.0: -0 and 0 are one answer
        if math.isfinite(value):
            return f"number:{float(f'{value:.12g}')!r}"
    return "text:" + " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def answer_key(result: RunResult) -> str:
    """What a run votes for: a structured output's JSON, else its normalised answer text."""
    if isinstance(result.output, BaseModel):
        return "json:" + result.output.model_dump_json()
    return normalise_answer(result.output_text or str(result.output or ""))


def vote(results: list[RunResult]) -> tuple[int, int]:
    """Majority vote over the answered runs: (index of the first run with the winning answer, its votes). Ties go to
    the answer that came first; no answered run: (0, 0)."""
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    for i, result in enumerate(results):
        if result.status != "answered":
            continue
        key = answer_key(result)
        counts[key] = counts.get(key, 0) + 1
        first.setdefault(key, i)
    if not counts:
        return 0, 0
    best = max(counts, key=lambda k: (counts[k], -first[k]))
    return first[best], counts[best]
