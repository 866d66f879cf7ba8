"""A ChatModel on llama.cpp that re-evaluates only what changed since its last call.

An agent re-sends its whole growing transcript every step. This model keeps
the token list that is in llama.cpp's KV cache, finds the longest common
prefix with the new prompt, trims the cache to it, and evaluates only the
rest; `Usage` reports both counts. One context serves one call at a time
(a lock), and decoding is our own loop so stop sequences, grammars and tool
calls are handled the same way whether the caller streams or not.
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hanlin import (
    Capabilities,
    ChatModel,
    Chunk,
    ConfigurationError,
    ContextOverflowError,
    GenerationParams,
    Message,
    ModelError,
    ModelSpec,
    ToolCall,
    Usage,
)
from hanlin.chat_model import ScoreRequest, check_score_requests
from hanlin.grammar import json_schema_grammar

from hanlin.runtimes.chat_format import render_chat, render_plain
from hanlin.runtimes.cpu.gguf_header import context_length
from hanlin.runtimes.cpu.sampling import GrammarFirstSampler, decode
from hanlin.runtimes.prompt_guard import guarded_segments, tokenize_segments
from hanlin.runtimes.scoring import pair_ids
from hanlin.runtimes.text_stream import StopScanner
from hanlin.runtimes.token_healing import healing_grammar, split_tail
from hanlin.runtimes import call_count
from hanlin.runtimes.tool_calls import (
    ToolPlan, detect_format, parse_tool_calls, plan_tools, repeats_a_call, trigger_start,
)

DEFAULT_MAX_TOKENS = 512
DEFAULT_N_CTX = 4096


def check_gguf(path: Path) -> int | None:
    """Fail early, and clearly, on a file llama.cpp would reject with a bare ValueError.

    Returns the model's trained context length (None when the header does not say).
    """
    if not path.is_file():
        raise ModelError(f"GGUF file {str(path)!r} does not exist")
    size = path.stat().st_size
    if size < 1024:
        raise ModelError(f"{str(path)!r} is only {size} bytes: the GGUF file is truncated; reinstall or re-copy it")
    return context_length(path)  # raises ModelError for a non-GGUF file or a header cut short


class LlamaChatModel(ChatModel):
    def __init__(
        self,
        spec: ModelSpec,
        path: Path,
        *,
        n_ctx: int | None = None,
        n_threads: int | None = None,
        n_batch: int = 512,
        seed: int | None = None,
        prefix_reuse: bool = True,
        repeat_penalty: float = 1.0,
        verbose: bool = False,
    ) -> None:
        import llama_cpp

        for key, value in (("n_ctx", n_ctx), ("n_threads", n_threads), ("n_batch", n_batch)):
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ConfigurationError(f"{key} must be a positive integer, got {value!r}")
        trained = check_gguf(path)
        if n_ctx is None:  # a context longer than the model was trained on only produces garbage past that point
            n_ctx = min(DEFAULT_N_CTX, trained or DEFAULT_N_CTX)
        self.spec = spec
        self.name = spec.name
        self.path = path
        self.prefix_reuse = prefix_reuse
        self.repeat_penalty = repeat_penalty
        self.seed = seed  # the default of calls that give no seed: a fixed load seed makes every call repeatable
        self._lock = threading.Lock()
        self._scorer: Any = None  # a second llama.cpp context for score(), made on first use
        self._n_threads = n_threads or os.cpu_count() or 2
        try:
            self._llm = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_threads=self._n_threads,
                n_batch=n_batch,
                seed=seed if seed is not None else llama_cpp.LLAMA_DEFAULT_SEED,
                # the frequency/presence penalties count the whole reply, as the torch runtimes and OpenAI do
                # (llama-cpp-python's default counts only the last 64 tokens written)
                last_n_tokens_size=n_ctx,
                verbose=verbose,
            )
        except ValueError as exc:
            raise ModelError(
                f"llama.cpp could not load {str(path)!r} ({exc}): the file is corrupt, truncated, or an architecture "
                "this llama.cpp build does not support"
            ) from None
        self._vocab = self._llm._model.vocab
        meta = self._llm.metadata
        self._template = meta.get("tokenizer.chat_template") if spec.chat_template else None
        self._bos = self._token_text(self._llm.token_bos())
        self._eos = self._token_text(self._llm.token_eos())
        self._add_bos = meta.get("tokenizer.ggml.add_bos_token", "false") == "true"
        self._format = detect_format(self._template, spec.tool_call_style)
        self._valid_grammars: set[str] = set()
        self._comma_mask: np.ndarray | None = None  # tokens that open another array item (call_count)
        self.capabilities = Capabilities(
            constraints=frozenset({"json_schema", "grammar"}),
            native_tools=self._template is not None,  # templates without tools get them as instructions
            chat_template=self._template is not None,
            context_length=self._context_size(),
            logprobs=True,
        )

    def _context_size(self) -> int:
        """The tokens a reply's whole context may hold: llama.cpp rounds its context up (to a multiple of 256), but
        llama-cpp-python keeps the tokens in an array of the size asked for, and eval past it raises ValueError."""
        return min(self._llm.n_ctx(), len(self._llm.input_ids))

    # ---- prompt ------------------------------------------------------------------------------
    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self._llm.detokenize([token], special=True).decode("utf-8", errors="replace")

    def render(self, messages: list[Message], tools: list[dict[str, Any]] | None = None) -> str:
        if self._template is None:
            return render_plain(messages)
        return render_chat(
            self._template, messages, bos_token=self._bos, eos_token=self._eos, tools=tools or None,
            call_format=self._format,
        )

    def tokenize(self, text: str) -> list[int]:
        if self._llm is None:
            raise ModelError(f"model '{self.name}' was closed; load it again with hanlin.load_model")
        return self._tokenize_segment(text, special=True, first=True)

    def prompt_tokens(self, messages: list[Message], tools: list[dict[str, Any]] | None = None) -> list[int]:
        """The rendered prompt's tokens, message content as plain text (see ``prompt_guard``)."""
        if self._llm is None:
            raise ModelError(f"model '{self.name}' was closed; load it again with hanlin.load_model")
        segments = guarded_segments(messages, lambda m: self.render(m, tools), self._holds_special)
        return tokenize_segments(segments, self._tokenize_segment)

    def _holds_special(self, text: str) -> bool:
        data = text.encode("utf-8")
        return self._llm.tokenize(data, add_bos=False, special=True) != self._llm.tokenize(data, add_bos=False, special=False)

    def _tokenize_segment(self, text: str, special: bool, first: bool) -> list[int]:
        add_bos = first and self._add_bos and not (self._bos and text.startswith(self._bos))
        return self._llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)

    def _tokenize_piece(self, text: str) -> list[int]:
        """Text that follows other text: never a BOS."""
        return self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    # ---- constraints -------------------------------------------------------------------------
    def _grammar(self, params: GenerationParams, plan: ToolPlan) -> str | None:
        """The GBNF text to decode under from the first token (a constraint, or a forced tool call)."""
        if plan.grammar is not None:
            return self._check_grammar(plan.grammar)
        if params.constraint is None:
            return None
        return self._check_grammar(params.constraint.grammar or json_schema_grammar(params.constraint.json_schema or {}))

    def _check_grammar(self, text: str) -> str:
        """``text``, once llama.cpp has parsed it (checked once per distinct grammar)."""
        import llama_cpp

        if text not in self._valid_grammars:
            sampler = llama_cpp.llama_sampler_init_grammar(self._vocab, text.encode("utf-8"), b"root")
            if not sampler:
                raise ConfigurationError(
                    "llama.cpp could not parse the grammar (its parser printed the reason on stderr); "
                    f"grammar starts: {text[:200]!r}"
                )
            llama_cpp.llama_sampler_free(sampler)
            self._valid_grammars.add(text)
        return text

    # ---- the KV cache ------------------------------------------------------------------------
    def _reuse_prefix(self, tokens: list[int]) -> int:
        """Trim the KV cache to the longest prefix shared with ``tokens``; return how many tokens it keeps."""
        llm = self._llm
        cached = llm.input_ids[: llm.n_tokens].tolist() if self.prefix_reuse else []
        shared = 0
        for a, b in zip(cached, tokens):
            if a != b:
                break
            shared += 1
        shared = min(shared, len(tokens) - 1)  # the last prompt token is always evaluated: it yields the logits
        if shared > 0 and llm._ctx.kv_cache_seq_rm(-1, shared, -1) and self._cache_starts_at_zero():
            llm.n_tokens = shared
            return shared
        llm.reset()
        return 0

    def _cache_starts_at_zero(self) -> bool:
        """False when a sliding-window cache has dropped early positions, so the kept prefix is incomplete.

        llama-cpp-python allocates full-size SWA caches by default (then this is always True); the check
        keeps reuse correct should a model ever be loaded with a pruning window cache.
        """
        import llama_cpp

        return llama_cpp.llama_memory_seq_pos_min(self._llm._ctx.memory, 0) <= 0

    # ---- generation --------------------------------------------------------------------------
    def _stream(self, messages: list[Message], params: GenerationParams) -> Iterator[Chunk]:
        plan = plan_tools(params, self._format, self.capabilities, messages)
        return self._stream_tokens(self.prompt_tokens(messages, plan.render_tools), params, plan)

    def _stream_prompt(self, prompt: str, params: GenerationParams) -> Iterator[Chunk]:
        kept, tail = split_tail(self.tokenize(prompt), self._token_text, params)
        return self._stream_tokens(kept, params, ToolPlan(), heal=tail or b"")

    def _token_text(self, token: int) -> bytes:
        return self._llm.detokenize([token], special=False)

    def _stream_tokens(self, tokens: list[int], params: GenerationParams, plan: ToolPlan, *,
                       heal: bytes = b"") -> Iterator[Chunk]:
        n_ctx = self._context_size()
        if len(tokens) >= n_ctx:
            raise ContextOverflowError(
                f"the prompt is {len(tokens)} tokens but model '{self.name}' was loaded with a context of {n_ctx}; "
                "shorten the conversation, lower max_steps, or load the model with a larger n_ctx"
            )
        max_tokens = min(params.max_tokens or DEFAULT_MAX_TOKENS, n_ctx - len(tokens))
        grammar = healing_grammar(heal.decode()) if heal else self._grammar(params, plan)
        if plan.lazy_grammar:
            self._check_grammar(plan.lazy_grammar)
        temperature = 0.0 if params.temperature is None else params.temperature
        with self._lock:
            yield from self._decode(tokens, params, grammar, temperature, max_tokens, plan, heal)

    def _decode(
        self, tokens: list[int], params: GenerationParams, grammar: str | None, temperature: float, max_tokens: int,
        plan: ToolPlan, heal: bytes = b"",
    ) -> Iterator[Chunk]:
        import llama_cpp

        llm = self._llm
        seed = params.seed if params.seed is not None else self.seed
        llm.set_seed(seed if seed is not None else random.randrange(2**31))
        reused = self._reuse_prefix(tokens)
        scanner = StopScanner(list(params.stop))
        reply = plan.reply()  # holds back text that may be a tool call; parses it at the end
        written, searched, lazy_on = b"", 0, False  # the lazy call grammar's state (see tool_calls)
        eog = llm.token_eos()
        sampler = self._sampler(params, grammar, temperature)
        sampled = decode(llm, sampler, tokens[reused:], max_tokens + 1 + len(heal))
        generated, finish, skip = 0, "length", len(heal)  # the healed prompt tail is written again, not shown
        try:
            for token in sampled:
                if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                    finish = "stop"
                    break
                # special=True keeps markers such as <tool_call> that the tool-call parser needs
                piece = llm.detokenize([token], special=True)
                if skip:
                    piece, skip = piece[skip:], max(0, skip - len(piece))
                    if not skip:
                        sampler.deactivate()  # the prompt's own text is back: free decoding from here
                    if not piece:
                        continue
                generated += 1
                delta = scanner.feed(piece)
                if delta and (shown := reply.feed(delta)):
                    yield Chunk(text=shown)
                if plan.callable_tools:
                    written += piece
                    whole = (lazy_on or plan.grammar is not None) and plan.parallel and sampler.complete(eog)
                    if whole:  # a call is complete: free text (or another call) may follow
                        text = written.decode("utf-8", errors="ignore")
                        if repeats_a_call(text, plan.callable_tools):  # looping on one call: it is meant once
                            finish = "stop"
                            break
                        if lazy_on:
                            sampler.deactivate()
                            lazy_on, searched = False, len(text)
                    elif not lazy_on and plan.lazy_grammar is not None:  # a call may be starting: constrain it
                        text = written.decode("utf-8", errors="ignore")
                        start = trigger_start(text, plan.trigger, since=searched)
                        if start is not None:
                            lazy_on = sampler.activate(plan.lazy_grammar, self._tokenize_piece(text[start:]))
                            searched = len(text) if not lazy_on else searched
                if scanner.stopped:
                    finish = "stop"
                    break
                if generated >= max_tokens:
                    break
        finally:
            sampled.close()
            sampler.close()
        tail = reply.feed(scanner.finish())
        text, tool_calls = reply.finish()
        if plan.more_calls is not None and tool_calls:
            tool_calls, written_more = self._settle_call_count(tokens, tool_calls, plan, params, temperature,
                                                               max_tokens - generated)
            generated += written_more
        text, tool_calls, withheld = plan.settle(tail + text, tool_calls)
        text = reply.add_note(text, withheld)
        if text:
            yield Chunk(text=text)
        usage = Usage(
            prompt_tokens=len(tokens),
            completion_tokens=generated,
            prompt_tokens_evaluated=len(tokens) - reused,
            prompt_tokens_reused=reused,
        )
        yield Chunk(finish_reason="tool_calls" if tool_calls else finish, usage=usage, tool_calls=tool_calls)

    def _sampler(self, params: GenerationParams, grammar: str | None, temperature: float) -> GrammarFirstSampler:
        return GrammarFirstSampler(
            self._llm, self._vocab, grammar, temperature=temperature,
            top_k=params.top_k if params.top_k is not None else 40,
            top_p=params.top_p if params.top_p is not None else 0.95,
            min_p=0.05 if temperature > 0 else 0.0, repeat_penalty=self.repeat_penalty,
            frequency_penalty=params.frequency_penalty or 0.0, presence_penalty=params.presence_penalty or 0.0,
        )

    def _settle_call_count(self, prompt: list[int], calls: list[ToolCall], plan: ToolPlan, params: GenerationParams,
                           temperature: float, budget: int) -> tuple[list[ToolCall], int]:
        """(the reply's calls, tokens generated for them): each further call only when the model means one
        (call_count: asked after each call, the next written under a grammar of one offered call)."""
        import llama_cpp

        llm = self._llm
        if self._comma_mask is None:
            self._comma_mask = call_count.comma_mask(
                [llm.detokenize([t], special=True).decode("utf-8", "ignore") for t in range(llm.n_vocab())])
        generated = 0

        def p_another(kept: list[ToolCall]) -> float | None:
            probe = prompt + self._tokenize_piece(call_count.probe_text(kept))
            if len(probe) >= self._context_size():  # no room left to ask: the reply's calls stand as written
                return None
            llm.eval(probe[self._reuse_prefix(probe):])
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(llm.n_vocab(),))
            return call_count.continue_probability(logits, self._comma_mask)

        def write_next(kept: list[ToolCall]) -> ToolCall | None:
            nonlocal generated
            start = prompt + self._tokenize_piece(call_count.continuation_text(kept))
            room = min(budget - generated, self._context_size() - len(start))
            if room <= 0:
                return None
            sampler = self._sampler(params, self._check_grammar(plan.more_calls or ""), temperature)
            written = b""
            sampled = decode(llm, sampler, start[self._reuse_prefix(start):], room)
            try:
                for token in sampled:
                    if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                        break
                    written += llm.detokenize([token], special=True)
                    generated += 1
                    if sampler.complete(llm.token_eos()):
                        break
            finally:
                sampled.close()
                sampler.close()
            found = parse_tool_calls(written.decode("utf-8", errors="ignore"), plan.callable_tools)[1]
            return found[0] if found else None

        return call_count.settle(calls, p_another, write_next), generated

    # ---- scoring -----------------------------------------------------------------------------
    def score(self, requests: Sequence[ScoreRequest]) -> list[list[float]]:
        """Log-probabilities of each continuation's tokens after its context (plain text), batched on a second
        llama.cpp context over the same weights; each distinct context is evaluated once (see ``cpu.scoring``)."""
        from hanlin.runtimes.cpu.scoring import LlamaScorer

        check_score_requests(requests)
        if self._llm is None:
            raise ModelError(f"model '{self.name}' was closed; load it again with hanlin.load_model")
        pairs = [pair_ids(c, x, self.tokenize, self._tokenize_piece) for c, x in requests]
        n_ctx = self._context_size()
        for i, p in enumerate(pairs):
            if len(p.ids) > n_ctx:
                raise ContextOverflowError(f"score request {i} is {len(p.ids)} tokens but model '{self.name}' was "
                                           f"loaded with a context of {n_ctx}; shorten it or load with a larger n_ctx")
        with self._lock:
            if self._scorer is None:
                try:
                    self._scorer = LlamaScorer(self._llm, self._n_threads)
                except MemoryError as exc:
                    raise ModelError(f"{exc}; free memory or load the model with a smaller n_ctx") from None
            try:
                return self._scorer.score(pairs)
            except RuntimeError as exc:
                raise ModelError(f"llama.cpp failed while scoring: {exc}") from None

    def close(self) -> None:
        """Free the weights and context; waits for a running call, since llama.cpp would crash under it."""
        lock = getattr(self, "_lock", None)
        if lock is None:  # __init__ failed before the context existed
            return
        with lock:
            if getattr(self, "_scorer", None) is not None:  # its context must go before the model it reads
                self._scorer.close()
                self._scorer = None
            llm = getattr(self, "_llm", None)
            if llm is not None and hasattr(llm, "close"):
                llm.close()
            self._llm = None  # type: ignore[assignment]
