"""Training records from the formats people have: hanlin traces, OpenAI chat, XTuner conversations, plain text,
and preference pairs for DPO.

Every file is read completely and every bad row is named with its line number before a model is loaded: a run
that would die at step 4,000 on row 9,317 is worth stopping before it starts. ``skip_bad`` turns those errors
into a count of skipped rows instead (reported, never silent).

A hanlin trace trains on its ``model_view`` when it has one: the messages exactly as the protocol rendered them
for the model's last call (ReAct's system prompt, observations as user turns...) plus the reply, so a tuned
model learns the format the protocol will ask of it. Traces of runs that did not end ``answered`` are left out
by default: a flywheel keeps the good runs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hanlin.errors import ConfigurationError
from hanlin.messages import Message, to_messages

FORMATS = ("auto", "hanlin", "openai", "xtuner", "text", "preference")
MAX_LISTED = 10


@dataclass(slots=True)
class ChatRecord:
    """One conversation to learn from; ``tools`` are the specs the model was offered (rendered by the template)."""

    messages: list[Message]
    tools: list[dict[str, Any]] | None = None
    where: str = ""


@dataclass(slots=True)
class TextRecord:
    """Plain text for continued pre-training: every token is a target."""

    text: str
    where: str = ""


@dataclass(slots=True)
class PreferenceRecord:
    """A prompt and two replies, the ``chosen`` one preferred to the ``rejected`` one."""

    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]
    tools: list[dict[str, Any]] | None = None
    where: str = ""


Record = ChatRecord | TextRecord | PreferenceRecord


class RecordError(ConfigurationError):
    """Rows of a training file hanlin cannot use; ``problems`` holds (source, line, what is wrong)."""

    def __init__(self, problems: Sequence[tuple[str, int, str]]) -> None:
        self.problems = list(problems)
        shown = [f"  {src}:{line}: {what}" for src, line, what in self.problems[:MAX_LISTED]]
        if len(self.problems) > MAX_LISTED:
            shown.append(f"  ... and {len(self.problems) - MAX_LISTED} more")
        noun = "record" if len(self.problems) == 1 else "records"
        super().__init__(
            f"{len(self.problems)} malformed {noun}; fix them, or pass --skip-bad-records to train without them:\n"
            + "\n".join(shown)
        )


@dataclass(slots=True)
class LoadedData:
    records: list[Record]
    skipped: list[tuple[str, int, str]] = field(default_factory=list)  # bad rows left out under skip_bad
    filtered: int = 0  # traces left out because their run did not end with an answer

    def summary(self) -> str:
        parts = [f"{len(self.records)} records"]
        if self.skipped:
            parts.append(f"{len(self.skipped)} malformed skipped (first: {self.skipped[0][0]}:{self.skipped[0][1]}: "
                         f"{self.skipped[0][2]})")
        if self.filtered:
            parts.append(f"{self.filtered} traces left out (status not in the kept statuses)")
        return ", ".join(parts)


def load_records(paths: str | Path | Iterable[str | Path], *, format: str = "auto", skip_bad: bool = False,
                 keep_status: Sequence[str] = ("answered",)) -> LoadedData:
    """Read every file; raise one RecordError naming every bad row unless ``skip_bad``."""
    if format not in FORMATS:
        raise ConfigurationError(f"data format must be one of {', '.join(FORMATS)}, got {format!r}")
    files = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    if not files:
        raise ConfigurationError("no training data given: name at least one .jsonl or .txt file")
    loaded = LoadedData(records=[])
    problems: list[tuple[str, int, str]] = []
    for path in files:
        if not path.is_file():
            raise ConfigurationError(f"training data {str(path)!r} does not exist")
        if path.suffix in (".txt", ".md") and format in ("auto", "text"):
            text = path.read_text(encoding="utf-8", errors="replace")
            if text.strip():
                loaded.records.append(TextRecord(text, where=f"{path.name}"))
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{path.name}:{number}"
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError(f"expected a JSON object, got {type(row).__name__}")
                record = parse_row(row, format, where, keep_status)
            except (ValueError, TypeError, ConfigurationError) as exc:
                problems.append((path.name, number, _one_line(exc)))
                continue
            if record is None:
                loaded.filtered += 1
            else:
                loaded.records.append(record)
    if problems and not skip_bad:
        raise RecordError(problems)
    loaded.skipped = problems
    if not loaded.records:
        raise ConfigurationError(f"no usable training records in {', '.join(str(p) for p in files)} ({loaded.summary()})")
    return loaded


def _one_line(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) < 300 else text[:297] + "..."


def detect_format(row: dict[str, Any]) -> str:
    if {"chosen", "rejected"} <= row.keys():
        return "preference"
    if "conversation" in row:
        return "xtuner"
    if "text" in row and "messages" not in row:
        return "text"
    if "messages" in row:
        return "hanlin" if ("status" in row or "model_view" in row) else "openai"
    raise ValueError("cannot tell the format: expected 'messages' (chat or hanlin trace), 'conversation' (XTuner), "
                     "'text' (plain text) or 'prompt'/'chosen'/'rejected' (preference)")


def parse_row(row: dict[str, Any], format: str, where: str, keep_status: Sequence[str] = ("answered",)) -> Record | None:
    """One JSON row as a record; ``None`` for a trace whose run is filtered out by status."""
    kind = detect_format(row) if format == "auto" else format
    if kind == "text":
        text = row.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ValueError("'text' must be a non-empty string")
        return TextRecord(text, where)
    if kind == "preference":
        return _preference(row, where)
    if kind == "xtuner":
        return ChatRecord(_xtuner(row), None, where)
    if kind == "hanlin" and row.get("status") is not None and row["status"] not in keep_status:
        return None
    source = row.get("model_view") if kind == "hanlin" and row.get("model_view") else row
    if "messages" not in source:
        raise ValueError("missing 'messages'")
    messages = _messages(source["messages"])
    tools = source.get("tools")
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
        raise ValueError("'tools' must be a list of OpenAI-style function specs")
    _check_conversation(messages)
    return ChatRecord(messages, tools or None, where)


def _messages(raw: Any) -> list[Message]:
    if not isinstance(raw, list) or not raw:
        raise ValueError("'messages' must be a non-empty list")
    out = []
    for i, m in enumerate(raw):
        if isinstance(m, dict) and m.get("tool_calls") and not isinstance(m["tool_calls"], list):
            raise ValueError(f"message {i}: 'tool_calls' must be a list")
        if isinstance(m, dict) and any(isinstance(c, dict) and "function" not in c and "name" in c
                                       for c in m.get("tool_calls") or []):
            # hanlin's own dump of a ToolCall: {"id", "name", "arguments": {...}}
            m = {**m, "tool_calls": [{"id": c.get("id"), "function": {"name": c["name"],
                                                                       "arguments": c.get("arguments", {})}}
                                     for c in m["tool_calls"]]}
        try:
            out.extend(to_messages([m]))
        except ConfigurationError as exc:
            raise ValueError(f"message {i}: {exc}") from None
    return out


def _check_conversation(messages: list[Message]) -> None:
    if not any(m.role == "assistant" for m in messages):
        raise ValueError("the conversation has no assistant turn to learn from")
    for i, m in enumerate(messages):
        if m.role == "assistant" and not m.content.strip() and not m.tool_calls:
            raise ValueError(f"message {i}: empty assistant turn (no text and no tool calls)")


def _xtuner(row: dict[str, Any]) -> list[Message]:
    """XTuner's format: {"conversation": [{"system"?, "input", "output"}, ...]}, one dict per turn."""
    turns = row.get("conversation")
    if not isinstance(turns, list) or not turns:
        raise ValueError("'conversation' must be a non-empty list of {input, output} turns")
    messages: list[Message] = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("output"), str) or not turn["output"].strip():
            raise ValueError(f"conversation turn {i}: needs a non-empty string 'output'")
        if isinstance(turn.get("system"), str) and turn["system"].strip():
            messages.append(Message.system(turn["system"]))
        if not isinstance(turn.get("input", ""), str):
            raise ValueError(f"conversation turn {i}: 'input' must be a string")
        if turn.get("input"):
            messages.append(Message.user(turn["input"]))
        messages.append(Message.assistant(turn["output"]))
    return messages


def _preference(row: dict[str, Any], where: str) -> PreferenceRecord:
    prompt = row.get("prompt")
    if isinstance(prompt, str):
        prompt_messages = [Message.user(prompt)] if prompt.strip() else []
    else:
        prompt_messages = _messages(prompt)
    if not prompt_messages:
        raise ValueError("'prompt' must be a non-empty string or list of messages")

    def reply(key: str) -> list[Message]:
        value = row.get(key)
        if isinstance(value, str):
            if not value.strip():
                raise ValueError(f"'{key}' is empty")
            return [Message.assistant(value)]
        msgs = _messages(value if isinstance(value, list) else [value])
        if msgs[-1].role != "assistant":
            raise ValueError(f"'{key}' must end with an assistant turn")
        return msgs

    chosen, rejected = reply("chosen"), reply("rejected")
    if [m.model_dump() for m in chosen] == [m.model_dump() for m in rejected]:
        raise ValueError("'chosen' and 'rejected' are identical: nothing to prefer")
    return PreferenceRecord(prompt_messages, chosen, rejected, row.get("tools") or None, where)
