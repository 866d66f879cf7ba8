"""`hanlin bench data`: docs/s per block and per pipeline (1 local worker as the baseline, N local workers, N on
Ray, same input), and MinHash near-dedup quality on planted near-duplicates beside datasketch's MinHashLSH.

The corpus is text nobody here wrote and every machine has: the Python standard library's source files and the
installed packages' METADATA descriptions.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import random
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from hanlin.bench import BenchTable
from hanlin.plugins.data.document import Block, Document, TaskContext
from hanlin.plugins.data.minhash import MinHashDedup, MinHasher, optimal_bands, shingles


def corpus(limit: int) -> list[Document]:
    """Package descriptions first, then stdlib source files (sorted), up to ``limit`` documents."""
    docs: list[Document] = []
    seen: set[str] = set()
    for dist in sorted(importlib.metadata.distributions(), key=lambda d: (d.metadata.get("Name") or "").lower()):
        name = dist.metadata.get("Name") or ""
        text = dist.metadata.get_payload() or dist.metadata.get("Description") or ""  # type: ignore[attr-defined]
        if len(text.split()) >= 50 and name.lower() not in seen:
            seen.add(name.lower())
            docs.append(Document(f"pkg/{name.lower()}", text, {"source": f"METADATA of {name}"}))
    stdlib = Path(os.__file__).parent
    for path in sorted(stdlib.rglob("*.py")):
        if len(docs) >= limit:
            break
        if "site-packages" in path.parts or "test" in path.parts:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if len(text.split()) >= 50:
            docs.append(Document(f"py/{path.relative_to(stdlib)}", text, {"source": str(path)}))
    return docs[:limit]


def _copy(docs: list[Document]) -> list[Document]:
    return [Document(d.id, d.text, dict(d.metadata)) for d in docs]


def _time_block(block: Block, docs: list[Document], tmp: Path) -> tuple[float, int]:
    block.open(TaskContext(0, tmp))
    start = time.perf_counter()
    n = sum(1 for _ in block(docs))
    block.commit()
    return time.perf_counter() - start, n


def block_table(docs: list[Document], tmp: Path) -> BenchTable:
    from hanlin.plugins.data.cleaners import BoilerplateCleaner, FtfyCleaner, WhitespaceCleaner
    from hanlin.plugins.data.dedup_exact import ExactDedup
    from hanlin.plugins.data.filters import GopherFilter, LanguageFilter, LengthFilter
    from hanlin.plugins.data.pii import PiiMasker

    mb = sum(len(d.text.encode()) for d in docs) / 1e6
    table = BenchTable(f"data blocks, one process, {len(docs)} docs ({mb:.1f} MB: package descriptions + stdlib "
                       "source)", ["block", "docs/s", "MB/s", "docs out"])
    from hanlin.plugins.data.filters import _identifier

    _identifier()  # load langid's model outside the timing
    blocks: list[Block] = [FtfyCleaner(), WhitespaceCleaner(), BoilerplateCleaner(), LengthFilter(min_chars=200),
                           LanguageFilter(languages=["en"], min_score=0.0), GopherFilter(), PiiMasker()]
    for block in blocks:
        seconds, out = _time_block(block, _copy(docs), tmp)
        table.rows.append([block.name, round(len(docs) / seconds), round(mb / seconds, 2), out])
    for block in (ExactDedup(), MinHashDedup()):
        start = time.perf_counter()
        keys = [block.key(d) for d in docs]
        block.resolve([d.id for d in docs], keys)
        seconds = time.perf_counter() - start
        table.rows.append([f"{block.name} (key+resolve)", round(len(docs) / seconds), round(mb / seconds, 2),
                           len(docs) - len(block.resolve([d.id for d in docs], keys))])
    # MinHash signatures beside datasketch's MinHash on the same shingles (update_batch, 128 permutations)
    from datasketch import MinHash

    hasher = MinHasher(128, 5, 1)
    start = time.perf_counter()
    for d in docs:
        hasher.signature(d.text)
    ours = time.perf_counter() - start
    start = time.perf_counter()
    for d in docs:
        MinHash(num_perm=128).update_batch([g.encode() for g in shingles(d.text, 5)])
    theirs = time.perf_counter() - start
    table.rows.append(["minhash signature (hanlin)", round(len(docs) / ours), round(mb / ours, 2), len(docs)])
    table.rows.append(["minhash signature (datasketch)", round(len(docs) / theirs), round(mb / theirs, 2), len(docs)])
    table.notes.append(f"MinHash signatures from text (shingling included in both): hanlin / datasketch = "
                       f"{theirs / ours:.2f}x the speed")
    return table


PIPELINE = """\
output: {out}
blocks:
  - jsonl: {{paths: {inputs}}}
  - ftfy
  - whitespace
  - length: {{min_chars: 200}}
  - language: {{languages: [en], min_score: 0.0}}
  - exact_dedup
  - minhash: {{threshold: 0.8}}
  - pii
  - write_jsonl: {{path: clean}}
"""


def pipeline_table(docs: list[Document], tmp: Path, workers: int, ray: bool) -> BenchTable:
    from hanlin.plugins.data.pipeline import Pipeline

    inputs = tmp / "shards"
    inputs.mkdir()
    shards = max(4, 2 * workers)
    for s in range(shards):
        with open(inputs / f"shard-{s:03d}.jsonl", "w", encoding="utf-8") as fh:
            for d in docs[s::shards]:
                fh.write(json.dumps({"id": d.id, "text": d.text}) + "\n")
    table = BenchTable(f"whole pipeline (9 blocks, {shards} shards, {len(docs)} docs), same input",
                       ["executor", "workers", "seconds", "docs/s", "vs 1 local worker", "docs out"])
    runs = [("local", 1), ("local", workers)] + ([("ray", workers)] if ray else [])
    base = None
    outputs = []
    for executor, w in runs:
        run_dir = tmp / f"run-{executor}-{w}"
        path = tmp / f"{executor}-{w}.yaml"
        path.write_text(PIPELINE.format(out=run_dir, inputs=inputs))
        pipe = Pipeline.from_yaml(path)
        start = time.perf_counter()
        report = pipe.run(workers=w, executor=executor)
        seconds = time.perf_counter() - start
        base = base or seconds
        outputs.append({p.name: p.read_bytes() for p in sorted((run_dir / "clean").glob("*.jsonl"))})
        table.rows.append([executor, w, round(seconds, 2), round(len(docs) / seconds), round(base / seconds, 2),
                           report["docs_out"]])
    table.notes.append(_compare_outputs(outputs, [f"{e} x{w}" for e, w in runs]))
    table.notes.append("seconds include starting the workers (and Ray itself) and langid's model load per worker")
    return table


def _compare_outputs(outputs: list[dict[str, bytes]], names: list[str]) -> str:
    """'identical ...' or where the first run that differs from the first one differs (file, line, document id)."""
    for name, out in zip(names[1:], outputs[1:]):
        if out == outputs[0]:
            continue
        for part in sorted(set(out) | set(outputs[0])):
            a, b = outputs[0].get(part, b"").splitlines(), out.get(part, b"").splitlines()
            for n, (x, y) in enumerate(zip(a + [b""] * len(b), b + [b""] * len(a)), 1):
                if x != y:
                    ids = [json.loads(v)["id"] if v else None for v in (x, y)]
                    return f"OUTPUTS DIFFER: {name} vs {names[0]} at {part}:{n} (ids {ids[0]} / {ids[1]})"
    return f"identical output shards in all {len(outputs)} runs"


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def planted_set(docs: list[Document], near_dups: int, threshold: float, seed: int = 0
                ) -> tuple[list[Document], set[str], list[float]]:
    """Base documents with no near-duplicate among themselves (pairs at Jaccard >= 0.5 thinned out, checked
    exactly), then ``near_dups`` copies with words replaced until their true Jaccard to the original is in
    [threshold, 0.95]. Returns (documents, ids of the planted copies, their true Jaccards)."""
    sets = {d.id: shingles(d.text, 5) for d in docs}
    block = MinHashDedup(threshold=0.4, verify=False)
    buckets: dict[tuple[int, int], list[str]] = {}
    for d in docs:
        for band, h in enumerate(block.key(d)[0].tolist()):
            buckets.setdefault((band, h), []).append(d.id)
    removed: set[str] = set()
    pairs = {(a, b) for ids in buckets.values() for k, a in enumerate(sorted(ids)) for b in sorted(ids)[k + 1:]}
    for a, b in sorted(pairs):  # every candidate pair checked exactly; the larger id of a similar pair goes
        if _jaccard(sets[a], sets[b]) >= 0.5:
            removed.add(b)
    base = [d for d in docs if d.id not in removed and len(sets[d.id]) >= 60]
    rng = random.Random(seed)
    planted: list[Document] = []
    jaccards: list[float] = []
    vocab = [w for d in base[:50] for w in d.text.split()[:200]]
    while len(planted) < near_dups:
        orig = rng.choice(base)
        words = orig.text.split()
        target = rng.uniform(threshold, 0.95)
        copy = words[:]
        for _ in range(len(words)):
            copy[rng.randrange(len(copy))] = rng.choice(vocab)
            j = _jaccard(sets[orig.id], shingles(" ".join(copy), 5))
            if j <= target:
                break
        if threshold <= j < 0.96:
            planted.append(Document(f"zz-copy-{len(planted):05d}-of-{orig.id}", " ".join(copy)))
            jaccards.append(j)
    return base + planted, {d.id for d in planted}, jaccards


def quality_table(docs: list[Document], near_dups: int, threshold: float = 0.8) -> BenchTable:
    from datasketch import MinHash, MinHashLSH

    data, truth, jaccards = planted_set(docs, near_dups, threshold)
    table = BenchTable(f"MinHash near-dedup at Jaccard {threshold}: {len(data) - len(truth)} distinct docs + "
                       f"{len(truth)} planted copies (true Jaccard {min(jaccards):.2f}..{max(jaccards):.2f}, "
                       f"mean {sum(jaccards) / len(jaccards):.2f})",
                       ["method", "bands x rows", "seconds", "removed", "recall", "precision"],
                       target="recall >= 0.95 and precision >= 0.99 (hanlin)")

    def score(removed: set[str]) -> tuple[float, float]:
        hit = len(removed & truth)
        return hit / len(truth), (hit / len(removed) if removed else 1.0)

    for name, verify, weights in (("hanlin (default: verified)", True, (0.05, 0.95)),
                                  ("hanlin, LSH only", False, (0.05, 0.95)),
                                  ("hanlin, LSH only, 0.5/0.5 bands", False, (0.5, 0.5))):
        start = time.perf_counter()
        block = MinHashDedup(threshold=threshold, verify=verify, fp_weight=weights[0], fn_weight=weights[1])
        keys = [block.key(d) for d in data]
        removed = set(block.resolve([d.id for d in data], keys))
        seconds = time.perf_counter() - start
        recall, precision = score(removed)
        table.rows.append([name, f"{block.bands}x{block.rows}", round(seconds, 2), len(removed), round(recall, 4),
                           round(precision, 4)])
        if verify:
            table.met = recall >= 0.95 and precision >= 0.99
    for label, weights in (("datasketch MinHashLSH", (0.5, 0.5)), ("datasketch MinHashLSH, weights 0.05/0.95",
                                                                    (0.05, 0.95))):
        start = time.perf_counter()
        lsh = MinHashLSH(threshold=threshold, num_perm=128, weights=weights)
        removed = set()
        for d in sorted(data, key=lambda x: x.id):  # the same keep-the-smallest-id rule
            m = MinHash(num_perm=128)
            m.update_batch([g.encode() for g in shingles(d.text, 5)])
            if lsh.query(m):
                removed.add(d.id)
            else:
                lsh.insert(d.id, m)
        seconds = time.perf_counter() - start
        recall, precision = score(removed)
        table.rows.append([label, f"{lsh.b}x{lsh.r}", round(seconds, 2), len(removed), round(recall, 4),
                           round(precision, 4)])
    table.notes.append(f"bands x rows from the threshold: hanlin weighs false negatives 0.95 -> "
                       f"{optimal_bands(threshold, 128, 0.05, 0.95)}; with datasketch's 0.5/0.5 -> "
                       f"{optimal_bands(threshold, 128)}; verification joins candidates whose signatures agree on "
                       f">= {threshold - 0.05:.2f} of the permutations")
    return table


def run_bench(docs: int = 2000, workers: int = 2, ray: bool = True, near_dups: int = 300) -> Iterator[BenchTable]:
    items = corpus(docs)
    with tempfile.TemporaryDirectory(prefix="hanlin-bench-data-") as tmp:
        yield block_table(items, Path(tmp))
        yield pipeline_table(items, Path(tmp), workers, ray)
    yield quality_table(items, near_dups)
