"""Prompt side of an HF-folder model, shared by the transformers and gpu runtimes: the tokenizer, the chat
template (or the plain layout for base models), tool rendering in the family's call format, and the end-of-generation
tokens."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hanlin import Message, ModelError, ModelSpec
from hanlin.runtimes.chat_format import render_plain, template_knows_tools, template_messages
from hanlin.runtimes.prompt_guard import guarded_segments, tokenize_segments
from hanlin.runtimes.tool_calls import CallFormat, detect_format


@dataclass(frozen=True, slots=True)
class PromptLayout:
    """How a model's prompts are laid out: its chat template or the plain layout, whether the template renders
    tool calls and results itself, and the call format written into the text where it does not."""

    use_template: bool
    tool_roles: bool
    call_format: CallFormat


def prompt_layout(template: str | None, spec: ModelSpec | None = None) -> PromptLayout:
    """The one decision of how a model is prompted, taken from its tokenizer's template and its model spec.

    The runtimes serve with it and the finetuners train with it: if the two decided apart (say, training on the
    template of a base model the spec marks ``chat_template=False``), a tuned model would be asked in a layout it
    never saw. ``spec=None`` (a bare folder) trusts the template.
    """
    return PromptLayout(
        use_template=bool(template) and (spec is None or spec.chat_template),
        tool_roles=bool(template) and template_knows_tools(template or ""),
        call_format=detect_format(template, spec.tool_call_style if spec is not None else None),
    )


class HFPrompt:
    def __init__(self, spec: ModelSpec, folder: Path) -> None:
        from transformers import AutoTokenizer

        self.name = spec.name
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except Exception as exc:
            raise ModelError(f"could not load the tokenizer of {str(folder)!r} ({type(exc).__name__}: {exc})") from None
        layout = prompt_layout(getattr(self.tokenizer, "chat_template", None), spec)
        self.use_template, self.tool_roles, self.format = layout.use_template, layout.tool_roles, layout.call_format
        self.native_tools = self.use_template  # a template without tools gets them as instructions
        self.eos_ids = self._eos_ids(folder)
        # The fast tokenizer keeps "split special tokens" as a flag on itself, set by each call before it encodes
        # (and its Rust encode lets go of the GIL): callers on several threads (hanlin serve, the gpu runtime)
        # flipped it under each other, turning a template's <|im_start|> into text, or a hostile tool result's
        # into a control token. One encode at a time, flag and all.
        self._encode_lock = threading.Lock()

    def _eos_ids(self, folder: Path) -> frozenset[int]:
        """The tokenizer's end token and the generation config's (which may list several)."""
        found: set[int] = set()
        gen = folder / "generation_config.json"
        values: list[Any] = [self.tokenizer.eos_token_id]
        if gen.is_file():
            values.append(json.loads(gen.read_text()).get("eos_token_id"))
        for value in values:
            if isinstance(value, int):
                found.add(value)
            elif isinstance(value, (list, tuple)):
                found.update(v for v in value if isinstance(v, int))
        return frozenset(found)

    def render(self, messages: list[Message], tools: list[dict[str, Any]] | None = None) -> str:
        if not self.use_template:
            return render_plain(messages)
        try:
            return self.tokenizer.apply_chat_template(
                template_messages(messages, tool_roles=self.tool_roles, call_format=self.format, tools=tools),
                tools=tools if self.tool_roles and tools else None,
                add_generation_prompt=True, tokenize=False,
            )
        except Exception as exc:  # jinja errors and the template's own raise_exception
            raise ModelError(f"the chat template of model '{self.name}' failed: {type(exc).__name__}: {exc}") from None

    def prompt_ids(self, messages: list[Message], tools: list[dict[str, Any]] | None = None) -> list[int]:
        """The rendered prompt's token ids, message content as plain text (see ``prompt_guard``)."""
        segments = guarded_segments(messages, lambda m: self.render(m, tools), self._holds_special)
        return tokenize_segments(segments, self._tokenize_segment)

    def _holds_special(self, text: str) -> bool:
        return self._tokenize_segment(text, True, False) != self._tokenize_segment(text, False, False)

    def _tokenize_segment(self, text: str, special: bool, first: bool) -> list[int]:
        add = first and not self.use_template  # the plain layout takes the tokenizer's BOS; a template writes its own
        return self._encode(text, add_special_tokens=add, split_special_tokens=not special)

    def tokenize(self, text: str, *, templated: bool | None = None) -> list[int]:
        """Token ids; text rendered by the chat template already holds its special tokens, so none are added."""
        templated = self.use_template if templated is None else templated
        return self._encode(text, add_special_tokens=not templated, split_special_tokens=False)

    def token_text(self, token: int) -> str:
        """One token's own text (special tokens as nothing), as token healing reads a prompt's tail."""
        return self.tokenizer.decode([token], skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def _encode(self, text: str, **options: bool) -> list[int]:
        with self._encode_lock:
            return self.tokenizer(text, **options)["input_ids"]
