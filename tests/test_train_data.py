"""TokenDataset / PackedBatches: windows match the concatenated stream, header checks, rank sharding, resume."""

import json
import os

import numpy as np
import pytest
import torch

from fastlm.tokenizer.shards import TokenShardWriter
from fastlm.train.data import PackedBatches, TokenDataset


def make_shards(d, docs, *, vocab=1000, sha="abc", shard_tokens=50, prefix="tokens"):
    w = TokenShardWriter(str(d), vocab_size=vocab, tokenizer_sha256=sha, shard_tokens=shard_tokens, prefix=prefix)
    for doc in docs:
        w.add(doc)
    return w.close()


@pytest.fixture
def corpus(tmp_path):
    rng = np.random.default_rng(0)
    docs = [list(rng.integers(1, 1000, rng.integers(1, 40))) for _ in range(60)]
    docs[5] = []
    return make_shards(tmp_path, docs), docs


def test_stream_and_documents(corpus):
    paths, docs = corpus
    ds = TokenDataset(paths)
    assert len(paths) > 3 and ds.n_docs == len(docs)
    flat = np.concatenate([np.asarray(d, np.int64) for d in docs if d])
    assert ds.n_tokens == flat.size
    assert all(isinstance(s, np.memmap) for s in ds.shards)
    assert np.array_equal(ds.tokens(0, ds.n_tokens), flat)
    for i in (0, 5, 17, len(docs) - 1):
        assert ds.document(i).tolist() == [int(t) for t in docs[i]]
    assert TokenDataset(os.path.dirname(paths[0])).n_tokens == ds.n_tokens   # folder input


def test_random_windows(corpus):
    paths, docs = corpus
    ds = TokenDataset(paths)
    flat = ds.tokens(0, ds.n_tokens)
    x, y = ds.random_windows(64, 33, generator=torch.Generator().manual_seed(3))
    assert x.shape == y.shape == (64, 33) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    for row_x, row_y in zip(x.numpy(), y.numpy()):
        starts = [s for s in range(flat.size - 33) if flat[s] == row_x[0] and np.array_equal(flat[s:s + 33], row_x)]
        assert starts and any(np.array_equal(flat[s + 1:s + 34], row_y) for s in starts)
    x2, _ = ds.random_windows(64, 33, generator=torch.Generator().manual_seed(3))
    assert torch.equal(x, x2)
    with pytest.raises(ValueError, match="fewer than"):
        ds.random_windows(1, ds.n_tokens, generator=None)


def test_header_mismatch_names_file(tmp_path):
    a = make_shards(tmp_path / "a", [[1, 2, 3]], sha="one")
    b = make_shards(tmp_path / "b", [[1, 2, 3]], sha="two")
    with pytest.raises(ValueError, match=r"tokens-00000\.json: tokenizer_sha256"):
        TokenDataset(a + b)
    c = make_shards(tmp_path / "c", [[1, 2, 3]], sha="one", vocab=70000)
    with pytest.raises(ValueError, match=r"c/tokens-00000\.json: dtype"):
        TokenDataset(a + c)
    h = json.load(open(a[0]))
    h["n_tokens"] = 7
    bad = tmp_path / "a" / "bad.json"
    json.dump(h, open(bad, "w"))
    with pytest.raises(ValueError, match="bad.json"):
        TokenDataset([str(bad)])


def drain_docs(loader, n_batches):
    return [next(loader) for _ in range(n_batches)]


@pytest.mark.parametrize("world", [1, 3])
def test_packed_ranks_disjoint_and_complete(corpus, world):
    paths, docs = corpus
    ds = TokenDataset(paths)
    seen = []
    for rank in range(world):
        it = PackedBatches(ds, batch=2, seq_len=8, rank=rank, world_size=world, seed=7)
        order = it.order(0)
        seen.append(set(order.tolist()))
        stream = np.concatenate([ds.document(d) for d in order])
        n_rows = (stream.size - 1) // 8
        rows = []
        while len(rows) < n_rows:
            x, y = next(it)
            assert torch.equal(x[:, 1:], y[:, :-1])
            rows.extend(torch.cat([x, y[:, -1:]], 1).numpy())
        for r, row in enumerate(rows[:n_rows]):
            assert np.array_equal(row, stream[r * 8:r * 8 + 9])
    assert set().union(*seen) == set(range(ds.n_docs))
    assert sum(len(s) for s in seen) == ds.n_docs


def test_packed_deterministic_and_epochs(corpus):
    paths, _ = corpus
    ds = TokenDataset(paths)
    a = drain_docs(PackedBatches(ds, batch=4, seq_len=16, seed=1), 40)   # > one epoch
    b = drain_docs(PackedBatches(ds, batch=4, seq_len=16, seed=1), 40)
    c = drain_docs(PackedBatches(ds, batch=4, seq_len=16, seed=2), 40)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b))
    assert not all(torch.equal(p[0], q[0]) for p, q in zip(a, c))
    it = PackedBatches(ds, batch=4, seq_len=16, seed=1)
    drain_docs(it, 40)
    assert it.epoch >= 1
    assert not np.array_equal(it.order(0), it.order(1))
    flat = PackedBatches(ds, batch=1, seq_len=16, shuffle=False)
    x, y = next(flat)
    assert np.array_equal(x[0].numpy(), ds.tokens(0, 16))


@pytest.mark.parametrize("k", [0, 3, 17, 31])
def test_packed_resume(corpus, k):
    paths, _ = corpus
    ds = TokenDataset(paths)
    ref = PackedBatches(ds, batch=3, seq_len=10, rank=1, world_size=2, seed=5)
    expected = drain_docs(ref, k + 10)[k:]
    it = PackedBatches(ds, batch=3, seq_len=10, rank=1, world_size=2, seed=5)
    drain_docs(it, k)
    state = json.loads(json.dumps(it.state_dict()))
    fresh = PackedBatches(ds, batch=3, seq_len=10, rank=1, world_size=2, seed=5)
    fresh.load_state_dict(state)
    got = drain_docs(fresh, 10)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(expected, got))
    other = PackedBatches(ds, batch=3, seq_len=10, rank=0, world_size=2, seed=5)
    with pytest.raises(ValueError, match="rank"):
        other.load_state_dict(state)


def test_packed_bad_args(corpus):
    ds = TokenDataset(corpus[0])
    with pytest.raises(ValueError):
        PackedBatches(ds, batch=1, seq_len=4, rank=2, world_size=2)
    with pytest.raises(ValueError):
        PackedBatches(ds, batch=0, seq_len=4)


def test_packed_doc_ids(corpus):
    paths, _ = corpus
    ds = TokenDataset(paths)
    it = PackedBatches(ds, batch=4, seq_len=12, seed=3, return_doc_ids=True)
    plain = PackedBatches(ds, batch=4, seq_len=12, seed=3)
    for _ in range(60):                     # past the first epoch
        x, y, doc = next(it)
        px, py = next(plain)
        assert torch.equal(x, px) and torch.equal(y, py) and doc.shape == x.shape
        for r in range(x.shape[0]):
            for j in doc[r].unique().tolist():
                sel = doc[r] == j
                span = x[r][sel].numpy()
                d = ds.document(j % ds.n_docs)
                assert any(np.array_equal(d[s:s + span.size], span) for s in range(d.size - span.size + 1))
    assert doc.max().item() >= ds.n_docs
