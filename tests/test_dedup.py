"""Native dedup core vs the plain-Python reference (bit for bit), datasketch parity, invariances."""
import random

import numpy as np
import pytest

import reference_dedup as ref
from fastlm import _C
from fastlm.data import dedup

ALPHABET = list("aZk09 ,.-'\n\tÀÉßàΩωЖжЁё中文—…“”\u00a0\u3000\uff01\u2028") + ["\U0001f600"]


def random_texts(n, seed=0, max_len=60):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        t = "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(max_len)))
        out.append(t)
    return out


def random_bytes(n, seed=0):
    """Mostly valid UTF-8 with invalid bytes, truncated sequences, overlongs and surrogates mixed in."""
    rng = random.Random(seed)
    junk = [b"\xff", b"\xc0\xaf", b"\xe2\x82", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80", b"\xf0\x9f"]
    out = []
    for t in random_texts(n, seed + 1):
        b = bytearray(t.encode())
        for _ in range(rng.randrange(4)):
            pos = rng.randrange(len(b) + 1)
            b[pos:pos] = rng.choice(junk)
        out.append(bytes(b))
    return out


@pytest.fixture(scope="module")
def real():
    return ref.real_documents(300)


EDGE = ["", " ", "!!! ...", "one", "One two", "a b c d", "a b c d e", "a b c d e f",
        "Ünïcödé ΑΒΓ ЖЁ 中文 text — here", "x\u3000y\uff01z", "\U0001f600 emoji"]


def test_normalize_random_and_edge():
    for t in random_texts(2000) + EDGE:
        assert _C.dedup_normalize(t) == ref.normalize(t), t


def test_normalize_invalid_utf8_and_surrogates():
    for b in random_bytes(2000) + [b"\xff\xfe", b"ab\xe2\x82cd", b"A\xedB"]:
        assert _C.dedup_normalize(b) == ref.normalize(b), b
    s = "abc\ud800def X"  # a lone surrogate in a str: encoded with surrogatepass
    assert _C.dedup_normalize(s) == ref.normalize(s) == b"abc\xed\xa0\x80def x"


def test_normalize_real(real):
    for t in real:
        assert _C.dedup_normalize(t) == ref.normalize(t)


def test_exact_hashes(real):
    texts = random_texts(200) + random_bytes(200) + EDGE + real[:50]
    h = dedup.exact_hashes(texts)
    assert h.shape == (len(texts), 2) and h.dtype == np.uint64
    assert [tuple(map(int, r)) for r in h] == [ref.exact_hash(t) for t in texts]


@pytest.mark.parametrize("mode,name", [(0, "fast"), (1, "sha1")])
@pytest.mark.parametrize("ngram", [1, 3, 5])
def test_shingle_hashes(real, mode, name, ngram):
    for t in random_texts(100) + random_bytes(100) + EDGE + real[:20]:
        assert _C.dedup_shingle_hashes(t, ngram, mode).tolist() == ref.shingle_hashes(t, ngram, name)


def test_shingle_edge_cases():
    assert ref.shingles("", 5) == [] and _C.dedup_shingle_hashes("", 5, 0).size == 0
    assert ref.shingles("Only three words", 5) == [b"only three words"]
    assert len(ref.shingles("a b c d e f", 5)) == 2


@pytest.mark.parametrize("hash", ["fast", "datasketch", "datasketch-legacy"])
@pytest.mark.parametrize("num_perm,ngram,seed", [(128, 5, 1), (20, 3, 7), (1, 1, 0), (17, 2, 3)])
def test_minhash_vs_reference(real, hash, num_perm, ngram, seed):
    texts = random_texts(40, seed) + random_bytes(20, seed) + EDGE + real[:15]
    mh = dedup.MinHasher(num_perm=num_perm, ngram=ngram, seed=seed, hash=hash)
    sig, counts = mh.signatures_and_counts(texts)
    assert sig.shape == (len(texts), num_perm) and sig.dtype == np.uint64
    perms = None if hash == "fast" else (mh.a.tolist(), mh.b.tolist())
    for i, t in enumerate(texts):
        want, count = ref.minhash(t, num_perm, ngram, seed, hash, perms)
        assert sig[i].tolist() == want, (hash, i)
        assert counts[i] == count


def test_fast_permutations_match_reference():
    mh = dedup.MinHasher(num_perm=64, seed=12345)
    a, b = ref.fast_permutations(64, 12345)
    assert mh.a.tolist() == a and mh.b.tolist() == b


def test_simd_levels_agree(real):
    mh = dedup.MinHasher(num_perm=77)  # 2 x 32 + 8 + 5: every SIMD block width and the scalar tail
    texts = real[:100] + random_texts(50)
    want = mh.signatures(texts), dedup.simhash(texts, ngram=2)
    prev = _C.dedup_set_simd(3)
    try:
        for level, names in ((0, {"scalar"}), (1, {"avx2", "scalar"}),
                             (2, {"avx512", "avx2", "scalar"})):
            _C.dedup_set_simd(level)
            assert _C.dedup_kernel() in names
            assert np.array_equal(mh.signatures(texts), want[0]), _C.dedup_kernel()
            assert np.array_equal(dedup.simhash(texts, ngram=2), want[1])
    finally:
        _C.dedup_set_simd(prev)


def test_fast_kernel_extreme_permutations(real):
    # a, b at the ends of [1, p) / [0, p) stress every carry bound of the 32-bit-x lane math; all
    # kernel levels must equal the exact formula on the 32-bit shingle hashes.
    P = ref.P61
    a = [1, 2, P - 1, P - 2, (1 << 29) - 1, 1 << 29, (1 << 32) - 1, 1 << 32, P - (1 << 29), P >> 1]
    a = np.array((a * 8)[:77], np.uint64)
    b = np.array(([P - 1, 0, P - 2, 1, 1 << 60] * 16)[:77], np.uint64)
    texts = real[:20] + random_texts(20) + EDGE
    want = []
    for t in texts:
        hs = {x & 0xFFFFFFFF for x in ref.shingle_hashes(t, 5, "fast")}
        want.append([min([(int(ak) * x + int(bk)) % P for x in hs], default=ref.M64)
                     for ak, bk in zip(a, b)])
    prev = _C.dedup_set_simd(3)
    try:
        for level in (3, 2, 1, 0):
            _C.dedup_set_simd(level)
            sig, _ = _C.dedup_minhash(texts, a, b, 5, 0, 0)
            assert sig.tolist() == want, _C.dedup_kernel()
    finally:
        _C.dedup_set_simd(prev)


@pytest.mark.parametrize("scheme,hash", [("affine32", "datasketch"), ("legacy", "datasketch-legacy")])
@pytest.mark.parametrize("num_perm,seed", [(128, 1), (64, 42)])
def test_datasketch_parity(real, scheme, hash, num_perm, seed):
    import datasketch

    if not hasattr(datasketch.MinHash(num_perm=1), "scheme"):  # datasketch < 2.0: legacy only
        if scheme != "legacy":
            pytest.skip("datasketch < 2.0 has no affine32 scheme")
        scheme = None
    texts = real[:30] + random_texts(10, seed) + ["", "two words"]
    sig = dedup.MinHasher(num_perm=num_perm, ngram=5, seed=seed, hash=hash).signatures(texts)
    for i, t in enumerate(texts):
        kw = {"scheme": scheme} if scheme else {}
        m = datasketch.MinHash(num_perm=num_perm, seed=seed, **kw)
        for s in ref.shingles(t, 5):
            m.update(s)
        assert sig[i].tolist() == [int(v) for v in m.hashvalues], (scheme, i)


def test_optimal_bands_parity():
    from datasketch import lsh

    for num_perm in (16, 64, 128):
        for t in (0.3, 0.5, 0.7, 0.8, 0.9):
            for w in ((0.5, 0.5), (0.05, 0.95), (0.9, 0.1)):
                assert dedup.optimal_bands(t, num_perm, weights=w) == lsh._optimal_param(t, num_perm, *w)


def test_band_keys(real):
    mh = dedup.MinHasher(num_perm=24, ngram=3)
    sig = mh.signatures(real[:40] + EDGE)
    keys = _C.dedup_band_keys(sig, 5, 4, 0)
    for i in range(len(sig)):
        assert keys[i].tolist() == ref.band_keys(sig[i].tolist(), 5, 4)


def test_simhash_vs_reference(real):
    texts = random_texts(100) + random_bytes(50) + EDGE + real[:30] + ["a b c a b c a b c x"]
    for ngram in (1, 3):
        fps, counts = dedup.simhash_and_counts(texts, ngram=ngram)
        for i, t in enumerate(texts):
            assert (int(fps[i]), int(counts[i])) == ref.simhash(t, ngram), i


def near_dup_set(real, n=120, seed=0):
    return ref.with_near_duplicates(real[:n], frac=0.5, seed=seed) + ["", "", "tiny", "tiny"]


@pytest.mark.parametrize("max_compare", [1, 2, 64])
def test_lsh_clusters_vs_reference(real, max_compare):
    texts = near_dup_set(real) + [real[0]] * 5  # a bucket of exact copies
    mh = dedup.MinHasher(num_perm=32, ngram=3)
    sig, counts = mh.signatures_and_counts(texts)
    keys = _C.dedup_band_keys(sig, 8, 4, 0)
    lengths = np.array([len(t) for t in texts], np.uint64)
    for keep_longest in (False, True):
        cl, dup, _ = _C.dedup_lsh_cluster(keys, sig, counts, lengths, 0.7, 0, 0.0, None, 3,
                                          max_compare, keep_longest, 0)
        want_cl, want_dup = ref.lsh_cluster(keys, sig, counts, lengths, 0.7, max_compare, keep_longest)
        assert cl.tolist() == want_cl and dup.tolist() == want_dup


@pytest.mark.parametrize("k", [0, 3, 7])
def test_simhash_clusters_vs_reference(real, k):
    texts = near_dup_set(real) + [real[1]] * 4
    fps, counts = dedup.simhash_and_counts(texts)
    lengths = np.array([len(t) for t in texts], np.uint64)
    for max_compare in (1, 64):
        cl, dup, _ = _C.dedup_simhash_cluster(fps, counts, lengths, k, max_compare, False, 0)
        assert (cl.tolist(), dup.tolist()) == ref.simhash_cluster(fps, counts, lengths, k, max_compare)


def test_simhash_blocks_pigeonhole():
    for k in range(10):
        off = ref.simhash_blocks(k)
        assert len(off) == k + 2 and off[-1] == 64
    # Every pair within distance k is found: flip k random bits of random fingerprints.
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, 200, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    flips = [sum(1 << int(b) for b in rng.choice(64, 3, replace=False)) for _ in range(200)]
    fps = np.concatenate([base, base ^ np.array(flips, np.uint64)])
    ones = np.ones(len(fps), np.uint64)
    cl, _, _ = _C.dedup_simhash_cluster(fps, ones, ones, 3, 64, False, 0)
    assert (cl[200:] == np.arange(200)).all()


@pytest.mark.parametrize("fn", ["minhash", "simhash", "exact", "signatures"])
def test_threads_identical(real, fn):
    texts = near_dup_set(real, 200)
    outs = []
    for t in (1, 2, 3):
        if fn == "minhash":
            r = dedup.minhash_dedup(texts, num_threads=t)
            outs.append((r.cluster.tolist(), r.duplicate_of.tolist()))
        elif fn == "simhash":
            r = dedup.simhash_dedup(texts, num_threads=t)
            outs.append((r.cluster.tolist(), r.duplicate_of.tolist()))
        elif fn == "exact":
            outs.append(dedup.exact_hashes(texts, num_threads=t).tolist())
        else:
            outs.append(dedup.MinHasher().signatures(texts, num_threads=t).tolist())
    assert outs[0] == outs[1] == outs[2]


def test_dedup_results_and_keep_rules():
    docs = ["Hello there, world!", "hello THERE world", "something else entirely", "",
            "Hello there world and a much longer tail", ""]
    r = dedup.exact_dedup(docs)
    assert r.duplicate_of.tolist() == [-1, 0, -1, -1, -1, -1]
    assert r.keep.tolist() == [True, False, True, True, True, True]
    assert r.clusters == [[0, 1]]
    assert r.counts == {"documents": 6, "kept": 5, "removed": 1, "clusters": 1}
    r = dedup.exact_dedup(["a b", "x", "A, B!", "a b"], keep="longest")
    assert r.duplicate_of.tolist() == [2, -1, -1, 2]
    base = " ".join(f"w{i}" for i in range(60))
    texts = [base, base + " extra", "", "", base]
    m = dedup.minhash_dedup(texts, keep="longest")
    assert m.duplicate_of.tolist() == [1, -1, -1, -1, 1]  # empty docs are never duplicates
    assert dedup.simhash_dedup(texts).duplicate_of.tolist()[2:4] == [-1, -1]


def test_bad_input():
    with pytest.raises(TypeError, match="document 1 is int"):
        dedup.exact_hashes(["a", 3])
    with pytest.raises(TypeError):
        dedup.minhash_dedup("not a list")
    with pytest.raises(ValueError, match="hash must be"):
        dedup.MinHasher(hash="md5")
    with pytest.raises(ValueError, match="bands"):
        dedup.minhash_dedup(["a"], bands=(20, 10))
    with pytest.raises(ValueError, match="verify"):
        dedup.minhash_dedup(["a"], verify="maybe")
    with pytest.raises(ValueError, match="keep"):
        dedup.simhash_dedup(["a"], keep="last")
    with pytest.raises(ValueError):
        _C.dedup_band_keys(np.zeros((3, 8), np.uint64), 3, 3, 0)
    with pytest.raises(ValueError):
        _C.dedup_lsh_cluster(np.zeros((3, 2), np.uint64), np.zeros((2, 8), np.uint64),
                             np.zeros(3, np.uint64), np.zeros(3, np.uint64), 0.8, 1, 0.0, None, 5,
                             8, False, 0)
    with pytest.raises(ValueError, match="texts"):  # jaccard verification without texts
        _C.dedup_lsh_cluster(np.zeros((3, 2), np.uint64), np.zeros((3, 8), np.uint64),
                             np.ones(3, np.uint64), np.zeros(3, np.uint64), 0.8, 1, 0.0, None, 5,
                             8, False, 0)


@pytest.mark.slow
def test_20mb_single_line_document(real):
    base = " ".join(t.replace("\n", " ") for t in real[:20]) + " Ωmega \xff"
    doc = (base * (20_000_000 // len(base) + 1))[:20_000_000]
    assert "\n" not in doc
    assert tuple(map(int, dedup.exact_hashes([doc])[0])) == ref.exact_hash(doc)
    sig, counts = dedup.MinHasher().signatures_and_counts([doc])
    want, count = ref.minhash(doc, 128, 5, 1, "fast")
    assert sig[0].tolist() == want and counts[0] == count
    fps, c = dedup.simhash_and_counts([doc])
    assert (int(fps[0]), int(c[0])) == ref.simhash(doc, 3)


def test_empty_inputs():
    for f in (dedup.exact_dedup, dedup.minhash_dedup, dedup.simhash_dedup):
        r = f([])
        assert r.counts == {"documents": 0, "kept": 0, "removed": 0, "clusters": 0} and r.clusters == []
    assert dedup.MinHasher().signatures([]).shape == (0, 128)
    assert dedup.exact_hashes([]).shape == (0, 2) and dedup.simhash([]).shape == (0,)


@pytest.mark.parametrize("verify", [1, 2])  # jaccard, auto
def test_kept_hashes_verify_like_texts(real, verify):
    # minhash_dedup verifies with the 32-bit shingle hashes kept from hashing: the same clusters
    # as re-shingling the texts, at any thread count.
    long = [" ".join(real[k : k + 12]) for k in range(0, 120, 12)]  # > 1024 shingles: radix path
    docs = ref.with_near_duplicates(real[:300] + long, frac=0.4, seed=5) + ["", "tiny"]
    mh = dedup.MinHasher()
    sig, counts, kept = _C.dedup_minhash(docs, mh.a, mh.b, 5, 0, 0, keep=True)
    assert len(kept) == len(docs)
    keys = _C.dedup_band_keys(sig, 21, 6, 0)
    args = (keys, sig, counts, dedup._lengths(docs), 0.8, verify, 0.08)
    want = _C.dedup_lsh_cluster(*args, docs, 5, 64, False, 1)
    assert want[2]["exact_checks"] > 20 and want[2]["merged"] > 20
    for t in (1, 2):
        got = _C.dedup_lsh_cluster(*args, kept, 5, 64, False, t)
        assert got[0].tolist() == want[0].tolist() and got[1].tolist() == want[1].tolist()
    r = dedup.minhash_dedup(docs, verify={1: "jaccard", 2: "auto"}[verify])
    assert r.cluster.tolist() == want[0].tolist()


@pytest.mark.parametrize("hash", ["fast", "datasketch"])
def test_kept_hashes_edge_documents(real, hash):
    # keep=True stores every doc's hashes in one buffer sized by a words-per-byte bound: dense
    # one-letter words, separators only, invalid bytes and empty docs must not change signatures.
    dense = ["a", "a b", "a,b,c,d,e,f,g", "x" * 3, "", "!!", "a " * 500, b"\xff \xfe\x80", "é ü"]
    texts = random_texts(60, 3) + random_bytes(60, 3) + EDGE + real[:5] + dense
    mh = dedup.MinHasher(ngram=2, hash=hash)
    sig, counts = _C.dedup_minhash(texts, mh.a, mh.b, 2, dedup._MODES[hash], 0)
    sig2, counts2, kept = _C.dedup_minhash(texts, mh.a, mh.b, 2, dedup._MODES[hash], 2, keep=True)
    assert np.array_equal(sig, sig2) and np.array_equal(counts, counts2) and len(kept) == len(texts)
    r = dedup.minhash_dedup(texts + texts[:10], ngram=2, hash=hash, verify="jaccard")
    assert (r.duplicate_of[len(texts):] >= 0).sum() >= 5


@pytest.mark.parametrize("words", [50, 3000])  # the bucket + insertion sort and the radix sort
def test_exact_jaccard_threshold_is_exact(real, words):
    base = " ".join(" ".join(real).split()[:words])
    rng = random.Random(words)
    edited = ref.perturb(base, 0.05, rng)
    sets = [{x & 0xFFFFFFFF for x in ref.shingle_hashes(t, 5, "fast")} for t in (base, edited)]
    j = len(sets[0] & sets[1]) / len(sets[0] | sets[1])
    assert 0.3 < j < 0.95
    for t, merged in ((j - 1e-9, True), (j + 1e-9, False)):
        r = dedup.minhash_dedup([base, edited], threshold=t, bands=(128, 1), verify="jaccard")
        assert (r.duplicate_of[1] == 0) == merged, (t, j)
