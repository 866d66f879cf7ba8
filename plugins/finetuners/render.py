"""Records to token ids and labels, rendered exactly as the runtimes render prompts at inference.

Training and inference must agree on the text: a model tuned on one layout and asked in another learns little.
So chat records go through the same path as the transformers runtime's prompts (``template_messages``: tool
calls in the template's own style where it knows tools, written into the text in the model's call format where
it does not), and base models get the plain layout. Template or plain is one decision shared with the runtimes
(``hanlin.runtimes.hf_prompt.prompt_layout``), made from the tokenizer and the model spec together.

Loss masking works on characters, not on token guesses: each assistant turn's span is the text the template adds
between the prompt for that turn (with its generation prompt) and the conversation up to the end of that turn;
a token is a target when it starts inside such a span. The span includes the template's end-of-turn marker, so
the model learns to stop. A template that does not render conversations as prefixes of each other (some rewrite
earlier turns) is refused with an error rather than trained on wrong labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hanlin.errors import ConfigurationError
from hanlin.messages import Message
from hanlin.plugins.finetuners.records import PreferenceRecord, Record, TextRecord
from hanlin.runtimes.chat_format import render_plain, template_messages
from hanlin.runtimes.hf_prompt import prompt_layout
from hanlin.specs import ModelSpec

IGNORE = -100  # label of tokens that are not targets (torch's cross_entropy ignore_index)


@dataclass(slots=True)
class Sample:
    input_ids: list[int]
    labels: list[int]
    where: str = ""

    @property
    def n_targets(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE)


@dataclass(slots=True)
class PreferenceSample:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    where: str = ""


class Renderer:
    """Renders records with one tokenizer. ``train_on``: "assistant" (default), "last" (only the final assistant
    turn) or "all" (every token, e.g. for base-model style training on chats).

    ``spec`` is the base model's spec: whether it is prompted through its template or the plain layout, and in
    which call format, is decided by ``prompt_layout`` from the tokenizer and the spec together, as the runtimes
    decide when they serve the tuned model (a base model whose tokenizer carries a template trains plain)."""

    def __init__(self, tokenizer: Any, *, max_length: int = 2048, train_on: str = "assistant",
                 spec: ModelSpec | None = None) -> None:
        if train_on not in ("assistant", "last", "all"):
            raise ConfigurationError(f"train_on must be 'assistant', 'last' or 'all', got {train_on!r}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.train_on = train_on
        layout = prompt_layout(getattr(tokenizer, "chat_template", None), spec)
        self.use_template, self.tool_roles, self.call_format = layout.use_template, layout.tool_roles, layout.call_format
        self.eos_id = tokenizer.eos_token_id

    # ---- text ------------------------------------------------------------------------------------
    def render_text(self, messages: list[Message], tools: list[dict[str, Any]] | None = None, *,
                    generation_prompt: bool = False) -> str:
        if not self.use_template:
            return self._plain(messages, generation_prompt)
        try:
            return self.tokenizer.apply_chat_template(  # the call HFPrompt.render makes when serving
                template_messages(messages, tool_roles=self.tool_roles, call_format=self.call_format, tools=tools),
                tools=tools if self.tool_roles and tools else None,
                add_generation_prompt=generation_prompt, tokenize=False,
            )
        except Exception as exc:
            raise ConfigurationError(f"the chat template failed on this conversation: {type(exc).__name__}: {exc}") from None

    def _plain(self, messages: list[Message], generation_prompt: bool) -> str:
        """The runtimes' plain layout for base models (``render_plain``), with the end-of-sequence token after
        each assistant turn so the model learns where a reply stops."""
        eos = self.tokenizer.eos_token or ""
        parts = []
        for m in messages:
            piece = render_plain([m]).rsplit("\nAssistant:", 1)[0]
            parts.append(f"Assistant: {m.content.strip()}{eos}" if m.role == "assistant" else piece)
        if generation_prompt:
            parts.append("Assistant:")
        return "\n".join(parts)

    def assistant_spans(self, messages: list[Message], tools: list[dict[str, Any]] | None) -> tuple[str, list[tuple[int, int]]]:
        """The full text and the (start, end) character span of every assistant turn in it."""
        full = self.render_text(messages, tools)
        spans = []
        for i, m in enumerate(messages):
            if m.role != "assistant":
                continue
            before = self.render_text(messages[:i], tools, generation_prompt=True) if i else ""
            through = self.render_text(messages[: i + 1], tools)
            if not through.startswith(before) or not full.startswith(through):
                raise ConfigurationError(
                    "the chat template does not render a conversation's turns as prefixes of each other, so the "
                    "assistant tokens cannot be located; train with train_on: all, or use a model whose template "
                    "keeps earlier turns unchanged"
                )
            spans.append((len(before), len(through)))
        if self.train_on == "last":
            spans = spans[-1:]
        return full, spans

    # ---- tokens ----------------------------------------------------------------------------------
    def sample(self, record: Record) -> list[Sample]:
        """One record as samples of at most max_length tokens (plain text longer than that becomes several)."""
        if isinstance(record, TextRecord):
            return self._text_samples(record)
        if isinstance(record, PreferenceRecord):
            raise ConfigurationError("a preference record (prompt/chosen/rejected) needs the dpo method, not sft")
        full, spans = self.assistant_spans(record.messages, record.tools)
        encoded = self.tokenizer(full, add_special_tokens=not self.use_template, return_offsets_mapping=True)
        ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
        if self.train_on == "all":
            labels = list(ids)
        else:
            labels = [tok if any(s <= start < e for s, e in spans) and end > start else IGNORE
                      for tok, (start, end) in zip(ids, offsets)]
        if len(ids) > self.max_length:
            ids, labels = ids[: self.max_length], labels[: self.max_length]
        sample = Sample(ids, labels, record.where)
        if sample.n_targets == 0:
            raise ConfigurationError(f"{record.where}: no target tokens within max_length={self.max_length} "
                                     "(the first assistant turn starts after the cut); raise max_length")
        return [sample]

    def _text_samples(self, record: TextRecord) -> list[Sample]:
        ids = self.tokenizer(record.text, add_special_tokens=False)["input_ids"]
        if self.eos_id is not None:
            ids = ids + [self.eos_id]
        pieces = [ids[i : i + self.max_length] for i in range(0, len(ids), self.max_length)]
        return [Sample(p, list(p), record.where) for p in pieces if len(p) > 1]

    def preference(self, record: PreferenceRecord) -> PreferenceSample:
        """Prompt ids (rendered with the generation prompt) and each reply's ids (the rest of the rendering)."""
        if not isinstance(record, PreferenceRecord):
            raise ConfigurationError(f"{record.where}: the dpo method needs prompt/chosen/rejected records")
        prompt_text = self.render_text(record.prompt, record.tools, generation_prompt=True)
        prompt_ids = self._ids(prompt_text)

        def reply_ids(reply: list[Message]) -> list[int]:
            text = self.render_text(record.prompt + reply, record.tools)
            if not text.startswith(prompt_text):
                raise ConfigurationError(f"{record.where}: the template rewrote the prompt when a reply followed")
            ids = self._ids(text)
            if ids[: len(prompt_ids)] != prompt_ids:  # the boundary merged into one token: tokenize apart
                ids = prompt_ids + self.tokenizer(text[len(prompt_text):], add_special_tokens=False)["input_ids"]
            return ids[len(prompt_ids) :]

        chosen, rejected = reply_ids(record.chosen), reply_ids(record.rejected)
        room = self.max_length - len(prompt_ids)
        if room < 1:
            raise ConfigurationError(f"{record.where}: the prompt alone is {len(prompt_ids)} tokens, over "
                                     f"max_length={self.max_length}")
        return PreferenceSample(prompt_ids, chosen[:room], rejected[:room], record.where)

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=not self.use_template)["input_ids"]
