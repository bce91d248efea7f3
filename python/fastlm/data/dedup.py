"""Deduplication: exact (128-bit hash), MinHash + LSH and SimHash near-duplicates, native and parallel.

Normalization (version 1, csrc/dedup/normalize.h): strict UTF-8 decode (invalid bytes kept as word
characters), ASCII non-alphanumerics and Unicode punctuation/space blocks are separators, words are
lowercased (ASCII, Latin-1, Greek, Cyrillic) and joined by one space. Shingles are word n-grams of
that text; a document with fewer than n words has one shingle (all its words); an empty document
has none and is never a near-duplicate. Texts may be ``str`` or ``bytes`` (bytes need not be valid
UTF-8). Exact duplicates are documents with equal normalized text (so case, punctuation and
spacing differences do not count), compared by a 128-bit murmur3 hash.

Clusters: union-find over verified pairs; every result has the same shape (DedupResult). The kept
document of a cluster is the first (lowest index) by default, or with ``keep="longest"`` the one
with the largest ``len()`` (characters for str, bytes for bytes; ties: lowest index).

MinHash hash modes (``MinHasher(hash=...)``):
- ``"fast"`` (default): shingle x = the low 32 bits of murmur3 x64-128 (a 32-bit shingle hash,
  as datasketch's sha1_hash32; distinct shingles collide with probability ~2^-32 per pair);
  h_k(x) = (a_k*x + b_k) mod p, p = 2^61-1, computed exactly; (a_k, b_k) drawn from
  splitmix64(seed) as a_0, b_0, a_1, ...: a = 1 + s mod (p-1), b = s mod p. The family is pairwise
  independent on Z_p and so on [0, 2^32) inside it. Different values from datasketch. Before
  dedup file format 2 x was the full 64-bit hash (signatures differ; old staged files are refused).
- ``"datasketch"``: bit for bit ``datasketch.MinHash(num_perm, seed)`` (datasketch >= 2.0 default
  scheme "affine32": sha1_hash32, fmix32, uint32 a*x+b with a odd) updated with the shingle bytes.
- ``"datasketch-legacy"``: bit for bit datasketch < 2.0 (``scheme="legacy"``): sha1_hash32 and
  ``(a*x + b) % (2^61-1) & (2^32-1)`` with numpy's uint64 wraparound of a*x + b.
Exact Jaccard checks (``minhash_dedup(verify=...)``) compare sets of 32-bit shingle hashes: in
every mode the ones MinHash hashed (kept while it runs; sha1_hash32 in the datasketch modes).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Sequence

import numpy as np

from fastlm import _C
from fastlm.data.records import check_num_threads

__all__ = [
    "NORMALIZATION_VERSION", "DedupResult", "MinHasher", "exact_hashes", "exact_dedup",
    "optimal_bands", "recall_bands", "minhash_dedup", "simhash", "simhash_and_counts",
    "simhash_dedup", "normalize", "MAX_AUTO_BANDS_PERM",
]

NORMALIZATION_VERSION: int = _C.DEDUP_NORMALIZATION_VERSION
_P61 = (1 << 61) - 1
_M64 = (1 << 64) - 1
_MODES = {"fast": 0, "datasketch": 1, "datasketch-legacy": 2}
_VERIFY = {"signature": 0, "jaccard": 1, "auto": 2}
MAX_AUTO_BANDS_PERM = 8192  # largest num_perm whose (bands, rows) optimal_bands will search


def _texts(texts) -> list:
    """A list of str/bytes (the native side borrows their buffers)."""
    if isinstance(texts, (str, bytes)):
        raise TypeError("texts must be a sequence of documents, not a single str/bytes")
    texts = texts if isinstance(texts, list) else list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, (str, bytes)):
            raise TypeError(f"document {i} is {type(t).__name__}, expected str or bytes")
    return texts


def _lengths(texts: list) -> np.ndarray:
    return np.fromiter((len(t) for t in texts), dtype=np.uint64, count=len(texts))


def normalize(text: str | bytes) -> bytes:
    """The dedup-normalized text (UTF-8 bytes) that exact hashes and shingles are computed on.

    >>> normalize("Hello, World!")
    b'hello world'
    """
    if not isinstance(text, (str, bytes)):
        raise TypeError(f"text is {type(text).__name__}, expected str or bytes")
    return _C.dedup_normalize(text)


def exact_hashes(texts: Sequence[str | bytes], *, num_threads: int = 0) -> np.ndarray:
    """128-bit murmur3 hashes of the normalized texts, shape (n, 2) uint64 (lo, hi).

    >>> h = exact_hashes(["A b.", "a  B"]); bool((h[0] == h[1]).all())
    True
    """
    return _C.dedup_exact_hashes(_texts(texts), check_num_threads(num_threads))


# ---------------------------------------------------------------------------------------- results


@dataclass
class DedupResult:
    """Outcome of one dedup pass over n documents (indices are positions in the input)."""

    method: str  # "exact", "minhash" or "simhash"
    cluster: np.ndarray  # (n,) int64: smallest index of the document's cluster (itself if unique)
    duplicate_of: np.ndarray  # (n,) int64: the kept document of its cluster, or -1 if kept
    stats: dict = field(default_factory=dict)  # native counters: buckets, compared, merged, ...

    @property
    def keep(self) -> np.ndarray:
        """(n,) bool mask of the documents to keep."""
        return self.duplicate_of < 0

    @property
    def clusters(self) -> list[list[int]]:
        """Clusters of size >= 2 as sorted index lists, ordered by their smallest index."""
        order = np.argsort(self.cluster, kind="stable")
        ids = self.cluster[order]
        bounds = np.flatnonzero(np.diff(ids)) + 1
        return [g.tolist() for g in np.split(order, bounds) if len(g) >= 2]

    def largest(self, k: int = 5) -> list[list[int]]:
        """The k largest clusters (ties: smaller first index first), for reports and samples.

        >>> exact_dedup(["a", "b", "A", "a!", "b"]).largest(1)
        [[0, 2, 3]]
        """
        return sorted(self.clusters, key=lambda c: (-len(c), c[0]))[:k]

    @property
    def counts(self) -> dict:
        """documents, kept, removed, clusters (size >= 2): kept + removed == documents."""
        n = len(self.cluster)
        removed = int(np.count_nonzero(self.duplicate_of >= 0))
        sizes = np.bincount(self.cluster, minlength=n) if n else np.zeros(0, np.int64)
        return {"documents": n, "kept": n - removed, "removed": removed,
                "clusters": int(np.count_nonzero(sizes >= 2))}


def _check_max_compare(max_compare) -> None:
    if isinstance(max_compare, bool) or not isinstance(max_compare, (int, np.integer)) or max_compare < 1:
        raise ValueError(f"max_compare must be an int >= 1, got {max_compare!r}")


def _band_pair(bands, num_perm: int) -> tuple[int, int]:
    """(bands, rows) as given by the caller, checked: two ints >= 1 using at most num_perm slots."""
    try:
        b, r = bands
    except (TypeError, ValueError):
        raise ValueError(f"bands must be a pair (bands, rows), got {bands!r}") from None
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (b, r)):
        raise ValueError(f"bands must be a pair of ints (bands, rows), got {bands!r}")
    if b < 1 or r < 1 or b * r > num_perm:
        raise ValueError(f"bands={b} x rows={r} must be >= 1 and use at most num_perm={num_perm}")
    return int(b), int(r)


def _keep_longest(keep: str) -> bool:
    if keep not in ("first", "longest"):
        raise ValueError(f"keep must be 'first' or 'longest', got {keep!r}")
    return keep == "longest"


def _clusters_from_groups(group: np.ndarray, valid: np.ndarray, lengths: np.ndarray,
                          keep_longest: bool) -> tuple[np.ndarray, np.ndarray]:
    """Clusters of valid documents with equal `group` ids, with the native finalize's rules."""
    n = len(group)
    cluster = np.arange(n, dtype=np.int64)
    idx = np.flatnonzero(valid)
    if len(idx):
        _, first, inv = np.unique(group[idx], return_index=True, return_inverse=True)
        cluster[idx] = idx[first][inv.ravel()]  # np.unique's first index is the smallest
    kept = cluster.copy()  # per member: its cluster's kept doc (smallest index by default)
    if keep_longest and len(idx):
        # Sort members by (cluster, -length, index): the first of each cluster is kept.
        order = idx[np.lexsort((idx, -lengths[idx].astype(np.float64), cluster[idx]))]
        starts = np.r_[True, cluster[order][1:] != cluster[order][:-1]]
        winner = np.repeat(order[starts], np.diff(np.r_[np.flatnonzero(starts), len(order)]))
        kept[order] = winner
    duplicate_of = np.where(kept == np.arange(n), -1, kept).astype(np.int64)
    return cluster, duplicate_of


def exact_dedup(texts: Sequence[str | bytes], *, keep: str = "first",
                num_threads: int = 0) -> DedupResult:
    """Exact duplicates: documents whose normalized texts have the same 128-bit hash.

    Documents that normalize to nothing (empty, only punctuation) are never duplicates.

    >>> exact_dedup(["Hi there", "hi, THERE!", "other"]).duplicate_of.tolist()
    [-1, 0, -1]
    """
    texts = _texts(texts)
    h = exact_hashes(texts, num_threads=num_threads)
    valid = np.fromiter((len(t) > 0 for t in texts), bool, len(texts))
    empty = exact_hashes([""])[0]
    valid &= ~((h[:, 0] == empty[0]) & (h[:, 1] == empty[1]))
    group = h.view(np.dtype((np.void, 16))).ravel() if len(h) else np.zeros(0, "V16")
    cluster, dup = _clusters_from_groups(group, valid, _lengths(texts), _keep_longest(keep))
    return DedupResult("exact", cluster, dup)


# ---------------------------------------------------------------------------------------- MinHash


def _splitmix64(seed: int, count: int) -> list[int]:
    out, state = [], seed & _M64
    for _ in range(count):
        state = (state + 0x9E3779B97F4A7C15) & _M64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
        out.append(z ^ (z >> 31))
    return out


@lru_cache(maxsize=32)
def _permutations(num_perm: int, seed: int, hash: str) -> tuple[np.ndarray, np.ndarray]:
    if hash == "fast":
        s = _splitmix64(seed, 2 * num_perm)
        a = [1 + x % (_P61 - 1) for x in s[0::2]]
        b = [x % _P61 for x in s[1::2]]
        return np.array(a, np.uint64), np.array(b, np.uint64)
    gen = np.random.RandomState(seed)  # drawn exactly as datasketch's MinHash._init_permutations
    if hash == "datasketch":
        a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
        b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
        return a.astype(np.uint64), b.astype(np.uint64)
    ab = np.array([(gen.randint(1, _P61, dtype=np.uint64), gen.randint(0, _P61, dtype=np.uint64))
                   for _ in range(num_perm)], dtype=np.uint64)
    return np.ascontiguousarray(ab[:, 0]), np.ascontiguousarray(ab[:, 1])


class MinHasher:
    """MinHash signatures of word n-gram shingles (see the module docstring for the hash modes).

    >>> mh = MinHasher(num_perm=64, ngram=3)
    >>> sig = mh.signatures(["a b c d e", "a b c d f", ""])
    >>> sig.shape, float((sig[0] == sig[1]).mean()) > 0.2
    ((3, 64), True)
    """

    def __init__(self, num_perm: int = 128, ngram: int = 5, seed: int = 1, hash: str = "fast"):
        if hash not in _MODES:
            raise ValueError(f"hash must be one of {sorted(_MODES)}, got {hash!r}")
        if not 1 <= num_perm <= 1 << 16:
            raise ValueError(f"num_perm must be in [1, 65536], got {num_perm}")
        if ngram < 1:
            raise ValueError(f"ngram must be >= 1, got {ngram}")
        if hash != "fast" and not 0 <= seed < 1 << 32:
            raise ValueError(f"datasketch seeds are numpy RandomState seeds in [0, 2^32), got {seed}")
        if hash == "fast" and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
                               or not 0 <= seed < 1 << 64):  # else seed and seed mod 2^64 would agree
            raise ValueError(f"seed must be in [0, 2^64), got {seed}")
        self.num_perm, self.ngram, self.seed, self.hash = num_perm, ngram, seed, hash
        self.a, self.b = _permutations(num_perm, seed, hash)

    def params(self) -> dict:
        """The parameters that make signatures comparable (stored in staged files)."""
        return {"method": "minhash", "num_perm": self.num_perm, "ngram": self.ngram,
                "seed": self.seed, "hash": self.hash, "normalization": NORMALIZATION_VERSION}

    def signatures_and_counts(self, texts: Sequence[str | bytes], *,
                              num_threads: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(signatures (n, num_perm) uint64, shingle counts (n,) uint64; 0 = empty document)."""
        return _C.dedup_minhash(_texts(texts), self.a, self.b, self.ngram, _MODES[self.hash],
                                check_num_threads(num_threads))

    def _signatures_and_hashes(self, texts: list, num_threads: int):
        """(signatures, counts, the kept 32-bit shingle hashes for exact checks, native)."""
        return _C.dedup_minhash(texts, self.a, self.b, self.ngram, _MODES[self.hash], num_threads,
                                keep=True)

    def signatures(self, texts: Sequence[str | bytes], *, num_threads: int = 0) -> np.ndarray:
        """Signatures, shape (n, num_perm) uint64. Empty documents: all slots at the max value.

        >>> MinHasher(num_perm=4).signatures(["x"]).shape
        (1, 4)
        """
        return self.signatures_and_counts(texts, num_threads=num_threads)[0]


def optimal_bands(threshold: float, num_perm: int, *,
                  weights: tuple[float, float] = (0.5, 0.5)) -> tuple[int, int]:
    """(bands, rows) minimizing fp_weight * FP area + fn_weight * FN area, as datasketch's
    ``MinHashLSH`` does (``lsh._optimal_param``); integrals by Gauss-Legendre quadrature, exact
    for these polynomials (degree <= num_perm) up to rounding. The search costs
    O(num_perm^2 log num_perm), so num_perm > MAX_AUTO_BANDS_PERM (8192) is refused: pass bands.

    >>> optimal_bands(0.8, 128)
    (9, 13)
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    if num_perm < 1:
        raise ValueError(f"num_perm must be >= 1, got {num_perm}")
    if num_perm > MAX_AUTO_BANDS_PERM:
        # The search costs O(num_perm^2 log num_perm): ~75 s at 8192, hours (and a companion
        # matrix of 8 GiB for the quadrature nodes) at 65536.
        raise ValueError(f"choosing bands for num_perm={num_perm} is too costly (at most "
                         f"{MAX_AUTO_BANDS_PERM}): pass bands=(bands, rows) explicitly")
    return _optimal_bands(float(threshold), int(num_perm), float(weights[0]), float(weights[1]))


@lru_cache(maxsize=256)
def _optimal_bands(threshold: float, num_perm: int, fpw: float, fnw: float) -> tuple[int, int]:
    # Gauss-Legendre with m nodes is exact for degree 2m-1; the integrands have degree b*r.
    x, w = np.polynomial.legendre.leggauss(max(64, num_perm // 2 + 2))
    pairs = [(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)]
    bs = np.array([p[0] for p in pairs], np.float64)
    rs = np.array([p[1] for p in pairs], np.float64)

    def area(lo, hi, miss, k0, k1):  # integral over [lo, hi] of P(candidate) (or of 1 - it if
        s = (0.5 * (hi - lo) * x + 0.5 * (hi + lo))[:, None]  # miss) for pairs k0 <= k < k1
        q = (1.0 - s ** rs[k0:k1]) ** bs[k0:k1]
        return 0.5 * (hi - lo) * (w @ (q if miss else 1.0 - q))

    # In chunks of pairs, so the (nodes x pairs) matrices stay ~32 MB whatever num_perm is.
    step = max(1, (1 << 22) // len(x))
    err = np.concatenate([area(0.0, threshold, False, k, k + step) * fpw
                          + area(threshold, 1.0, True, k, k + step) * fnw
                          for k in range(0, len(pairs), step)])
    opt = pairs[int(np.argmin(err))]  # first minimum, as datasketch's strict "<" scan
    return opt


def recall_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """The default banding of minhash_dedup: banded for recall, then verified.

    datasketch's balanced banding for 0.8 at 128 perms, (9, 13), makes a pair a candidate with
    probability 1 - (1 - J^13)^9: 0.40 at J = 0.80, 0.51 at 0.82, 0.69 at 0.85, so pairs just above
    the threshold are lost before any check. We instead take the optimum for threshold - 0.1 with
    weights (0.05, 0.95) -> (21, 6) at 0.8/128: P(candidate) = 0.998 at J = 0.8, 0.93 at 0.7, 0.28
    at 0.5, 0.015 at 0.3. The extra candidates cost one verification each (num_perm compares),
    cheap next to hashing (on the benchmark corpus clustering is ~5% of the end-to-end time).

    >>> recall_bands(0.8, 128)
    (21, 6)
    """
    return optimal_bands(max(threshold - 0.1, 0.01), num_perm, weights=(0.05, 0.95))


def minhash_dedup(texts: Sequence[str | bytes], *, threshold: float = 0.8, num_perm: int = 128,
                  ngram: int = 5, seed: int = 1, hash: str = "fast",
                  bands: tuple[int, int] | None = None, verify: str = "auto", margin: float = 0.08,
                  keep: str = "first", max_compare: int = 64, num_threads: int = 0) -> DedupResult:
    """Near-duplicates by MinHash + LSH: signatures, band buckets, verification, union-find.

    bands: (bands, rows); default recall_bands(threshold, num_perm). verify: "signature" (estimate
    = fraction of equal slots >= threshold), "jaccard" (exact Jaccard of the candidates' sets of
    32-bit shingle hashes, kept from signature hashing: 4 bytes per shingle while it runs),
    or "auto" (default): the estimate, except candidates whose estimate is within `margin` of the
    threshold get the exact Jaccard. Why "auto": with 128 perms the estimate's standard deviation
    at J = 0.8 is sqrt(0.8*0.2/128) = 0.035, so a pure estimate check drops ~40% of pairs at
    J = 0.81 and admits as many at 0.79. On the benchmark corpus (near-copies with 1-5% edited
    words, so true pairs crowd the threshold) recall/precision of same-cluster pairs vs exact
    J >= 0.8 are 0.86/0.86 with "signature" and 0.99/1.00 with "auto" (margin 0.08 ~ 2.3 sd). The
    cost: there ~70% of the verified candidates are borderline; their docs' kept hashes are sorted
    (in parallel, once per doc) and merged (in parallel for the pairs the bucket scan will likely
    check): auto takes 8-10% longer than "signature" there (1 and 2 threads); corpora with few
    borderline pairs barely pay it.
    Pure "signature" is what staged files use (no texts there); see fastlm.data.dedup_files.

    >>> docs = ["the quick brown fox jumps over the lazy dog " * 3, "unrelated text here"]
    >>> r = minhash_dedup(docs + [docs[0] + " again"]); r.duplicate_of.tolist()
    [-1, -1, 0]
    """
    texts = _texts(texts)
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if verify not in _VERIFY:
        raise ValueError(f"verify must be one of {sorted(_VERIFY)}, got {verify!r}")
    if not 0.0 <= margin <= 1.0:  # NaN included: it would silently mean signature-only checks
        raise ValueError(f"margin must be in [0, 1], got {margin!r}")
    num_threads = check_num_threads(num_threads)
    mh = MinHasher(num_perm=num_perm, ngram=ngram, seed=seed, hash=hash)
    _check_max_compare(max_compare)
    b, r = (_band_pair(bands, num_perm) if bands is not None
            else recall_bands(min(threshold, 0.99), num_perm))
    kept = None  # exact checks use the shingle hashes kept from hashing (no re-shingling)
    if verify == "signature":
        sig, counts = mh.signatures_and_counts(texts, num_threads=num_threads)
    else:
        sig, counts, kept = mh._signatures_and_hashes(texts, num_threads)
    keys = _C.dedup_band_keys(sig, b, r, num_threads)
    cluster, dup, stats = _C.dedup_lsh_cluster(
        keys, sig, counts, _lengths(texts), threshold, _VERIFY[verify], margin, kept, ngram,
        max_compare, _keep_longest(keep), num_threads)
    stats.update(bands=b, rows=r)
    return DedupResult("minhash", cluster, dup, stats)


# ---------------------------------------------------------------------------------------- SimHash


def simhash_and_counts(texts: Sequence[str | bytes], *, ngram: int = 3,
                       num_threads: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(fingerprints (n,) uint64, feature occurrences (n,) uint64; 0 = empty document)."""
    if ngram < 1:
        raise ValueError(f"ngram must be >= 1, got {ngram}")
    return _C.dedup_simhash(_texts(texts), ngram, check_num_threads(num_threads))


def simhash(texts: Sequence[str | bytes], *, ngram: int = 3, num_threads: int = 0) -> np.ndarray:
    """64-bit SimHash fingerprints: word n-gram features (default 3-grams, the same shingles as
    MinHash) weighted by their counts, each hashed with murmur3 (low 64 bits); bit b is set iff the
    weighted vote of the features' bit b is positive. Empty documents get 0.

    >>> fp = simhash(["a b c d e f", "a b c d e g"]); int(bin(int(fp[0] ^ fp[1])).count("1")) < 40
    True
    """
    return simhash_and_counts(texts, ngram=ngram, num_threads=num_threads)[0]


def simhash_dedup(texts: Sequence[str | bytes], *, k: int = 3, ngram: int = 3, keep: str = "first",
                  max_compare: int = 64, num_threads: int = 0) -> DedupResult:
    """Near-duplicates by SimHash: fingerprints within Hamming distance k (default 3, the usual
    choice for 64-bit SimHash, Manku et al. 2007), found with the permuted-blocks index (k+1
    blocks, pigeonhole), clustered with union-find.

    >>> r = simhash_dedup(["one two three four five six", "one two three four five six", ""])
    >>> r.duplicate_of.tolist()
    [-1, 0, -1]
    """
    texts = _texts(texts)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k < 64:
        raise ValueError(f"k must be an int in [0, 63], got {k!r}")
    _check_max_compare(max_compare)
    num_threads = check_num_threads(num_threads)
    fps, counts = simhash_and_counts(texts, ngram=ngram, num_threads=num_threads)
    cluster, dup, stats = _C.dedup_simhash_cluster(fps, counts, _lengths(texts), k, max_compare,
                                                   _keep_longest(keep), num_threads)
    return DedupResult("simhash", cluster, dup, stats)
