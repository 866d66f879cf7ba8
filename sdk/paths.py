"""Where hanlin keeps derived files (joined weights, converted models): ``$HANLIN_CACHE`` or ``~/.cache/hanlin``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    root = os.environ.get("HANLIN_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "hanlin"
