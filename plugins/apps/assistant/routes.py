"""The assistant inside ``hanlin serve``: mounted when the server is given a knowledge base
(``--app assistant.kb=DIR``, an index from ``hanlin kb build``), answering with the served model.

Options (``--app assistant.OPTION=VALUE``): ``kb`` (required), ``banned`` (comma-separated topics), ``rate`` and
``per_s`` (the per-group limit), ``rewrite`` (true/false), ``top_k``. Its chat model is at
``/v1/assistant/chat/completions`` (``/v1/chat/completions`` is the served model's); the web UI gets an Assistant
tab for retrieval testing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI

from hanlin.errors import ConfigurationError
from hanlin.server.context import server_context

OPTIONS = ("kb", "banned", "rate", "per_s", "rewrite", "top_k")


def _number(options: dict[str, str], name: str, default: float, kind: type = int) -> Any:
    raw = options.get(name)
    if raw is None:
        return default
    try:
        return kind(raw)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise ConfigurationError(f"--app assistant.{name}={raw!r}: expected {what}") from None


def register(app: FastAPI) -> None:
    context = server_context(app)
    options = context.options_for("assistant")
    if not options:
        return
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigurationError(f"unknown assistant option(s) {', '.join(unknown)}; known: {', '.join(OPTIONS)}")
    if "kb" not in options:
        raise ConfigurationError("the assistant needs its knowledge base: --app assistant.kb=DIR (an index folder "
                                 "from `hanlin kb build DOCS --out DIR`)")
    kb = Path(options["kb"]).expanduser()
    if not kb.is_dir():
        raise ConfigurationError(f"--app assistant.kb={options['kb']!r} is not a folder; build one with "
                                 "`hanlin kb build DOCS --out DIR`")
    rewrite = options.get("rewrite", "false").lower()
    if rewrite not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigurationError(f"--app assistant.rewrite={options['rewrite']!r}: expected true or false")
    from hanlin.plugins.apps.assistant.groups import Groups
    from hanlin.plugins.apps.assistant.pipeline import Assistant
    from hanlin.plugins.apps.assistant.server import add_assistant_api

    try:
        groups = Groups(rate=_number(options, "rate", 5), per_s=_number(options, "per_s", 60.0, float))
    except ValueError as exc:
        raise ConfigurationError(f"the assistant's rate limit: {exc}") from None
    banned = [t.strip() for t in options.get("banned", "").split(",") if t.strip()]
    assistant = Assistant(context.model, kb, top_k=_number(options, "top_k", 3), rewrite=rewrite in ("true", "1", "yes"),
                          banned=banned, groups=groups)
    add_assistant_api(app, assistant, authenticate=context.authenticate, max_body_bytes=context.max_body_bytes,
                      chat_path="/v1/assistant/chat/completions", admit=context.admission.admit)
    context.add_page(app, "assistant", "Assistant", Path(__file__).with_name("ui"))
