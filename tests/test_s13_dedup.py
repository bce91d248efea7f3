"""Dedup audit: MinHash estimates vs exact Jaccard, clustering vs plain-Python references on random and
adversarial corpora (empty, short, 1,000 copies, odd num_perm/bands), SimHash vs the reference and the
`simhash` package, staged == one shot, and clear errors for bad arguments."""
import random
import tracemalloc
from collections import Counter

import numpy as np
import pytest

import reference_dedup as ref
from fastlm import _C
from fastlm.cli.main import main
from fastlm.data import dedup
from fastlm.data.dedup_files import (cluster_files, shard_keep_mask, shard_result, write_band_keys,
                                     write_signatures)
from fastlm.data.pipeline import DedupConfig, deduplicate

VOCAB = [f"w{i}" for i in range(400)]


def random_doc(rng, n):
    return " ".join(rng.choice(VOCAB) for _ in range(n))


@pytest.fixture(scope="module")
def corpus():
    """Real text with 1-20% edited copies, 30 exact copies, case/punctuation variants and edge docs."""
    rng = random.Random(0)
    docs = ref.with_near_duplicates(ref.real_documents(250, 60), frac=0.5, seed=3, rates=(0.005, 0.2))
    docs += [docs[5]] * 30 + [docs[7].upper() + " !!", "", " ", "\t\n", "a", "A.", "x y", "x y"]
    rng.shuffle(docs)
    return docs


def check_result_invariants(r, n):
    """cluster = smallest member, exactly one kept per cluster, duplicate_of -> the kept member."""
    cluster, dup = r.cluster, r.duplicate_of
    assert cluster.shape == dup.shape == (n,)
    for i in range(n):
        assert cluster[i] <= i and cluster[cluster[i]] == cluster[i]
    roots = np.unique(cluster)
    kept_per_root = Counter(cluster[dup < 0].tolist())
    assert all(kept_per_root[c] == 1 for c in roots.tolist())
    for i in np.flatnonzero(dup >= 0).tolist():
        assert dup[dup[i]] == -1 and cluster[dup[i]] == cluster[i]
    c = r.counts
    assert c["kept"] + c["removed"] == c["documents"] == n and c["kept"] == len(roots)


# --------------------------------------------------------------------------------------- MinHash


def test_minhash_estimate_within_sampling_bound():
    """(equal slots)/num_perm estimates J with sd sqrt(J(1-J)/P): z-scores look standard normal."""
    rng = random.Random(1)
    P = 256
    mh = dedup.MinHasher(num_perm=P, ngram=3, seed=7)
    z = []
    for _ in range(200):
        a = [rng.choice(VOCAB) for _ in range(rng.randint(5, 150))]
        b = list(a)
        for _ in range(rng.randint(0, len(b))):
            b[rng.randrange(len(b))] = rng.choice(VOCAB)
        s = mh.signatures([" ".join(a), " ".join(b)])
        est, J = float((s[0] == s[1]).mean()), ref.jaccard(" ".join(a), " ".join(b), 3)
        if J in (0.0, 1.0):  # distinct x give distinct (a*x+b) mod p: exact at the extremes
            assert est == J
        else:
            z.append((est - J) / np.sqrt(J * (1 - J) / P))
    z = np.array(z)
    assert len(z) > 150 and np.abs(z).max() < 4.5
    assert abs(z.mean()) < 0.3 and 0.7 < z.std() < 1.3


@pytest.mark.parametrize("num_perm,bands", [(128, None), (7, (3, 2)), (1, (1, 1)), (129, (5, 25)),
                                            (33, (33, 1))])
@pytest.mark.parametrize("verify", ["signature", "jaccard", "auto"])
def test_identical_always_clustered_disjoint_never(num_perm, bands, verify):
    rng = random.Random(2)
    short = ["a", "b", "a b", "x y z", "Ünï ΑΒΓ ЖЁ"]  # shorter than the 5-gram: one shingle each
    uniq = [" ".join(f"u{i}x{j}" for j in range(rng.randint(1, 30))) for i in range(40)]  # disjoint
    docs = uniq + short + [s.upper() + "!" for s in short] + [uniq[3]] * 4
    for th in (1e-9, 0.5, 1.0):
        r = dedup.minhash_dedup(docs, threshold=th, num_perm=num_perm, bands=bands, verify=verify)
        check_result_invariants(r, len(docs))
        want = sorted([[3, 50, 51, 52, 53]] + [[40 + k, 45 + k] for k in range(5)])
        assert r.clusters == want, (th, num_perm, bands, verify)


def test_empty_and_whitespace_documents_never_duplicates():
    docs = ["", " ", "\t\n", "!!", "...", "", "\u3000"]
    for r in (dedup.minhash_dedup(docs, threshold=1.0), dedup.minhash_dedup(docs, verify="jaccard"),
              dedup.simhash_dedup(docs, k=63), dedup.exact_dedup(docs)):
        assert r.keep.all() and r.clusters == []
    sig, counts = dedup.MinHasher(num_perm=5).signatures_and_counts(docs)
    assert (counts == 0).all() and (sig == np.iinfo(np.uint64).max).all()


def test_case_and_unicode_normalization_as_documented():
    # Lowercasing covers ASCII, Latin-1, Greek and Cyrillic; there is no Unicode normalization, so
    # NFC and NFD spellings stay different documents (module docstring of fastlm.data.dedup).
    nfc, nfd = "caf\u00e9 na\u00efve r\u00e9sum\u00e9", "cafe\u0301 nai\u0308ve re\u0301sume\u0301"
    docs = [nfc, nfc.upper(), nfd, "ΑΒΓΔ ЖЁЩ ÀÉÎ", "αβγδ жёщ àéî"]
    r = dedup.minhash_dedup(docs, threshold=1.0, ngram=1)
    assert r.clusters == [[0, 1], [3, 4]]
    assert dedup.exact_dedup(docs).clusters == [[0, 1], [3, 4]]
    # the native normalizer == the reference on code points at every range boundary
    rng = random.Random(0)
    edges = [c for a, b in ref._SEP_RANGES for c in (a - 1, a, b, b + 1)]
    edges += [0x390, 0x391, 0x3A2, 0x3A9, 0x3AA, 0x3FF, 0x400, 0x40F, 0x410, 0x42F, 0x430, 0xBF, 0xC0,
              0xD7, 0xDE, 0xDF, 0xF7, 0x10FFFF, 0xD800, 0xDFFF]
    edges = [c for c in edges if 0 <= c <= 0x10FFFF]
    for _ in range(3000):
        s = "".join(chr(rng.choice(edges)) for _ in range(rng.randint(0, 10)))
        assert dedup.normalize(s) == ref.normalize(s), repr(s)


@pytest.mark.parametrize("verify", ["signature", "auto"])
def test_cluster_of_1000_copies(verify):
    rng = random.Random(3)
    base = random_doc(rng, 60)
    docs = [base if i % 3 else base.upper() + "." for i in range(1000)] + [random_doc(rng, 60) for _ in range(100)]
    rng.shuffle(docs)
    copies = [i for i, d in enumerate(docs) if dedup.normalize(d) == dedup.normalize(base)]
    r = dedup.minhash_dedup(docs, verify=verify)
    check_result_invariants(r, len(docs))
    assert r.clusters == [copies] and r.counts["removed"] == 999
    longest = max(copies, key=lambda i: (len(docs[i]), -i))
    r = dedup.minhash_dedup(docs, verify=verify, keep="longest", max_compare=1)
    assert r.clusters == [copies] and np.flatnonzero(r.keep[copies]).tolist() == [copies.index(longest)]


def reference_lsh(docs, threshold, num_perm, ngram, bands, verify, margin=0.08, max_compare=64):
    """minhash_dedup by the plain-Python reference: signatures, band keys, bucket scan, exact checks."""
    sig, counts = [], []
    for d in docs:
        s, c = ref.minhash(d, num_perm, ngram, 1)
        sig.append(s)
        counts.append(c)
    sig = np.array(sig, np.uint64)
    sets = [{ref.hash64(s) & 0xFFFFFFFF for s in ref.shingles(d, ngram)} for d in docs]
    b, r = bands
    keys = [ref.band_keys(s.tolist(), b, r) for s in sig]

    def check(i, j):
        est = np.count_nonzero(sig[i] == sig[j]) / num_perm
        if verify == "jaccard" or (verify == "auto" and threshold - margin < est < threshold + margin):
            return len(sets[i] & sets[j]) / len(sets[i] | sets[j]) >= threshold
        return est >= threshold

    uf = ref.UnionFind(len(docs))
    for j in range(b):
        entries = sorted((keys[i][j], i) for i in range(len(docs)) if counts[i] > 0)
        ref.scan_buckets(entries, max_compare, uf, check)
    return ref.finalize(uf, [len(d) for d in docs])


@pytest.mark.parametrize("verify", ["jaccard", "auto", "signature"])
@pytest.mark.parametrize("num_perm,bands,threshold", [(31, (10, 3), 0.5), (37, (37, 1), 0.8),
                                                      (20, (4, 5), 4 / 7), (64, (21, 3), 1.0)])
def test_lsh_clusters_vs_reference(corpus, verify, num_perm, bands, threshold):
    docs = corpus[:150]
    r = dedup.minhash_dedup(docs, threshold=threshold, num_perm=num_perm, ngram=3, bands=bands,
                            verify=verify, max_compare=4)
    cluster, dup = reference_lsh(docs, threshold, num_perm, 3, bands, verify, max_compare=4)
    assert r.cluster.tolist() == cluster and r.duplicate_of.tolist() == dup
    check_result_invariants(r, len(docs))


@pytest.mark.parametrize("method", ["minhash-auto", "minhash-jaccard", "minhash-signature", "simhash", "exact"])
def test_threads_and_input_order(corpus, method):
    def run(docs, threads):
        if method == "simhash":
            return dedup.simhash_dedup(docs, k=6, num_threads=threads)
        if method == "exact":
            return dedup.exact_dedup(docs, num_threads=threads)
        return dedup.minhash_dedup(docs, verify=method.split("-")[1], num_threads=threads)

    base = run(corpus, 1)
    check_result_invariants(base, len(corpus))
    for t in (2, 5):
        r = run(corpus, t)
        assert (r.cluster == base.cluster).all() and (r.duplicate_of == base.duplicate_of).all()
    perm = list(range(len(corpus)))
    random.Random(4).shuffle(perm)
    r = run([corpus[i] for i in perm], 2)
    as_ids = sorted(sorted(perm[i] for i in c) for c in r.clusters)
    assert as_ids == base.clusters and r.counts == base.counts


# --------------------------------------------------------------------------------------- SimHash


def test_simhash_fingerprints_vs_reference_and_package(corpus):
    from simhash import Simhash

    docs = corpus[:200] + ["a", "x y", "é É", "a a a a"]
    fps, counts = dedup.simhash_and_counts(docs)
    for i, d in enumerate(docs):
        assert (int(fps[i]), int(counts[i])) == ref.simhash(d, 3)
        # the package with the same features (normalized word 3-grams, weight = count) and hash
        feats = Counter(s.decode() for s in ref.shingles(d, 3))
        if feats:
            assert Simhash(dict(feats), hashfunc=ref.hash64).value == int(fps[i])


@pytest.mark.parametrize("k", [0, 1, 3, 12, 63])
def test_simhash_clusters_vs_brute_force(corpus, k):
    docs = corpus[:250]
    fps, counts = dedup.simhash_and_counts(docs)
    r = dedup.simhash_dedup(docs, k=k, max_compare=10**6)
    check_result_invariants(r, len(docs))
    want = ref.simhash_cluster(fps, counts, [len(d) for d in docs], k, max_compare=10**6)
    assert (r.cluster.tolist(), r.duplicate_of.tolist()) == want
    # components of the "distance <= k" graph over non-empty docs: clusters never cross them, and
    # with k = 0 (a transitive relation) they are exactly the clusters
    uf = ref.UnionFind(len(docs))
    f = [int(x) for x in fps]
    for i in range(len(docs)):
        for j in range(i + 1, len(docs)):
            if counts[i] and counts[j] and bin(f[i] ^ f[j]).count("1") <= k:
                uf.unite(i, j)
    comp = [uf.find(i) for i in range(len(docs))]
    assert all(comp[i] == comp[c] for i, c in enumerate(r.cluster.tolist()))
    if k in (0, 63):
        assert r.cluster.tolist() == comp


# --------------------------------------------------------------------------------- staged == one shot


@pytest.mark.parametrize("threshold,bands,mh,keep", [
    (0.8, None, {}, "first"),
    (1.0, None, dict(num_perm=33, ngram=2), "longest"),
    (0.5, (7, 3), dict(num_perm=31, ngram=3, seed=99), "first"),
    (0.3, (1, 1), dict(num_perm=1, ngram=1), "first"),
    (0.8, None, dict(hash="datasketch", seed=4), "longest"),
])
def test_staged_equals_one_shot(tmp_path, corpus, threshold, bands, mh, keep):
    docs = corpus[:200]
    parts = np.split(np.arange(len(docs)), [0, 60, 61, 150])  # an empty shard and a one-doc shard
    minhasher = dedup.MinHasher(**mh)
    keys = []
    for s in (3, 0, 4, 1, 2):  # written and passed out of shard order
        sig = write_signatures(tmp_path / f"s{s}.npz", [docs[i] for i in parts[s]], minhasher=minhasher,
                               shard=s)["path"]
        keys.append(write_band_keys(tmp_path / f"k{s}.npz", sig, threshold=threshold, bands=bands)["path"])
    one = dedup.minhash_dedup(docs, threshold=threshold, bands=bands, verify="signature", keep=keep, **mh)
    r = cluster_files(tmp_path / "c.npz", keys, keep=keep)
    assert (r.cluster == one.cluster).all() and (r.duplicate_of == one.duplicate_of).all()
    # with exact copies removed first: the pipeline's keep mask, counts and clusters
    r = cluster_files(tmp_path / "e.npz", keys, exact=True, keep=keep)
    cfg = DedupConfig(threshold=threshold, bands=bands, verify="signature", keep=keep, **mh)
    keep_mask, removed, clusters = deduplicate(docs, cfg)
    assert (r.keep == keep_mask).all()
    masks = np.concatenate([shard_keep_mask(tmp_path / "e.npz", s) for s in range(5)])
    assert (masks == keep_mask).all()
    results = [shard_result(tmp_path / "e.npz", s) for s in range(5)]
    assert sorted(c for sr in results for c in sr.clusters) == sorted(clusters)
    assert sum(int(sr.exact_dup.sum()) for sr in results) == removed.get("exact_dup", 0)
    assert sum(int(sr.near_dup.sum()) for sr in results) == removed.get("near_dup", 0)


# ------------------------------------------------------------------------------------ arguments


def test_optimal_bands_memory_bounded_and_large_num_perm_refused():
    from datasketch import lsh

    for P, t in ((3, 0.5), (7, 0.3), (33, 0.85), (97, 0.6)):
        for w in ((0.5, 0.5), (0.05, 0.95)):
            assert dedup.optimal_bands(t, P, weights=w) == lsh._optimal_param(t, P, *w)
    dedup._optimal_bands.cache_clear()
    tracemalloc.start()
    try:
        assert dedup.optimal_bands(0.7, 2048) == (136, 15)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 150e6, peak  # was 264 MB at 2048 (all nodes x pairs at once), 69 MB now
    # 65536 is a valid num_perm, but searching its banding would take hours and an 8 GiB matrix
    with pytest.raises(ValueError, match=r"num_perm=65536.*bands=\(bands, rows\)"):
        dedup.minhash_dedup(["a b c"], num_perm=65536)
    r = dedup.minhash_dedup(["a b c", "a b c"], num_perm=65536, bands=(256, 256))
    assert r.duplicate_of.tolist() == [-1, 0]


def test_bad_arguments_named(tmp_path):
    bad = [
        (dict(bands=5), "bands must be a pair"), (dict(bands=(2.5, 2)), "bands must be a pair of ints"),
        (dict(bands=(2, 3, 4)), "bands must be a pair"), (dict(max_compare=-1), "max_compare"),
        (dict(max_compare=0), "max_compare"), (dict(seed=-1), "seed"), (dict(seed=1 << 64), "seed"),
        (dict(threshold=0), "threshold"), (dict(threshold=float("nan")), "threshold"),
    ]
    for kw, msg in bad:
        with pytest.raises(ValueError, match=msg):
            dedup.minhash_dedup(["a b"], **kw)
    for kw, msg in ((dict(k=2.5), "k must be"), (dict(k=64), "k must be"), (dict(max_compare=-3), "max_compare")):
        with pytest.raises(ValueError, match=msg):
            dedup.simhash_dedup(["a b"], **kw)
    sig = write_signatures(tmp_path / "s.npz", ["a b c"], minhasher=dedup.MinHasher(num_perm=8))["path"]
    with pytest.raises(ValueError, match="bands must be a pair"):
        write_band_keys(tmp_path / "k.npz", sig, bands=4)
    keys = write_band_keys(tmp_path / "k.npz", sig, bands=(4, 2))["path"]
    with pytest.raises(ValueError, match="max_compare"):
        cluster_files(tmp_path / "c.npz", [keys], max_compare=-1)
    # seeds equal mod 2^64 used to give the same permutations silently
    assert dedup.MinHasher(seed=(1 << 64) - 1).a is not None


def test_cli_large_num_perm_needs_bands(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "a b c d e f"}\n{"text": "a b c d e f"}\n')
    assert main(["data", "dedup", str(src), "-o", str(tmp_path / "o"), "--num-perm", "9000", "--quiet"]) == 2
    assert "--num-perm 9000 needs --bands and --rows" in capsys.readouterr().err
    assert main(["data", "dedup", str(src), "-o", str(tmp_path / "o"), "--num-perm", "9000", "--bands", "90",
                 "--rows", "100", "--quiet", "--no-exact"]) == 0


@pytest.mark.parametrize("call", [
    lambda: dedup.minhash_dedup(["a b c d e f"] * 2, margin=float("nan")),
    lambda: dedup.minhash_dedup(["a b c d e f"] * 2, margin=-0.1),
    lambda: dedup.minhash_dedup(["a b c d e f"] * 2, num_threads=-1),
    lambda: dedup.simhash_dedup(["a b c d e f"] * 2, num_threads=1.5),
    lambda: dedup.exact_hashes(["a"], num_threads=-2),
    lambda: dedup.MinHasher().signatures(["a"], num_threads=-1),
])
def test_margin_and_threads_checked_by_name(call):
    # a NaN or negative margin silently meant signature-only checks; negative threads were taken as all cores
    with pytest.raises(ValueError, match="margin must be in|num_threads must be an int"):
        call()


def test_pipeline_config_refuses_large_num_perm_without_bands_up_front():
    from fastlm.data.pipeline import check_dedup_config
    with pytest.raises(ValueError, match="dedup.num_perm=9000 needs dedup.bands"):
        check_dedup_config(DedupConfig(num_perm=9000))
    check_dedup_config(DedupConfig(num_perm=9000, bands=(100, 90)))  # explicit bands: fine
