"""A ChatModel on transformers: the reference backend, and the one the finetuners share.

The decode loop is ours (KV cache via past_key_values) rather than
``model.generate`` so sampling, stop sequences, streaming and usage counts
behave exactly like the other runtimes. There is no constrained decoding here
(capabilities.constraints is empty): protocols fall back to parsing and
retries. Every call evaluates its whole prompt (no prefix reuse), which the
usage counts say. Native tool calls are offered exactly where the cpu runtime
offers them (hermes-style models whose template renders tools, i.e. Qwen), so
a protocol behaves the same on either backend.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterable, Iterator
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
from hanlin.messages import MessageLike, to_messages
from hanlin.runtimes.hf_prompt import HFPrompt
from hanlin.runtimes.transformers.convert import convert_gguf
from hanlin.runtimes.transformers.decoding import ReplyStream, sample_token

DEFAULT_MAX_TOKENS = 512
DTYPES = ("float32", "bfloat16", "float16")


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
        self._lock = threading.Lock()
        self._use_template, self._hermes = self.prompt.use_template, self.prompt.hermes
        self.context_length = int(getattr(self.model.config, "max_position_embeddings", 0) or 2048)
        self._eos = self.prompt.eos_ids
        self.capabilities = Capabilities(
            constraints=frozenset(), native_tools=self._hermes, chat_template=self._use_template,
            context_length=self.context_length,
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
        hold = self._hermes and bool(params.tools)  # tool-call output is parsed whole, then sent
        return self._stream_tokens(self.tokenize(self.render(messages, params.tools)), params, hold)

    def _stream_prompt(self, prompt: str, params: GenerationParams) -> Iterator[Chunk]:
        return self._stream_tokens(self.tokenize(prompt, templated=False), params, False)

    def _stream_tokens(self, prompt: list[int], params: GenerationParams, hold: bool) -> Iterator[Chunk]:
        self._check_fits(len(prompt))  # raised by the stream() call itself, before any generator runs
        return self._decode(prompt, params, hold)

    def _forward(self, ids: list[int], past: Any) -> tuple[Any, Any]:
        """One model step: logits of the last position, and the grown KV cache."""
        import torch

        model = self._loaded()
        with self._lock, torch.inference_mode():
            out = model(input_ids=torch.tensor([ids], device=self.device), past_key_values=past, use_cache=True)
        return out.logits[0, -1], out.past_key_values

    def _decode(self, prompt: list[int], params: GenerationParams, hold: bool) -> Iterator[Chunk]:
        import torch

        max_tokens = min(params.max_tokens or DEFAULT_MAX_TOKENS, self.context_length - len(prompt))
        temperature = 0.0 if params.temperature is None else params.temperature
        generator = torch.Generator().manual_seed(params.seed if params.seed is not None else random.randrange(2**31))
        reply = ReplyStream(self.tokenizer, params.stop, params.tools, hold)
        finish = "length"
        step, past = prompt, None
        # The lock is taken per forward step, not per call: each call owns its KV cache, so concurrent
        # callers interleave safely, and a consumer that stops reading a stream never blocks the others.
        for _ in range(max_tokens):
            logits, past = self._forward(step, past)
            token = sample_token(logits, temperature, params.top_k, params.top_p, generator)
            if token in self._eos:
                finish = "stop"
                break
            yield from reply.add(token)
            if reply.stopped:
                finish = "stop"
                break
            step = [token]
        usage = Usage(prompt_tokens=len(prompt), completion_tokens=reply.num_tokens,
                      prompt_tokens_evaluated=len(prompt), prompt_tokens_reused=0)
        yield from reply.close(finish, usage)

    # ---- scoring -----------------------------------------------------------------------------
    def logprobs(self, context: str | Iterable[MessageLike], continuation: str) -> list[float]:
        """Log-probability of each token of ``continuation`` after ``context`` (for likelihood scoring).

        ``context`` is plain text (scored as is) or messages (rendered with the
        chat template and its assistant prompt, so the continuation is scored
        as the model's reply).
        """
        import torch

        if not continuation:
            raise ConfigurationError("logprobs needs a non-empty continuation to score")
        templated = not isinstance(context, str) and self._use_template
        text = context if isinstance(context, str) else self.render(to_messages(context))
        ctx_ids = self.tokenize(text, templated=templated)
        full_ids = self.tokenize(text + continuation, templated=templated)
        if not ctx_ids:
            raise ConfigurationError("logprobs needs a non-empty context: the first token has no prediction to score")
        if full_ids[: len(ctx_ids)] != ctx_ids or len(full_ids) == len(ctx_ids):
            # the boundary merged into one token: score the pieces tokenized apart
            full_ids = ctx_ids + self.tokenize(continuation, templated=True)
        self._check_fits(len(full_ids))
        model = self._loaded()
        with self._lock, torch.inference_mode():
            logits = model(input_ids=torch.tensor([full_ids], device=self.device)).logits[0]
        logp = torch.log_softmax(logits[len(ctx_ids) - 1 : -1].float(), dim=-1)
        targets = torch.tensor(full_ids[len(ctx_ids) :], device=logp.device)
        return logp.gather(1, targets[:, None])[:, 0].tolist()

    def _loaded(self) -> Any:
        if self.model is None:
            raise ModelError(f"model '{self.name}' was closed; load it again with hanlin.load_model")
        return self.model

    def close(self) -> None:
        """Drop the weights; the model cannot be used afterwards."""
        self.model = None  # type: ignore[assignment]
