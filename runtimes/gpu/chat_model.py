"""The gpu engine behind the ChatModel protocol: one driver thread runs the engine; callers stream their own
request's tokens.

Every call becomes an engine request, so concurrent callers (server requests, ReWOO's parallel steps, batch
evaluation) share each model step: that is the continuous batching. Stop strings are found on the text side and
abort the request, which frees its blocks at the next step; its full blocks stay in the prefix cache for the next
step of the same agent run. ``score`` (likelihood evaluation) is a job for the same thread, run between steps.
"""

from __future__ import annotations

import importlib.util
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hanlin import (
    Capabilities,
    ChatModel,
    Chunk,
    ConfigurationError,
    Constraint,
    ContextOverflowError,
    GenerationParams,
    Message,
    ModelError,
    ModelSpec,
    Usage,
)
from hanlin.chat_model import ScoreRequest, check_score_requests
from hanlin.runtimes.hf_prompt import HFPrompt
from hanlin.runtimes.tool_calls import ToolPlan, plan_tools
from hanlin.runtimes.scoring import pair_ids
from hanlin.runtimes.reply_stream import ReplyStream
from hanlin.runtimes.sampling import DEFAULT_MIN_P, DEFAULT_TOP_K, DEFAULT_TOP_P
from hanlin.runtimes.token_healing import healing_grammar, split_tail

DEFAULT_MAX_TOKENS = 512
_DONE = object()


@dataclass(slots=True)
class _Request:
    prompt: list[int]
    params: Any
    out: queue.Queue = field(default_factory=queue.Queue)  # tokens, then (_DONE, finish_reason, cached_tokens)
    seq_id: int | None = None
    aborted: bool = False


@dataclass(slots=True)
class _ScoreJob:
    requests: list[tuple[list[int], int]]  # (tokens, where the scored tail starts)
    out: queue.Queue = field(default_factory=queue.Queue)  # the log-probabilities, or the exception


class GpuChatModel(ChatModel):
    def __init__(self, spec: ModelSpec, path: Path, *, cache_dir: str | Path | None = None, **engine_options: Any) -> None:
        from hanlin.runtimes.gpu.engine import Engine
        from hanlin.runtimes.gguf_convert import convert_gguf

        path = Path(path)
        folder = convert_gguf(path, Path(cache_dir) if cache_dir else None) if path.suffix == ".gguf" else path
        self.spec, self.name, self.folder = spec, spec.name, folder
        self.prompt = HFPrompt(spec, folder)
        try:
            self.engine = Engine(folder, **engine_options)
        except (ValueError, KeyError, FileNotFoundError) as exc:
            raise ModelError(f"the gpu runtime cannot load {str(folder)!r}: {exc}") from None
        self.context_length = self.engine.max_model_len
        constraints = frozenset({"json_schema", "grammar"}) if importlib.util.find_spec("xgrammar") else frozenset()
        self._compiler: Any = None
        self._compiled: dict[str, Any] = {}  # grammar text -> compiled (agent steps repeat the same grammar)
        self.capabilities = Capabilities(
            constraints=constraints, native_tools=self.prompt.native_tools, chat_template=self.prompt.use_template,
            context_length=self.context_length, logprobs=True,
        )
        self._inbox: queue.Queue[_Request | _ScoreJob] = queue.Queue()
        self._wake = threading.Event()
        self._closed = False
        self._failure: BaseException | None = None  # what killed the driver thread, if anything did
        self._driver = threading.Thread(target=self._drive, name=f"hanlin-gpu-{spec.name}", daemon=True)
        self._driver.start()

    # ---- the driver thread ------------------------------------------------------------------
    def _drive(self) -> None:
        try:
            self._drive_loop()
        except BaseException as exc:  # callers waiting on their queues see it (_wait), instead of waiting forever
            self._failure = exc
            raise

    def _wait(self, out: queue.Queue, what: str) -> Any:
        """The next item of a request's queue; a clear error if the driver thread is gone (closed, or died)."""
        while True:
            try:
                return out.get(timeout=0.5)
            except queue.Empty:
                if self._driver.is_alive():
                    continue
                if self._failure is not None:
                    raise ModelError(f"the gpu engine of model '{self.name}' stopped while {what}: "
                                     f"{type(self._failure).__name__}: {self._failure}") from None
                raise ModelError(f"model '{self.name}' was closed while {what}; load it again") from None

    def _drive_loop(self) -> None:
        live: dict[int, _Request] = {}
        while not self._closed:
            while True:
                try:
                    req = self._inbox.get_nowait()
                except queue.Empty:
                    break
                if isinstance(req, _ScoreJob):  # runs now, between steps: the engine is this thread's alone
                    try:
                        req.out.put(self.engine.score(req.requests))
                    except Exception as exc:
                        req.out.put(exc)
                    continue
                try:
                    req.seq_id = self.engine.add(req.prompt, req.params)
                    live[req.seq_id] = req
                except Exception as exc:  # a bad request fails alone
                    req.out.put((_DONE, f"error: {exc}", 0))
            for seq_id, req in list(live.items()):
                if req.aborted:
                    self.engine.abort(seq_id)
                    live.pop(seq_id)
                    req.out.put((_DONE, "stop", 0))
            if not self.engine.has_work():
                self._wake.wait(0.05)
                self._wake.clear()
                continue
            try:
                outputs = self.engine.step()
            except Exception as exc:  # a failed step fails every request in it, the thread lives on
                for seq_id, req in live.items():
                    self.engine.abort(seq_id)
                    req.out.put((_DONE, f"error: {type(exc).__name__}: {exc}", 0))
                live.clear()
                continue
            for o in outputs:
                req = live.get(o.seq_id)
                if req is None:
                    continue
                if o.token is not None:
                    req.out.put(o.token)
                if o.finished:
                    seq_cached = self.engine.last_cached.pop(o.seq_id, 0)
                    req.out.put((_DONE, o.finish_reason, seq_cached))
                    live.pop(o.seq_id)

    def _submit(self, prompt: list[int], params: GenerationParams) -> _Request:
        from hanlin.runtimes.gpu.sequence import SamplingParams

        if self._closed:
            raise ModelError(f"model '{self.name}' was closed; load it again with hanlin.load_model")
        if len(prompt) >= self.context_length:
            raise ContextOverflowError(
                f"the prompt is {len(prompt)} tokens but model '{self.name}' has a context of {self.context_length}; "
                "shorten the conversation or lower max_steps"
            )
        temperature = 0.0 if params.temperature is None else params.temperature
        sampling = SamplingParams(
            max_tokens=min(params.max_tokens or DEFAULT_MAX_TOKENS, self.context_length - len(prompt)),
            temperature=temperature, top_k=DEFAULT_TOP_K if params.top_k is None else params.top_k,
            top_p=DEFAULT_TOP_P if params.top_p is None else params.top_p,
            min_p=DEFAULT_MIN_P if temperature > 0 else 0.0, seed=params.seed,
            frequency_penalty=params.frequency_penalty or 0.0, presence_penalty=params.presence_penalty or 0.0,
            stop_token_ids=tuple(self.prompt.eos_ids),
        )
        if params.constraint is not None:
            sampling.grammar = self._compile(params.constraint)
        req = _Request(prompt, sampling)
        self._inbox.put(req)
        self._wake.set()
        return req

    def _compile(self, constraint: Any) -> Any:
        """GBNF (ours, or built from the JSON schema exactly as the cpu runtime does) compiled by xgrammar."""
        from hanlin.grammar import json_schema_grammar

        text = constraint.grammar or json_schema_grammar(constraint.json_schema or {})
        if text not in self._compiled:
            import xgrammar

            if self._compiler is None:
                info = xgrammar.TokenizerInfo.from_huggingface(self.prompt.tokenizer,
                                                               vocab_size=self.engine.config.vocab_size)
                self._compiler = xgrammar.GrammarCompiler(info)
            try:
                compiled = self._compiler.compile_grammar(text)
            except Exception as exc:
                raise ConfigurationError(f"the grammar does not compile: {exc}") from None
            if len(self._compiled) > 64:
                self._compiled.clear()
            self._compiled[text] = compiled
        return self._compiled[text]

    # ---- ChatModel --------------------------------------------------------------------------
    def _stream(self, messages: list[Message], params: GenerationParams) -> Iterator[Chunk]:
        # Calls are read from the reply; tool_choice required/named is forced by the call grammar from the first token
        # (the lazy grammar of tool_choice auto needs a matcher switched on mid-request: not in the engine yet).
        plan = plan_tools(params, self.prompt.format, self.capabilities, messages)
        prompt = self.prompt.prompt_ids(messages, plan.render_tools)
        if plan.grammar is not None:
            params = params.model_copy(update={"constraint": Constraint(grammar=plan.grammar)})
        return self._collect(self._submit(prompt, params), params, plan)

    def _stream_prompt(self, prompt: str, params: GenerationParams) -> Iterator[Chunk]:
        ids = self.prompt.tokenize(prompt, templated=False)
        kept, tail = split_tail(ids, self.prompt.token_text, params)
        if not tail or "grammar" not in self.capabilities.constraints:  # healing holds the tail with xgrammar
            return self._collect(self._submit(ids, params), params, ToolPlan())
        budget = (params.max_tokens or DEFAULT_MAX_TOKENS) + len(ids) - len(kept)  # the tail is written again
        held = params.model_copy(update={"constraint": Constraint(grammar=healing_grammar(tail)), "max_tokens": budget})
        return self._collect(self._submit(kept, held), params, ToolPlan(), heal=tail)

    def _collect(self, req: _Request, params: GenerationParams, plan: ToolPlan, heal: str = "") -> Iterator[Chunk]:
        reply = ReplyStream(self.prompt.tokenizer, params.stop, plan, heal=heal)
        finish, cached, done = "length", 0, False
        try:
            while True:
                item = self._wait(req.out, "generating")
                if isinstance(item, tuple) and item[0] is _DONE:
                    _, finish, cached = item
                    done = True
                    break
                if item in self.prompt.eos_ids:
                    continue
                yield from reply.add(item)
                if reply.stopped:
                    finish = "stop"
                    break
        finally:
            if not done:  # a stop string, or the consumer stopped reading: free the request's blocks
                req.aborted = True
                self._wake.set()
        if isinstance(finish, str) and finish.startswith("error"):
            raise ModelError(f"the gpu engine failed on this request: {finish}")
        usage = Usage(prompt_tokens=len(req.prompt), completion_tokens=reply.num_tokens,
                      prompt_tokens_evaluated=len(req.prompt) - cached, prompt_tokens_reused=cached)
        yield from reply.close("stop" if finish == "abort" else finish, usage)

    def generate_batch(self, prompts: list[list[Message] | str], params: GenerationParams | None = None) -> list[str]:
        """Offline batch: every prompt queued at once so the engine batches them; texts in order."""
        params = params or GenerationParams()
        streams = []
        for p in prompts:
            if isinstance(p, str):
                req = self._submit(self.prompt.tokenize(p, templated=False), params)
            else:
                req = self._submit(self.prompt.prompt_ids(p), params)
            streams.append(self._collect(req, params, ToolPlan()))
        return ["".join(c.text for c in s if c.text) for s in streams]

    def score(self, requests: Sequence[ScoreRequest]) -> list[list[float]]:
        """Log-probabilities of each continuation's tokens after its context (plain text): the prompts are prefilled
        together through the engine's model, between generation steps (see ``Engine.score``)."""
        check_score_requests(requests)
        tok = self.prompt.tokenize
        pairs = [pair_ids(c, x, lambda t: tok(t, templated=False), lambda t: tok(t, templated=True))
                 for c, x in requests]
        for i, p in enumerate(pairs):
            if len(p.ids) > self.context_length:
                raise ContextOverflowError(f"score request {i} is {len(p.ids)} tokens but model '{self.name}' has a "
                                           f"context of {self.context_length}; shorten the prompt")
        if self._closed:
            raise ModelError(f"model '{self.name}' was closed; load it again with hanlin.load_model")
        job = _ScoreJob([(p.ids, p.start) for p in pairs])
        self._inbox.put(job)
        self._wake.set()
        result = self._wait(job.out, "scoring")
        if isinstance(result, Exception):
            raise ModelError(f"the gpu engine failed while scoring: {type(result).__name__}: {result}")
        return result

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self._driver.join(timeout=5)
