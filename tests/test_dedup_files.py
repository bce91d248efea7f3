"""Staged dedup files: per-shard signatures merged == one pass; mixed parameters refused."""
import os

import numpy as np
import pytest

import reference_dedup as ref
from fastlm.data import dedup, dedup_files as df


@pytest.fixture(scope="module")
def docs():
    return ref.with_near_duplicates(ref.real_documents(400), frac=0.4, seed=2) + ["", "tiny"]


def stage(tmp_path, shards, mh, order=None, bands=None, prefix=""):
    keys = []
    for s, texts in enumerate(shards):
        sig = df.write_signatures(tmp_path / f"{prefix}sig{s}.npz", texts, minhasher=mh, shard=s)
        keys.append(df.write_band_keys(tmp_path / f"{prefix}keys{s}.npz", sig["path"], bands=bands)["path"])
    if order:
        keys = [keys[i] for i in order]
    return keys


@pytest.mark.parametrize("hash", ["fast", "datasketch"])
def test_sharded_equals_one_pass(tmp_path, docs, hash):
    mh = dedup.MinHasher(hash=hash)
    cuts = [0, 97, 250, 251, len(docs)]  # uneven shards, one with a single doc
    shards = [docs[a:b] for a, b in zip(cuts, cuts[1:])]
    keys = stage(tmp_path, shards, mh, order=[2, 0, 3, 1])  # argument order must not matter
    r = df.cluster_files(tmp_path / "clusters.npz", keys)
    one = dedup.minhash_dedup(docs, hash=hash, verify="signature")
    assert r.cluster.tolist() == one.cluster.tolist()
    assert r.duplicate_of.tolist() == one.duplicate_of.tolist()
    masks = [df.shard_keep_mask(tmp_path / "clusters.npz", s) for s in range(len(shards))]
    assert np.concatenate(masks).tolist() == one.keep.tolist()
    assert r.counts["removed"] > 20
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]  # atomic writes


def test_mixed_parameters_refused(tmp_path, docs):
    k1 = stage(tmp_path, [docs[:50]], dedup.MinHasher(), prefix="a")
    sig = df.write_signatures(tmp_path / "b.npz", docs[50:80], minhasher=dedup.MinHasher(ngram=3), shard=1)
    k2 = df.write_band_keys(tmp_path / "bk.npz", sig["path"])["path"]
    with pytest.raises(ValueError, match=r"akeys0\.npz \(ngram=5\).*bk\.npz \(ngram=3\)"):
        df.cluster_files(tmp_path / "c.npz", k1 + [k2])
    sig = df.write_signatures(tmp_path / "c.npz", docs[50:80], minhasher=dedup.MinHasher(), shard=1)
    k3 = df.write_band_keys(tmp_path / "ck.npz", sig["path"], bands=(16, 8))["path"]
    with pytest.raises(ValueError, match="bands=21.*bands=16"):
        df.cluster_files(tmp_path / "c2.npz", k1 + [k3])
    sig = df.write_signatures(tmp_path / "d.npz", docs[50:80], minhasher=dedup.MinHasher(hash="datasketch"), shard=1)
    k4 = df.write_band_keys(tmp_path / "dk.npz", sig["path"])["path"]
    with pytest.raises(ValueError, match="hash='fast'.*hash='datasketch'"):
        df.cluster_files(tmp_path / "c3.npz", k1 + [k4])


def test_bad_files_refused(tmp_path, docs):
    k = stage(tmp_path, [docs[:10], docs[10:20]], dedup.MinHasher())
    with pytest.raises(ValueError, match="both shard 0"):
        df.cluster_files(tmp_path / "c.npz", [k[0], k[0]])
    with pytest.raises(ValueError, match="expected a minhash-band-keys file"):
        df.cluster_files(tmp_path / "c.npz", [str(tmp_path / "sig0.npz")])
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.npz"):
        df.write_band_keys(tmp_path / "k.npz", tmp_path / "junk.npz")
    df.cluster_files(tmp_path / "c.npz", k)
    with pytest.raises(ValueError, match="no shard 7"):
        df.shard_keep_mask(tmp_path / "c.npz", 7)
    assert df.read_header(tmp_path / "c.npz")["shards"] == [0, 1]


def test_truncated_file_refused_with_its_name(tmp_path, docs):
    # A .npz cut short (an interrupted copy) starts with the zip magic: np.load raised a bare
    # zipfile.BadZipFile (a traceback in the CLI) instead of a ValueError naming the file.
    stage(tmp_path, [docs[:10]], dedup.MinHasher())
    whole = (tmp_path / "sig0.npz").read_bytes()
    for cut in (100, len(whole) // 2, len(whole) - 10):
        (tmp_path / "cut.npz").write_bytes(whole[:cut])
        with pytest.raises(ValueError, match="cut.npz: not a readable dedup file"):
            df.write_band_keys(tmp_path / "k.npz", tmp_path / "cut.npz")


def test_old_format_refused(tmp_path, docs):
    # Format 1 held signatures of 64-bit shingle hashes: not comparable with today's, refused.
    k = stage(tmp_path, [docs[:10]], dedup.MinHasher())
    with np.load(k[0]) as z:
        arrays = {n: z[n] for n in z.files}
    header = df.read_header(k[0])
    header["format"] = 1
    df._save(tmp_path / "old.npz", header, **{n: v for n, v in arrays.items() if n != "header"})
    with pytest.raises(ValueError, match="format 1 is not 2"):
        df.cluster_files(tmp_path / "c.npz", [str(tmp_path / "old.npz")])
