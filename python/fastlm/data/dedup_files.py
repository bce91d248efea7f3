"""Staged MinHash dedup over shards: signatures -> band keys -> clusters -> per-shard keep masks.

Each stage reads the previous stage's files, so shards can be hashed by separate processes or
machines and merged in one clustering step. Files are ``.npz`` (no pickle) holding numpy arrays
and a JSON ``header`` with the parameters that produced them: kind, format, method, num_perm,
ngram, seed, hash, normalization (+ bands, rows, threshold for keys; exact, keep for clusters)
and the shard index. Combining files whose parameters differ is refused with an error naming
both files.

Exact duplicates: signature files also hold each document's 128-bit exact hash, so
``cluster_files(exact=True)`` can drop exact copies first and search near-duplicates among the
survivors, exactly as ``pipeline.deduplicate`` does in one pass; ``shard_result`` then says per
document whether it was removed as an exact or a near duplicate.
Writes are atomic (temp file in the same directory, then ``os.replace``).

Document ids: shards are ordered by their ``shard`` index (not by argument order), and document
(shard, i) gets the global id offset[shard] + i, so merging is deterministic.

>>> import tempfile, os
>>> d = tempfile.mkdtemp()
>>> mh = MinHasher(num_perm=32, ngram=3)
>>> _ = write_signatures(os.path.join(d, "s0.npz"), ["a b c d", "x y z"], minhasher=mh, shard=0)
>>> _ = write_signatures(os.path.join(d, "s1.npz"), ["a b c d"], minhasher=mh, shard=1)
>>> keys = [write_band_keys(os.path.join(d, f"k{i}.npz"), os.path.join(d, f"s{i}.npz"))["path"]
...         for i in (0, 1)]
>>> r = cluster_files(os.path.join(d, "c.npz"), keys)
>>> r.duplicate_of.tolist(), shard_keep_mask(os.path.join(d, "c.npz"), 1).tolist()
([-1, -1, 0], [False])
"""
from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from fastlm import _C
from fastlm.data.io import atomic_write
from fastlm.data.dedup import (DedupResult, MinHasher, _band_pair, _check_max_compare, _clusters_from_groups,
                               _keep_longest, _lengths, _texts, exact_hashes, recall_bands)
from fastlm.data.records import check_num_threads

__all__ = ["write_signatures", "write_band_keys", "cluster_files", "shard_keep_mask", "shard_result",
           "ShardResult", "read_header", "is_dedup_file"]

FORMAT_VERSION = 2  # 2: fast-mode MinHash hashes shingles to 32 bits (format-1 signatures differ)
_PARAMS = ("method", "num_perm", "ngram", "seed", "hash", "normalization")
_KEY_PARAMS = _PARAMS + ("bands", "rows", "threshold")
_KINDS = ("minhash-signatures", "minhash-band-keys", "minhash-clusters")


def _save(path: str, header: dict, **arrays: np.ndarray) -> None:
    with atomic_write(os.fspath(path), "wb") as f:
        hdr = np.frombuffer(json.dumps(header, sort_keys=True).encode(), np.uint8)
        np.savez(f, header=hdr, **arrays)


def _load(path: str, kind: str) -> tuple[dict, dict]:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # a truncated .npz is a BadZipFile
        raise ValueError(f"{path}: not a readable dedup file ({e})") from None
    if "header" not in arrays:
        raise ValueError(f"{path}: no header (not a fastlm dedup file)")
    header = json.loads(arrays.pop("header").tobytes().decode())
    if header.get("kind") != kind:
        raise ValueError(f"{path}: expected a {kind} file, found {header.get('kind')!r}")
    if header.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: format {header.get('format')} is not {FORMAT_VERSION}")
    return header, arrays


def read_header(path: str) -> dict:
    """The JSON header of a dedup file (any stage)."""
    with np.load(path, allow_pickle=False) as z:
        return json.loads(z["header"].tobytes().decode())


def is_dedup_file(path: str) -> bool:
    """True for a file that a dedup stage wrote (signatures, band keys or clusters), whatever its name."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        header = read_header(path)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return False
    return isinstance(header, dict) and header.get("kind") in _KINDS


def _check_same(files: Sequence[tuple[str, dict]], fields: Sequence[str]) -> None:
    first_path, first = files[0]
    for path, h in files[1:]:
        for k in fields:
            if h.get(k) != first.get(k):
                raise ValueError(
                    f"cannot combine {first_path} ({k}={first.get(k)!r}) with {path} "
                    f"({k}={h.get(k)!r}): dedup files must come from the same parameters")


def write_signatures(path: str, texts: Sequence[str | bytes], *, minhasher: MinHasher | None = None,
                     shard: int = 0, num_threads: int = 0) -> dict:
    """Stage 1: MinHash signatures of one shard's documents; returns the header (with "path").

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "sig.npz")
    >>> write_signatures(p, ["some text"], shard=3)["num_docs"]
    1
    """
    mh = minhasher or MinHasher()
    if not isinstance(shard, int) or shard < 0:
        raise ValueError(f"shard must be a non-negative int, got {shard!r}")
    texts = _texts(texts)
    sig, counts = mh.signatures_and_counts(texts, num_threads=num_threads)
    header = {"kind": "minhash-signatures", "format": FORMAT_VERSION, **mh.params(),
              "shard": shard, "num_docs": len(texts)}
    _save(path, header, signatures=sig, counts=counts, lengths=_lengths(texts),
          exact=exact_hashes(texts, num_threads=num_threads))
    return {**header, "path": os.fspath(path)}


def write_band_keys(path: str, signature_file: str, *, threshold: float = 0.8,
                    bands: tuple[int, int] | None = None, num_threads: int = 0) -> dict:
    """Stage 2: LSH band keys of one signature file (banding as minhash_dedup: recall_bands).

    The keys file also carries the signatures (needed to verify candidates), counts and exact
    hashes, and the threshold it was banded for (the clustering stage verifies at that threshold).

    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> _ = write_signatures(os.path.join(d, "s.npz"), ["a b c d e f"])
    >>> h = write_band_keys(os.path.join(d, "k.npz"), os.path.join(d, "s.npz")); (h["bands"], h["rows"])
    (21, 6)
    """
    h, a = _load(signature_file, "minhash-signatures")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    b, r = (_band_pair(bands, h["num_perm"]) if bands is not None
            else recall_bands(min(threshold, 0.99), h["num_perm"]))
    keys = _C.dedup_band_keys(a["signatures"], b, r, check_num_threads(num_threads))
    header = {**h, "kind": "minhash-band-keys", "bands": b, "rows": r, "threshold": threshold}
    _save(path, header, keys=keys, **a)
    return {**header, "path": os.fspath(path)}


def cluster_files(path: str, key_files: Sequence[str], *, threshold: float | None = None,
                  exact: bool = False, max_compare: int = 64, keep: str = "first",
                  num_threads: int = 0) -> DedupResult:
    """Stage 3: merge the band-key files of all shards, verify candidates by the signature
    estimate (texts are not available here) and cluster; writes the cluster file.

    threshold: None takes the one the keys were banded for; another value is refused (re-run the
    band stage instead). exact=True first removes exact copies (equal 128-bit hashes of the
    normalized text, as exact_dedup) and clusters near-duplicates among the survivors only.

    Gives the same clusters as ``minhash_dedup(all_texts, verify="signature")`` with the same
    parameters and banding, documents ordered by shard index (with exact=True: the same keep mask
    and clusters as ``pipeline.deduplicate`` with verify="signature"). The returned result's
    ``cluster`` holds the near-duplicate clusters; ``stats`` adds exact_removed, exact_clusters.
    """
    if not key_files:
        raise ValueError("cluster_files needs at least one band-key file")
    loaded = [(os.fspath(p), *_load(p, "minhash-band-keys")) for p in key_files]
    _check_same([(p, h) for p, h, _ in loaded], _KEY_PARAMS)
    loaded.sort(key=lambda t: t[1]["shard"])
    for (p, h, _), (q, g, _) in zip(loaded, loaded[1:]):
        if h["shard"] == g["shard"]:
            raise ValueError(f"{p} and {q} are both shard {h['shard']}")
    h0 = loaded[0][1]
    banded_for = h0.get("threshold")  # None: keys written before thresholds were recorded
    if threshold is None:
        threshold = 0.8 if banded_for is None else banded_for
    elif banded_for is not None and threshold != banded_for:
        raise ValueError(f"threshold={threshold} differs from threshold={banded_for} that {loaded[0][0]} "
                         f"was banded for: re-run the band stage with the threshold you want")
    keep_longest = _keep_longest(keep)
    _check_max_compare(max_compare)
    shards = [h["shard"] for _, h, _ in loaded]
    sizes = [len(a["counts"]) for _, _, a in loaded]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    names = ("keys", "signatures", "counts", "lengths")
    has_hashes = all("exact" in a for _, _, a in loaded)
    if exact and not has_hashes:
        old = next(p for p, _, a in loaded if "exact" not in a)
        raise ValueError(f"{old}: no exact hashes (written by an older fastlm): re-run its signature stage")
    cat = {k: np.concatenate([a[k] for _, _, a in loaded]) for k in names + (("exact",) if has_hashes else ())}
    n = int(offsets[-1])
    extra: dict[str, np.ndarray] = {}
    live = np.arange(n, dtype=np.int64)
    exact_removed = exact_clusters = 0
    if exact:  # exact_dedup's rule, on the stored hashes: non-empty normalized text, equal hash
        empty = exact_hashes([""])[0]
        h = cat["exact"]
        valid = (cat["lengths"] > 0) & ~((h[:, 0] == empty[0]) & (h[:, 1] == empty[1]))
        group = h.view(np.dtype((np.void, 16))).ravel() if n else np.zeros(0, "V16")
        ecluster, edup = _clusters_from_groups(group, valid, cat["lengths"], keep_longest)
        extra = {"exact_cluster": ecluster, "exact_duplicate_of": edup}
        live = np.flatnonzero(edup < 0)
        exact_removed = n - len(live)
        exact_clusters = int(np.count_nonzero(np.bincount(ecluster, minlength=n) >= 2)) if n else 0
        cat.update({k: np.ascontiguousarray(cat[k][live]) for k in names})
    sub_cluster, sub_dup, stats = _C.dedup_lsh_cluster(
        cat["keys"], cat["signatures"], cat["counts"], cat["lengths"], threshold, 0, 0.0, None,
        h0["ngram"], max_compare, keep_longest, check_num_threads(num_threads))
    if exact:  # back to global ids; exact-removed documents are singletons of the near pass
        cluster = np.arange(n, dtype=np.int64)
        cluster[live] = live[sub_cluster]
        dup = extra["exact_duplicate_of"].copy()
        dup[live] = np.where(sub_dup >= 0, live[np.maximum(sub_dup, 0)], -1)
    else:
        cluster, dup = sub_cluster, sub_dup
    stats.update(exact_removed=exact_removed, exact_clusters=exact_clusters)
    header = {"kind": "minhash-clusters", "format": FORMAT_VERSION,
              **{k: h0.get(k) for k in _KEY_PARAMS}, "threshold": threshold, "keep": keep,
              "exact": bool(exact), "shards": shards, "offsets": offsets.tolist(), "stats": stats}
    if has_hashes:
        extra["exact_hashes"] = cat["exact"]  # lets the filter stage check it reads the same documents
    _save(path, header, cluster=cluster, duplicate_of=dup, **extra)
    stats.update(bands=h0["bands"], rows=h0["rows"])
    return DedupResult("minhash", cluster, dup, stats)


def shard_keep_mask(cluster_file: str, shard: int) -> np.ndarray:
    """Stage 4 (filter): bool mask of the documents of `shard` to keep, in the shard's order."""
    h, a = _load(cluster_file, "minhash-clusters")
    if shard not in h["shards"]:
        raise ValueError(f"{cluster_file}: no shard {shard} (has {h['shards']})")
    i = h["shards"].index(shard)
    lo, hi = h["offsets"][i], h["offsets"][i + 1]
    return a["duplicate_of"][lo:hi] < 0


@dataclass
class ShardResult:
    """Stage 4 (filter): the dedup outcome of one shard's documents, in the shard's order."""

    shard: int  # shard index
    offset: int  # global id of the shard's first document (global ids: shards in index order)
    keep: np.ndarray  # (m,) bool: documents to keep
    exact_dup: np.ndarray  # (m,) bool: removed as exact copies (the other removed ones are near)
    hashes: np.ndarray | None  # (m, 2) uint64 exact hashes from stage 1 (None in older files)
    clusters: list[list[int]]  # clusters (size >= 2, global ids) whose first member is in this shard:
    #   exact clusters, then near clusters, as pipeline.deduplicate lists them; over all shards,
    #   every cluster is listed exactly once

    @property
    def near_dup(self) -> np.ndarray:
        """(m,) bool: removed as near-duplicates."""
        return ~self.keep & ~self.exact_dup


def shard_result(cluster_file: str, shard: int) -> ShardResult:
    """Stage 4 (filter) in full: keep mask, removal reasons and clusters of `shard`."""
    h, a = _load(cluster_file, "minhash-clusters")
    if shard not in h["shards"]:
        raise ValueError(f"{cluster_file}: no shard {shard} (has {h['shards']})")
    i = h["shards"].index(shard)
    lo, hi = h["offsets"][i], h["offsets"][i + 1]
    edup = a.get("exact_duplicate_of")
    exact_dup = edup[lo:hi] >= 0 if edup is not None else np.zeros(hi - lo, bool)
    clusters = []
    for name in ("exact_cluster", "cluster"):
        if name in a:
            r = DedupResult("minhash", a[name], a["duplicate_of"])
            clusters += [c for c in r.clusters if lo <= c[0] < hi]
    hashes = a["exact_hashes"][lo:hi] if "exact_hashes" in a else None
    return ShardResult(shard, int(lo), a["duplicate_of"][lo:hi] < 0, exact_dup, hashes, clusters)
