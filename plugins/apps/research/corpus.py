"""An offline corpus nobody here wrote as answers: the long descriptions of the installed Python packages.

``build_package_corpus(folder)`` writes one markdown file per installed distribution (its name, version, summary
and the long description from its METADATA), which the local search backend indexes as it is.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import re
from pathlib import Path

from hanlin.errors import ConfigurationError

MIN_CHARS = 200
# hanlin's own README is written here and quotes the research evaluation's questions (as example commands): in the
# corpus it answered "FastAPI is built on which ASGI toolkit ...?" with its own usage line. Left out unless named.
SELF = "hanlin"


def _description(dist: md.Distribution) -> str:
    meta = dist.metadata
    body = meta.get_payload() if hasattr(meta, "get_payload") else None  # type: ignore[attr-defined]
    if not body:
        body = meta.get("Description") or ""
    return str(body).strip()


def package_documents(names: list[str] | None = None, min_chars: int = MIN_CHARS) -> dict[str, str]:
    """``{file name: markdown}`` for each installed distribution with a long description of ``min_chars`` or more
    (``names``: only these distributions, matched case- and separator-insensitively; without it every one but
    hanlin itself)."""
    wanted = {re.sub(r"[-_.]+", "-", n).lower() for n in names} if names else None
    docs: dict[str, str] = {}
    for dist in md.distributions():
        name = dist.metadata.get("Name")
        if not name:
            continue
        key = re.sub(r"[-_.]+", "-", name).lower()
        if (key not in wanted) if wanted is not None else key == SELF:
            continue
        body = _description(dist)
        if len(body) < min_chars or f"{key}.md" in docs:
            continue
        summary = (dist.metadata.get("Summary") or "").strip()
        head = f"# {name} {dist.version}\n\n{name}: {summary}\n\n" if summary else f"# {name} {dist.version}\n\n"
        docs[f"{key}.md"] = head + body + "\n"
    if wanted is not None:
        missing = sorted(wanted - {f[:-3] for f in docs})
        if missing:
            raise ConfigurationError(f"no installed distribution with a long description for {missing}; "
                                     "check the names with `pip list`")
    return docs


def build_package_corpus(folder: str | Path, names: list[str] | None = None, min_chars: int = MIN_CHARS) -> Path:
    """Write the packages' descriptions into ``folder`` (created; existing files of the same name replaced)."""
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    for file_name, text in package_documents(names, min_chars).items():
        (folder / file_name).write_text(text, encoding="utf-8")
    return folder


def default_corpus_dir() -> Path:
    """The whole package corpus, built on first use under ``$HANLIN_HOME`` (default ``~/.cache/hanlin``)."""
    home = Path(os.environ.get("HANLIN_HOME", Path.home() / ".cache" / "hanlin"))
    folder = home / "research" / "packages"
    if not folder.is_dir() or not any(folder.glob("*.md")):
        build_package_corpus(folder)
    (folder / f"{SELF}.md").unlink(missing_ok=True)  # a corpus built before SELF was left out
    return folder
