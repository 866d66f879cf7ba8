"""Calibration and evaluation text for quantizers: local files only, read the same way by every method.

Why its own module: the most common complaint about quantization toolkits is calibration data fetched from a hub
that fails offline (LMDeploy #1142, #1671, #2729...). Here calibration is a local file the user names, or text
that ships with this machine (an installed package's description), never a download; a name that looks like a hub
data set ("wikitext2", "pileval") gets an error saying so.

Formats (by suffix):
- ``.txt``: plain text; blank lines separate samples (a file with no blank line is one sample).
- ``.jsonl``: one JSON object a line, with ``text``, or ``messages`` (a chat: role/content objects, as hanlin's
  traces and the OpenAI format write them), or ``prompt`` plus an optional ``completion``/``response``.

Every error names the file and line and says what was expected.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hanlin.errors import ConfigurationError

SUFFIXES = (".jsonl", ".txt")
_HUB_NAMES = {"wikitext", "wikitext2", "wikitext-2", "pileval", "pile", "c4", "ptb", "ultrachat", "openwebtext"}


@dataclass(frozen=True, slots=True)
class CalibrationSample:
    """One sample: its text (chat contents joined by blank lines), its chat when it was one, where it came from."""

    text: str
    line: int
    messages: tuple[dict[str, str], ...] | None = None


def load_calibration(path: str | Path, *, limit: int | None = None) -> list[CalibrationSample]:
    """The samples of a local calibration file (at most ``limit``), or a ConfigurationError naming file:line."""
    file = _check_path(path)
    raw = file.read_text(encoding="utf-8", errors="replace")
    if not raw.strip():
        raise ConfigurationError(f"calibration file {file} is empty; give it text (.txt) or one JSON object a line "
                                 "(.jsonl with 'text' or 'messages')")
    samples = _read_txt(raw) if file.suffix == ".txt" else _read_jsonl(raw, file)
    if not samples:
        raise ConfigurationError(f"calibration file {file} has no non-empty sample")
    return samples[:limit] if limit else samples


def calibration_text(path: str | Path, *, limit: int | None = None) -> str:
    """All samples of a calibration file as one text (blank lines between), e.g. for a perplexity check."""
    return "\n\n".join(s.text for s in load_calibration(path, limit=limit))


def held_out_text(chars: int = 6000) -> tuple[str, str]:
    """Default evaluation text that ships with this machine: pydantic's package description (English prose and
    code, never seen as calibration unless the user chose it). Returns (label, text)."""
    import importlib.metadata

    meta = importlib.metadata.metadata("pydantic")
    body = meta.get_payload() or meta.get("Description") or ""  # type: ignore[attr-defined]
    if len(body.strip()) < 500:
        raise ConfigurationError("the default held-out text (pydantic's package description) is missing here; "
                                 "pass an evaluation text file with --eval-text")
    return f"held-out: pydantic {meta['Version']} METADATA", body[:chars]


def _check_path(path: str | Path) -> Path:
    file = Path(path).expanduser()
    if not file.exists():
        if str(path).lower() in _HUB_NAMES or ("/" in str(path) and not file.parent.exists()):
            raise ConfigurationError(
                f"calibration {str(path)!r} is not a local file: hanlin never downloads calibration data from a "
                "hub; pass a .jsonl or .txt file on this machine (your own chats or traces work best)")
        raise ConfigurationError(f"calibration file {file} does not exist; pass a local .jsonl or .txt file")
    if file.is_dir():
        raise ConfigurationError(f"calibration path {file} is a folder; pass one .jsonl or .txt file")
    if file.suffix not in SUFFIXES:
        raise ConfigurationError(f"calibration file {file} has suffix {file.suffix or '(none)'!r}; use .jsonl (one "
                                 "JSON object a line with 'text' or 'messages') or .txt (plain text)")
    return file


def _read_txt(raw: str) -> list[CalibrationSample]:
    samples, start, block = [], 1, []
    for number, line in enumerate(raw.splitlines(), 1):
        if line.strip():
            if not block:
                start = number
            block.append(line)
        elif block:
            samples.append(CalibrationSample("\n".join(block), start))
            block = []
    if block:
        samples.append(CalibrationSample("\n".join(block), start))
    return samples


def _read_jsonl(raw: str, file: Path) -> list[CalibrationSample]:
    samples = []
    for number, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{file}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno}); each line of a "
                                     ".jsonl calibration file is one JSON object") from None
        if not isinstance(record, dict):
            raise ConfigurationError(f"{where}: expected a JSON object with 'text' or 'messages', got "
                                     f"{type(record).__name__}")
        samples.append(_sample(record, number, where))
    return samples


def _sample(record: dict[str, Any], number: int, where: str) -> CalibrationSample:
    if "text" in record:
        text = record["text"]
        if not isinstance(text, str) or not text.strip():
            raise ConfigurationError(f"{where}: 'text' must be a non-empty string, got {text!r:.60}")
        return CalibrationSample(text, number)
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise ConfigurationError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
        chat = []
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise ConfigurationError(f"{where}: messages[{i}] must be an object with a 'role' and a 'content'")
            content = message.get("content") or ""
            if not isinstance(content, str):  # OpenAI content parts: keep their text
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            chat.append({"role": message["role"], "content": content})
        text = "\n\n".join(m["content"] for m in chat if m["content"].strip())
        if not text:
            raise ConfigurationError(f"{where}: every message's content is empty")
        return CalibrationSample(text, number, tuple(chat))
    if isinstance(record.get("prompt"), str):
        answer = record.get("completion", record.get("response", ""))
        text = (record["prompt"] + (answer if isinstance(answer, str) else "")).strip()
        if text:
            return CalibrationSample(text, number)
    raise ConfigurationError(f"{where}: no 'text', 'messages' or 'prompt' field (found keys: "
                             f"{', '.join(sorted(record)) or 'none'}); write {{\"text\": \"...\"}} or "
                             "{\"messages\": [{\"role\": \"user\", \"content\": \"...\"}]}")
