"""MinHash near-dedup: word-shingle sets, ``num_perm`` min-hashes, LSH bands, union-find clusters.

Bands and rows are chosen from the target Jaccard threshold (the split of ``num_perm`` that minimises the weighted
area of false positives below the threshold and false negatives above it, as datasketch does). Every document's
band hashes are computed in parallel; clusters are then resolved once, over documents sorted by id, and each
cluster keeps its smallest id: the same documents survive whatever the shard order or worker count (the hash-order
bugs of other pipelines came from keeping "the first one seen"). Candidates are verified by the signatures'
estimated Jaccard (``verify``), which removes LSH's chance collisions, so the bands can be chosen for recall.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from hanlin.errors import ConfigurationError
from hanlin.plugins.data.document import Document, GlobalBlock

_WORD = re.compile(r"\w+", re.UNICODE)


def _integrate(f, a: float, b: float, steps: int = 200) -> float:  # noqa: ANN001 - a vectorised numpy function
    x = np.linspace(a, b, steps + 1)
    return float(np.trapezoid(f(x), x)) if hasattr(np, "trapezoid") else float(np.trapz(f(x), x))


@lru_cache(maxsize=64)
def optimal_bands(threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) with bands*rows <= num_perm minimising fp_weight*FP + fn_weight*FN, where FP is the area under
    the LSH S-curve below ``threshold`` and FN the area above it the curve misses."""
    if not 0.0 < threshold < 1.0:
        raise ConfigurationError(f"threshold must be between 0 and 1 (a Jaccard similarity), got {threshold}")
    best, best_err = (1, num_perm), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = _integrate(lambda s: 1 - (1 - s ** r) ** b, 0.0, threshold)
            fn = _integrate(lambda s: (1 - s ** r) ** b, threshold, 1.0)
            err = fp_weight * fp + fn_weight * fn
            if err < best_err - 1e-12:
                best, best_err = (b, r), err
    return best


def shingles(text: str, n: int) -> set[str]:
    """Lower-cased word n-grams (a text shorter than n words is one shingle)."""
    words = _WORD.findall(text.lower())
    if len(words) <= n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i: i + n]) for i in range(len(words) - n + 1)}


_FNV = np.uint64(0x100000001B3)


def shingle_hashes(text: str, n: int) -> np.ndarray:
    """32-bit hashes of the same shingles as ``shingles(text, n)``, unique, computed without building the strings:
    each distinct word hashed once (xxh32, the same in every process), n-grams combined with numpy."""
    import xxhash

    words = _WORD.findall(text.lower())
    if not words:
        return np.zeros(0, dtype=np.uint64)
    table = {w: xxhash.xxh32_intdigest(w.encode("utf-8")) for w in set(words)}
    w = np.fromiter((table[x] for x in words), dtype=np.uint64, count=len(words))
    span = min(n, len(w))
    count = len(w) - span + 1
    h = np.full(count, 0xCBF29CE484222325, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(span):  # FNV-style mixing of the n word hashes, wrapping modulo 2**64
            h = (h ^ w[k:k + count]) * _FNV
        h ^= h >> np.uint64(29)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(32)
    return np.unique(h & np.uint64(0xFFFFFFFF))


@dataclass(frozen=True, slots=True)
class MinHasher:
    """Signatures from ``num_perm`` hashes (the high 32 bits of a*x + b mod 2**64) of 32-bit shingle hashes."""

    num_perm: int = 128
    ngram: int = 5
    seed: int = 1

    @property
    def params(self) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.RandomState(self.seed)
        a = rng.randint(0, 1 << 63, size=self.num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)  # odd
        b = rng.randint(0, 1 << 63, size=self.num_perm, dtype=np.uint64) * np.uint64(2)
        return a, b

    def signature(self, text: str) -> np.ndarray:
        hv = shingle_hashes(text, self.ngram)
        if not len(hv):
            return np.full(self.num_perm, 0xFFFFFFFF, dtype=np.uint32)
        a, b = _params(self.num_perm, self.seed)
        # Multiply-add-shift hashing (Dietzfelbinger): the high 32 bits of a*x + b modulo 2**64, for 32-bit x and
        # random 64-bit a (odd) and b, a strongly universal family, with no division (a mod p costs 3x the rest).
        # (An earlier a*x + b mod 2**61-1 with a < 2**32 stayed nearly monotone in x: every permutation picked about
        # the same minimum and Jaccard was overestimated; the bias test in test_data_blocks guards this.)
        with np.errstate(over="ignore"):
            phv = np.outer(hv, a) + b
        return (phv.min(axis=0) >> np.uint64(32)).astype(np.uint32)


@lru_cache(maxsize=8)
def _params(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    return MinHasher(num_perm, 5, seed).params


def band_hashes(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit hash per band of the signature."""
    import xxhash

    return np.fromiter((xxhash.xxh3_64_intdigest(sig[i * rows:(i + 1) * rows].tobytes()) for i in range(bands)),
                       dtype=np.uint64, count=bands)


class UnionFind:
    """Union-find whose root is always the smallest index: with indices in id order, a cluster's root is the
    document to keep."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        parent = self.parent
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def clusters(ids: list[str], bands: list[np.ndarray], sigs: list[np.ndarray] | None, threshold: float,
             max_bucket_pairs: int = 64) -> dict[str, str]:
    """Map each id to remove to the id kept for its cluster. ``sigs`` (when given) verify each candidate pair by
    its estimated Jaccard; in a bucket larger than ``max_bucket_pairs`` members are compared to its first only."""
    order = sorted(range(len(ids)), key=ids.__getitem__)
    sorted_ids = [ids[i] for i in order]
    band_mat = np.stack([bands[i] for i in order]) if order else np.zeros((0, 0), np.uint64)
    sig_mat = np.stack([sigs[i] for i in order]) if sigs is not None and order else None
    uf = UnionFind(len(order))
    for col in range(band_mat.shape[1] if len(order) else 0):
        buckets: dict[int, list[int]] = {}
        for idx, h in enumerate(band_mat[:, col].tolist()):
            buckets.setdefault(h, []).append(idx)
        for members in buckets.values():
            if len(members) < 2:
                continue
            pairs = ([(x, y) for k, x in enumerate(members) for y in members[k + 1:]]
                     if len(members) <= max_bucket_pairs else [(members[0], y) for y in members[1:]])
            for x, y in pairs:
                if sig_mat is None or float(np.mean(sig_mat[x] == sig_mat[y])) >= threshold:
                    uf.union(x, y)
    return {sorted_ids[i]: sorted_ids[uf.find(i)] for i in range(len(order)) if uf.find(i) != i}


class MinHashDedup(GlobalBlock):
    """Near-dedup at a target Jaccard ``threshold`` over word ``ngram`` shingles; keeps each cluster's smallest id.

    The bands favour recall (false negatives weighted 0.95): at 128 permutations and 0.8 that is 16 bands of 8
    rows, which makes a pair at Jaccard 0.8 a candidate 95% of the time (datasketch's 0.5/0.5 split, 9x13: 40%).
    The extra candidates are then checked: a pair is joined when its signatures agree on at least
    ``threshold - verify_margin`` of the permutations (the margin is ~1.5 standard deviations of that estimate at
    128 permutations, so true pairs just above the threshold are not lost to noise; pairs somewhat below it,
    ~0.75, can be joined too)."""

    name = "minhash"
    label = "near duplicate"

    def __init__(self, threshold: float = 0.8, num_perm: int = 128, ngram: int = 5, seed: int = 1,
                 bands: int | None = None, rows: int | None = None, verify: bool = True,
                 verify_margin: float = 0.05, fp_weight: float = 0.05, fn_weight: float = 0.95) -> None:
        super().__init__()
        if num_perm < 2:
            raise ConfigurationError(f"num_perm must be >= 2, got {num_perm}")
        self.threshold, self.verify, self.verify_margin = threshold, verify, verify_margin
        self.hasher = MinHasher(num_perm, ngram, seed)
        if (bands is None) != (rows is None):
            raise ConfigurationError("give both bands and rows, or neither (they are then chosen from threshold)")
        self.bands, self.rows = (bands, rows) if bands is not None else optimal_bands(threshold, num_perm,
                                                                                     fp_weight, fn_weight)
        if self.bands * self.rows > num_perm:
            raise ConfigurationError(f"bands*rows = {self.bands * self.rows} exceeds num_perm {num_perm}")

    def key(self, doc: Document) -> tuple[np.ndarray, np.ndarray | None]:
        sig = self.hasher.signature(doc.text)
        return band_hashes(sig, self.bands, self.rows), (sig if self.verify else None)

    def resolve(self, ids: list[str], keys: list[tuple[np.ndarray, np.ndarray | None]]) -> dict[str, str]:
        return clusters(ids, [k[0] for k in keys], [k[1] for k in keys] if self.verify else None,
                        self.threshold - self.verify_margin)
