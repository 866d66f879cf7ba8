"""A ChatModel on transformers: the reference backend, and the one the finetuners share.

The decode loop is ours (KV cache via past_key_values) rather than
``model.generate`` so sampling, stop sequences, streaming and usage counts
behave exactly like the other runtimes. There is no constrained decoding here
(capabilities.constraints is empty): protocols fall back to parsing and
retries. Every call evaluates its whole prompt (no prefix reuse), which the
usage counts say. Native tool calls are offered exactly where the cpu runtime
offers them (every chat model; see ``hanlin.runtimes.tool_calls``), so a
protocol behaves the same on either backend. ``score`` returns prompt log-probabilities (likelihood evaluation),
batched.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

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
    Usage,
)
from hanlin.chat_model import ScoreRequest, check_score_requests
from hanlin.messages import MessageLike, to_messages
from hanlin.runtimes.hf_prompt import HFPrompt
from hanlin.runtimes.scoring import ScoredIds, length_batches, pair_ids
from hanlin.runtimes.gguf_convert import convert_gguf
from hanlin.runtimes.tool_calls import ToolPlan, plan_tools
from hanlin.runtimes.reply_stream import ReplyStream
from hanlin.runtimes.sampling import ReplyCounts, sample_token
from hanlin.runtimes.token_healing import TailMask, split_tail

DEFAULT_MAX_TOKENS = 512
DTYPES = ("float32", "bfloat16", "float16")
# Padded tokens per scoring forward. On a CPU, activations beyond the caches make the elementwise ops memory-bound:
# measured on SmolLM2 (2 cores), 512-1024 tokens a forward score 1.4x faster than 4096. A GPU wants big batches.
SCORE_BATCH_TOKENS = {"cpu": 1024, "cuda": 16384}


class TransformersChatModel(ChatModel):
    """One HF causal LM and its tokenizer. ``path`` is an HF folder or a .gguf file (converted once, cached).

    ``threads`` sets torch's intra-op threads for the whole process (torch has
    no per-model setting); on a machine whose cores are busy, fewer threads
    than cores is much faster, because torch's OpenMP workers spin-wait.
    """

    def __init__(
        self,
        spec: ModelSpec,
        path: Path,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        threads: int | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        if dtype not in DTYPES:
            raise ConfigurationError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if threads is not None and (not isinstance(threads, int) or threads <= 0):
            raise ConfigurationError(f"threads must be a positive integer, got {threads!r}")
        if threads:
            torch.set_num_threads(threads)
        path = Path(path)
        folder = convert_gguf(path, Path(cache_dir) if cache_dir else None) if path.suffix == ".gguf" else path
        self.spec, self.name, self.path, self.folder, self.device = spec, spec.name, path, folder, device
        self.prompt = HFPrompt(spec, folder)
        self.tokenizer = self.prompt.tokenizer
        try:
            self.model = AutoModelForCausalLM.from_pretrained(
                str(folder), local_files_only=True, dtype=getattr(torch, dtype)
            ).to(device)
        except Exception as exc:  # OSError, safetensors errors, a config transformers cannot map, a bad device
            raise ModelError(
                f"transformers could not load {str(folder)!r} ({type(exc).__name__}: {exc}); check that it is a "
                "complete HF model folder (config.json, weights, tokenizer)"
            ) from None
        self.model.eval()
        self.score_batch_tokens = SCORE_BATCH_TOKENS.get(torch.device(device).type, 4096)
        self._lock = threading.Lock()
        self._use_template = self.prompt.use_template
        self.context_length = int(getattr(self.model.config, "max_position_embeddings", 0) or 2048)
        self._eos = self.prompt.eos_ids
        self._healing_mask: TailMask | None = None
        self.capabilities = Capabilities(
            constraints=frozenset(), native_tools=self.prompt.native_tools, chat_template=self._use_template,
            context_length=self.context_length, logprobs=True,
        )

    # ---- prompt ------------------------------------------------------------------------------
    def render(self, messages: list[Message], tools: list[dict[str, Any]] | None = None) -> str:
        return self.prompt.render(messages, tools)

    def tokenize(self, text: str, *, templated: bool | None = None) -> list[int]:
        return self.prompt.tokenize(text, templated=templated)

    def _check_fits(self, n_tokens: int) -> None:
        if n_tokens >= self.context_length:
            raise ContextOverflowError(
                f"the prompt is {n_tokens} tokens but model '{self.name}' has a context of {self.context_length}; "
                "shorten the conversation or lower max_steps"
            )

    # ---- generation --------------------------------------------------------------------------
    def _stream(self, messages: list[Message], params: GenerationParams) -> Iterator[Chunk]:
        plan = plan_tools(params, self.prompt.format, self.capabilities, messages)
        return self._stream_tokens(self.prompt.prompt_ids(messages, plan.render_tools), params, plan)

    def _stream_prompt(self, prompt: str, params: GenerationParams) -> Iterator[Chunk]:
        ids = self.tokenize(prompt, templated=False)
        kept, tail = split_tail(ids, self.prompt.token_text, params)
        if not tail:
            return self._stream_tokens(ids, params, ToolPlan())
        budget = (params.max_tokens or DEFAULT_MAX_TOKENS) + len(ids) - len(kept)  # the tail is written again
        longer = params.model_copy(update={"max_tokens": budget})
        return self._stream_tokens(kept, longer, ToolPlan(), heal=tail)

    def _tail_mask(self) -> TailMask:
        """The vocabulary's texts, decoded once per model on the first healed prompt."""
        if self._healing_mask is None:
            self._healing_mask = TailMask([self.prompt.token_text(i) for i in range(len(self.tokenizer))])
        return self._healing_mask

    def _stream_tokens(self, prompt: list[int], params: GenerationParams, plan: ToolPlan, *,
                       heal: str = "") -> Iterator[Chunk]:
        self._check_fits(len(prompt))  # raised by the stream() call itself, before any generator runs
        return self._decode(prompt, params, plan, heal)

    def _forward(self, ids: list[int], past: Any) -> tuple[Any, Any]:
        """One model step: logits of the last position, and the grown KV cache."""
        import torch

        model = self._loaded()
        with self._lock, torch.inference_mode():
            out = model(input_ids=torch.tensor([ids], device=self.device), past_key_values=past, use_cache=True)
        return out.logits[0, -1], out.past_key_values

    def _decode(self, prompt: list[int], params: GenerationParams, plan: ToolPlan, heal: str = "") -> Iterator[Chunk]:
        import torch

        max_tokens = min(params.max_tokens or DEFAULT_MAX_TOKENS, self.context_length - len(prompt))
        temperature = 0.0 if params.temperature is None else params.temperature
        generator = torch.Generator().manual_seed(params.seed if params.seed is not None else random.randrange(2**31))
        reply = ReplyStream(self.tokenizer, params.stop, plan, heal=heal)
        mask = self._tail_mask() if heal else None
        finish = "length"
        step, past, written, counts = prompt, None, [], ReplyCounts()
        # The lock is taken per forward step, not per call: each call owns its KV cache, so concurrent
        # callers interleave safely, and a consumer that stops reading a stream never blocks the others.
        for _ in range(max_tokens):
            logits, past = self._forward(step, past)
            if reply.healing and mask is not None:
                logits = mask.apply(logits, reply.healing)
            token = sample_token(logits, temperature, params.top_k, params.top_p, generator, written=written,
                                 frequency_penalty=params.frequency_penalty, presence_penalty=params.presence_penalty,
                                 counts=counts)
            if token in self._eos:
                finish = "stop"
                break
            yield from reply.add(token)
            if reply.stopped:
                finish = "stop"
                break
            step = [token]
            written.append(token)
        usage = Usage(prompt_tokens=len(prompt), completion_tokens=reply.num_tokens,
                      prompt_tokens_evaluated=len(prompt), prompt_tokens_reused=0)
        yield from reply.close(finish, usage)

    # ---- scoring -----------------------------------------------------------------------------
    def _pair(self, context: str, continuation: str, templated: bool = False) -> ScoredIds:
        return pair_ids(context, continuation, lambda t: self.tokenize(t, templated=templated),
                        lambda t: self.tokenize(t, templated=True))

    def score(self, requests: Sequence[ScoreRequest]) -> list[list[float]]:
        """Log-probabilities of each continuation's tokens (plain text, no chat template), batched: requests of
        similar length are right-padded into one forward under an attention mask, at most ``score_batch_tokens``
        padded tokens per forward, and only the positions that predict a continuation token reach the LM head."""
        check_score_requests(requests)
        pairs = [self._pair(c, x) for c, x in requests]
        for i, p in enumerate(pairs):
            if len(p.ids) > self.context_length:
                raise ContextOverflowError(f"score request {i} is {len(p.ids)} tokens but model '{self.name}' has a "
                                           f"context of {self.context_length}; shorten the prompt")
        out: list[list[float]] = [[] for _ in pairs]
        for batch in length_batches(pairs, self.score_batch_tokens):
            for i, values in zip(batch, self._score_batch([pairs[i] for i in batch]), strict=True):
                out[i] = values
        return out

    def _score_batch(self, pairs: list[ScoredIds]) -> list[list[float]]:
        import torch

        width = max(len(p.ids) for p in pairs)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(pairs), width), pad, dtype=torch.long)
        attention = torch.zeros((len(pairs), width), dtype=torch.long)
        keep = torch.zeros((len(pairs), width), dtype=torch.bool)  # the rows that predict a continuation token
        for b, p in enumerate(pairs):
            ids[b, : len(p.ids)] = torch.tensor(p.ids)
            attention[b, : len(p.ids)] = 1
            keep[b, p.rows.start : p.rows.stop] = True
        model = self._loaded()
        with self._lock, torch.inference_mode():
            args = dict(input_ids=ids.to(self.device), attention_mask=attention.to(self.device))
            # transformers 5 documents a 2-D boolean logits_to_keep (slice_logits_to_keep): the True positions,
            # flattened, and only they reach the LM head. A model that slices it itself ([:, mask, :]) raises
            # instead, and another may return some other shape: then every position's logits, masked here.
            try:
                logits = model(**args, logits_to_keep=keep.to(self.device)).logits
            except (IndexError, RuntimeError, TypeError):
                logits = None
            if logits is None or logits.ndim != 2 or logits.shape[0] != int(keep.sum()):
                logits = model(**args).logits[keep.to(self.device)]
        logp = torch.log_softmax(logits.float(), dim=-1)  # rows in batch order, each pair's rows in order
        targets = torch.tensor([t for p in pairs for t in p.targets], device=logp.device)
        flat = logp.gather(1, targets[:, None])[:, 0].tolist()
        out, at = [], 0
        for p in pairs:
            out.append(flat[at : at + len(p.targets)])
            at += len(p.targets)
        return out

    def logprobs(self, context: str | Iterable[MessageLike], continuation: str) -> list[float]:
        """Log-probability of each token of ``continuation`` after ``context`` (for likelihood scoring).

        ``context`` is plain text (scored as is, the same as ``score``) or messages (rendered with the chat
        template and its assistant prompt, so the continuation is scored as the model's reply).
        """
        if isinstance(context, str):
            return self.score([(context, continuation)])[0]
        if not continuation:
            raise ConfigurationError("logprobs needs a non-empty continuation to score")
        pair = self._pair(self.render(to_messages(context)), continuation, templated=self._use_template)
        self._check_fits(len(pair.ids))
        return self._score_batch([pair])[0]

    def _loaded(self) -> Any:
        if self.model is None:
            raise ModelError(f"model '{self.name}' was closed; load it again with hanlin.load_model")
        return self.model

    def close(self) -> None:
        """Drop the weights; the model cannot be used afterwards."""
        self.model = None  # type: ignore[assignment]
