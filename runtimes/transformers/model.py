"""A ChatModel on transformers: the reference backend, and the one the finetuners share.

The decode loop is ours (KV cache via past_key_values) so sampling, stop
sequences and streaming behave exactly like the other runtimes. There is no
constrained decoding here: protocols fall back to parsing and retries.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hanlin import (
    Capabilities,
    ChatModel,
    Chunk,
    ContextOverflowError,
    GenerationParams,
    Message,
    ModelError,
    ModelSpec,
    Usage,
)

from hanlin.runtimes.chat_format import parse_hermes_tool_calls, render_plain, template_messages
from hanlin.runtimes.text_stream import StopScanner
from hanlin.runtimes.transformers.convert import convert_gguf

DEFAULT_MAX_TOKENS = 512


class TransformersChatModel(ChatModel):
    def __init__(self, spec: ModelSpec, path: Path, *, device: str = "cpu", dtype: str = "float32", threads: int | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        folder = convert_gguf(path) if path.suffix == ".gguf" else path
        self.spec, self.name, self.folder = spec, spec.name, folder
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            self.model = AutoModelForCausalLM.from_pretrained(
                str(folder), local_files_only=True, dtype=getattr(torch, dtype)
            ).to(device)
        except OSError as exc:
            raise ModelError(f"transformers could not load {str(folder)!r}: {exc}") from None
        self.model.eval()
        self.device = device
        self._lock = threading.Lock()
        template = getattr(self.tokenizer, "chat_template", None)
        self._use_template = bool(template) and spec.chat_template
        self._hermes = spec.tool_call_style == "hermes" and self._use_template and "tools" in (template or "")
        self.context_length = int(getattr(self.model.config, "max_position_embeddings", 2048) or 2048)
        self.capabilities = Capabilities(
            constraints=frozenset(), native_tools=self._hermes, chat_template=self._use_template,
            context_length=self.context_length,
        )

    def render(self, messages: list[Message], tools: list[dict[str, Any]] | None = None) -> str:
        if not self._use_template:
            return render_plain(messages)
        return self.tokenizer.apply_chat_template(
            template_messages(messages), tools=tools if self._hermes else None, add_generation_prompt=True, tokenize=False
        )

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=not self._use_template)["input_ids"]

    def _sample(self, logits: Any, params: GenerationParams, generator: Any) -> int:
        import torch

        temperature = 0.0 if params.temperature is None else params.temperature
        if temperature == 0:
            return int(torch.argmax(logits))
        logits = logits / temperature
        if params.top_k:
            kth = torch.topk(logits, min(params.top_k, logits.numel())).values[-1]
            logits = torch.where(logits < kth, torch.full_like(logits, -math.inf), logits)
        probs = torch.softmax(logits, dim=-1)
        if params.top_p is not None and params.top_p < 1:
            ordered, index = torch.sort(probs, descending=True)
            keep = torch.cumsum(ordered, dim=-1) - ordered < params.top_p
            probs = torch.zeros_like(probs).scatter(0, index[keep], ordered[keep])
            probs = probs / probs.sum()
        return int(torch.multinomial(probs, 1, generator=generator))

    def _stream(self, messages: list[Message], params: GenerationParams) -> Iterator[Chunk]:
        import torch

        prompt = self.tokenize(self.render(messages, params.tools))
        if len(prompt) >= self.context_length:
            raise ContextOverflowError(
                f"the prompt is {len(prompt)} tokens but model '{self.name}' has a context of {self.context_length}; "
                "shorten the conversation"
            )
        max_tokens = min(params.max_tokens or DEFAULT_MAX_TOKENS, self.context_length - len(prompt))
        eos = set(filter(lambda t: t is not None, [self.tokenizer.eos_token_id, getattr(self.model.generation_config, "eos_token_id", None)]))
        eos = {t for e in eos for t in (e if isinstance(e, list) else [e])}
        generator = torch.Generator().manual_seed(params.seed if params.seed is not None else torch.seed() % 2**31)
        scanner = StopScanner(list(params.stop))
        hold = self._hermes and bool(params.tools)
        generated: list[int] = []
        text_so_far = ""
        parts: list[str] = []
        finish = "length"
        with self._lock, torch.inference_mode():
            ids = torch.tensor([prompt], device=self.device)
            past = None
            for _ in range(max_tokens):
                out = self.model(input_ids=ids, past_key_values=past, use_cache=True)
                past = out.past_key_values
                token = self._sample(out.logits[0, -1].float(), params, generator)
                if token in eos:
                    finish = "stop"
                    break
                generated.append(token)
                text = self.tokenizer.decode(generated, skip_special_tokens=False)
                if text.endswith("\ufffd"):  # a character split across tokens: wait for the rest
                    ids = torch.tensor([[token]], device=self.device)
                    continue
                delta = scanner.feed_text(text[len(text_so_far):])
                text_so_far = text
                if delta:
                    parts.append(delta)
                    if not hold:
                        yield Chunk(text=delta)
                if scanner.stopped:
                    finish = "stop"
                    break
                ids = torch.tensor([[token]], device=self.device)
        tail = scanner.finish()
        if tail:
            parts.append(tail)
            if not hold:
                yield Chunk(text=tail)
        calls = []
        if hold:
            names = [t.get("function", t).get("name") for t in params.tools or []]
            text, calls = parse_hermes_tool_calls("".join(parts), names)
            if text:
                yield Chunk(text=text)
        usage = Usage(prompt_tokens=len(prompt), completion_tokens=len(generated),
                      prompt_tokens_evaluated=len(prompt), prompt_tokens_reused=0)
        yield Chunk(finish_reason="tool_calls" if calls else finish, usage=usage, tool_calls=calls)

    def logprobs(self, context: str, continuation: str) -> list[float]:
        """Log-probability of each token of ``continuation`` after ``context`` (for likelihood scoring)."""
        import torch

        ctx_ids = self.tokenizer(context, add_special_tokens=not self._use_template)["input_ids"]
        full_ids = self.tokenizer(context + continuation, add_special_tokens=not self._use_template)["input_ids"]
        if full_ids[: len(ctx_ids)] != ctx_ids:  # the boundary merged into one token: tokenize separately
            full_ids = ctx_ids + self.tokenizer(continuation, add_special_tokens=False)["input_ids"]
        with self._lock, torch.inference_mode():
            logits = self.model(input_ids=torch.tensor([full_ids], device=self.device)).logits[0].float()
        logp = torch.log_softmax(logits[:-1], dim=-1)
        targets = torch.tensor(full_ids[1:], device=self.device)
        picked = logp.gather(1, targets[:, None])[:, 0]
        return picked[len(ctx_ids) - 1 :].tolist()
