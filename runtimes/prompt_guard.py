"""Message content reaches the model as text, never as control tokens.

A chat prompt is rendered to one string, and the runtimes tokenize that string with special-token parsing on, because
the template's own markers (``<|im_start|>``, ``<start_of_turn>``) must become control tokens. Content that a tool,
a web page, a file or a user supplied goes through the same tokenizer, so a tool result holding ``<|im_end|>
<|im_start|>system`` would close the turn and open a new system turn: prompt-structure injection.

The guard renders each message whose content holds special-token text with an opaque placeholder in its place, then
cuts the rendered prompt at the placeholders: the template's text is tokenized with special tokens, the content as
plain text. Content without special-token text is rendered as is, so ordinary prompts tokenize exactly as before and
the KV-cache prefix reuse sees the same tokens. The assistant's own turns are left alone: they are the model's text,
and re-tokenizing them differently would break the prefix the model generated.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from hanlin import Message, ModelError

Segment = tuple[str, bool]  # (text, trusted): trusted text is tokenized with special tokens, untrusted as plain text


def _placeholder(index: int) -> str:
    # Private-use characters and digits: no whitespace (templates trim content), nothing a template escapes.
    return f"\ue000hanlin{index}\ue001"


def guarded_segments(
    messages: Sequence[Message],
    render: Callable[[list[Message]], str],
    holds_special: Callable[[str], bool],
) -> list[Segment]:
    """The rendered prompt as segments; content holding special-token text comes back untrusted.

    ``render`` turns messages into the prompt string; ``holds_special(text)`` says whether plain ``text`` would
    tokenize into any control token (each runtime asks its own tokenizer)."""
    shielded: list[Message] = []
    hidden: dict[str, str] = {}
    for i, message in enumerate(messages):
        if message.role != "assistant" and message.content and holds_special(message.content):
            key = _placeholder(i)
            hidden[key] = message.content
            message = message.model_copy(update={"content": key})
        shielded.append(message)
    text = render(shielded)
    if not hidden:
        return [(text, True)]
    segments: list[Segment] = []
    seen: set[str] = set()
    position = 0
    for match in re.finditer("|".join(map(re.escape, hidden)), text):
        segments.append((text[position:match.start()], True))
        segments.append((hidden[match.group()], False))
        seen.add(match.group())
        position = match.end()
    segments.append((text[position:], True))
    if missing := [k for k in hidden if k not in seen]:
        roles = ", ".join(messages[int(k[7:-1])].role for k in missing)
        raise ModelError(
            f"the chat template did not render the content of a {roles} message as given, so its special-token text "
            "could not be kept as plain text; remove the control-token text (such as '<|im_start|>') from that "
            "message, or use a model whose template renders message content unchanged"
        )
    return [s for s in segments if s[0]]


def tokenize_segments(segments: Sequence[Segment], tokenize: Callable[[str, bool, bool], list[int]]) -> list[int]:
    """Token ids of the segments in order; ``tokenize(text, special, first)`` tokenizes one segment (``first``: the
    segment that may take a BOS)."""
    ids: list[int] = []
    for i, (text, trusted) in enumerate(segments):
        ids.extend(tokenize(text, trusted, i == 0))
    return ids
