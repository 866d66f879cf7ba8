"""The prediction cache: every model output on disk (sqlite under ``hanlin.paths.cache_dir()/eval``) as soon as it
exists, keyed by a hash of the model's identity (``identity.py``), the exact prompt and the generation parameters.

An interrupted run therefore resumes where it stopped, and a re-run after changing one dataset, the shot count or
``--max-tokens`` recomputes only the prompts that changed. Likelihood scores live in the same store under keys that
include their mode, so the two never mix.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from hanlin.paths import cache_dir
from hanlin.plugins.evaluators.base import Prompt


class PredictionCache:
    """Model outputs on disk, keyed by a hash of (model identity, prompt, parameters). Safe across threads."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or cache_dir() / "eval" / "predictions.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.DatabaseError:
            pass  # some filesystems refuse WAL; the default journal still works
        self._db.execute("CREATE TABLE IF NOT EXISTS predictions (key TEXT PRIMARY KEY, record TEXT NOT NULL, "
                         "created REAL NOT NULL)")
        self._db.commit()

    @staticmethod
    def key(model: dict[str, Any], prompt: Prompt, params: dict[str, Any]) -> str:
        blob = json.dumps({"model": model, "prompt": prompt, "params": params}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT record FROM predictions WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, record: dict[str, Any]) -> None:
        with self._lock:  # committed at once: an interruption loses at most the item in flight
            self._db.execute("INSERT OR REPLACE INTO predictions VALUES (?, ?, ?)",
                             (key, json.dumps(record, ensure_ascii=False), time.time()))
            self._db.commit()

    def close(self) -> None:
        with self._lock:
            self._db.close()
