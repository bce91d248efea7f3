"""Tokenizer API: training vs a naive BPE, round trips, batch == loop, special-token policy, tiktoken ids.

Runs on whichever backend fastlm.tokenizer._backend picks (the pure-Python reference until the
native functions are merged). Real text: all of pydoc, and a Shakespeare subset (fast enough); the
whole corpus (pydoc + all of Shakespeare) in one test.
"""

import random
from collections import Counter

import numpy as np
import pytest
import regex
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st

from corpora import PYDOC, shakespeare_paragraphs, shakespeare_texts
from fastlm.tokenizer import DEFAULT_SPECIALS, PATTERNS, Tokenizer, _backend, _reference

PYDOC_TEXTS = [PYDOC[k] for k in sorted(PYDOC)]


def naive_train(pieces: Counter, n_merges: int, min_frequency: int = 1) -> list[tuple[int, int]]:
    """Recount every pair at every step (the obvious, slow BPE): the specification of the trainer."""
    words = {tuple(p): c for p, c in pieces.items()}
    merges = []
    for _ in range(n_merges):
        pairs: Counter = Counter()
        for w, c in words.items():
            for pair in zip(w, w[1:]):
                pairs[pair] += c
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        if pairs[best] < min_frequency:
            break
        new = 256 + len(merges)
        merges.append(best)
        out = {}
        for w, c in words.items():
            merged = _reference._merge_word(list(w), best[0], best[1], new)
            out[tuple(merged)] = out.get(tuple(merged), 0) + c
        words = out
    return merges


@pytest.fixture(scope="module")
def pydoc_tok():
    return Tokenizer.train_from_iterator(iter(PYDOC_TEXTS), 1024, pattern="gpt4")


def _counts(texts, pattern="gpt4"):
    return Counter(p.encode("utf-8") for t in texts for p in regex.findall(PATTERNS[pattern], t))


@pytest.mark.parametrize("min_frequency", [1, 3])
def test_reference_trainer_equals_naive_on_real_text(min_frequency):
    texts = shakespeare_paragraphs(150, files=2)
    counts = _counts(texts)
    pieces = sorted(counts)
    got = _reference.train(pieces, [counts[p] for p in pieces], 256 + 150, min_frequency).tolist()
    assert [tuple(m) for m in got] == naive_train(counts, 150, min_frequency)


@pytest.mark.parametrize("words", [
    {b"aaaa": 3, b"aaa": 2},  # overlapping pairs: left-to-right, non-overlapping
    {b"ab": 5, b"ba": 5, b"cd": 5},  # ties: smallest (left id, right id)
    {b"abcabcabc": 1, b"a" * 50: 2, b"xyz": 1},
])
def test_reference_trainer_adversarial(words):
    counts = Counter(words)
    pieces = sorted(counts)
    got = _reference.train(pieces, [counts[p] for p in pieces], 256 + 40, 1).tolist()
    assert [tuple(m) for m in got] == naive_train(counts, 40)


def test_train_vocab_size_and_specials(pydoc_tok):
    assert pydoc_tok.n_vocab == 1024
    assert list(pydoc_tok.special_tokens) == list(DEFAULT_SPECIALS)
    assert pydoc_tok.special_tokens["<|bos|>"] == 1024 - len(DEFAULT_SPECIALS)
    assert pydoc_tok.n_mergeable == 1024 - len(DEFAULT_SPECIALS)
    toks = pydoc_tok.tokens
    assert toks[:256] == [bytes([b]) for b in range(256)] and len(set(toks)) == len(toks)


def test_train_min_frequency_stops_early():
    tok = Tokenizer.train_from_iterator(["ab ab ab cd"], 1000, special_tokens=(), min_frequency=3)
    assert tok.n_vocab < 1000 and b"ab" in tok.mergeable_ranks and b"cd" not in tok.mergeable_ranks


def test_train_chunks_do_not_change_result(monkeypatch):
    texts = shakespeare_paragraphs(300, files=2)
    a = Tokenizer.train_from_iterator(texts, 600, special_tokens=())
    from fastlm.tokenizer import core

    monkeypatch.setattr(core, "_TRAIN_CHUNK_BYTES", 1000)  # many chunks, counts merged across them
    b = Tokenizer.train_from_iterator(iter(texts), 600, special_tokens=())
    assert a.tokens == b.tokens


def test_bad_arguments():
    with pytest.raises(ValueError, match="vocab_size"):
        Tokenizer.train_from_iterator(["x"], 100)
    with pytest.raises(ValueError, match="pattern"):
        Tokenizer.train_from_iterator(["x"], 300, pattern="(unclosed")
    with pytest.raises(ValueError, match="single bytes"):
        Tokenizer([bytes([b]) for b in range(255)])
    with pytest.raises(ValueError, match="mergeable"):
        Tokenizer([bytes([b]) for b in range(256)], special_tokens={"<|x|>": 3})


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4", "o200k"])
def test_ids_equal_tiktoken_on_builtin_corpus(pattern):
    texts = PYDOC_TEXTS + shakespeare_paragraphs(400, files=3)
    tok = Tokenizer.train_from_iterator(texts, 2048, pattern=pattern)
    enc = tok.to_tiktoken()
    assert tok.encode_batch(texts) == enc.encode_ordinary_batch(texts)
    assert [tok.encode(t) for t in texts[:50]] == [enc.encode(t) for t in texts[:50]]
    assert tok.decode_batch(enc.encode_ordinary_batch(texts)) == texts


def test_custom_pattern_equals_tiktoken():
    pat = r"""\p{L}+|\p{N}|[^\p{L}\p{N}]+"""
    tok = Tokenizer.train_from_iterator(PYDOC_TEXTS[:30], 700, pattern=pat, special_tokens=())
    assert tok.pattern_name is None and tok.pat_str == pat
    assert tok.encode_batch(PYDOC_TEXTS) == tok.to_tiktoken().encode_ordinary_batch(PYDOC_TEXTS)


def test_from_tiktoken_round_trip(pydoc_tok):
    back = Tokenizer.from_tiktoken(pydoc_tok.to_tiktoken())
    assert back.tokens == pydoc_tok.tokens and back.special_tokens == pydoc_tok.special_tokens
    assert back.pattern_name == "gpt4"


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_round_trip_hypothesis(pydoc_tok, text):
    assert pydoc_tok.decode(pydoc_tok.encode_ordinary(text)) == text


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=64))
def test_decode_bytes_of_any_bytes(pydoc_tok, data):
    # every byte string is reachable: decode_bytes(ids of its single bytes) == data; decode never raises
    ids = [pydoc_tok.token_to_id(bytes([b])) for b in data]
    assert pydoc_tok.decode_bytes(ids) == data
    assert pydoc_tok.decode(ids) == data.decode("utf-8", "replace")


def test_decode_strict_and_replace(pydoc_tok):
    ids = [0xFF]
    assert pydoc_tok.decode(ids) == "\ufffd"
    with pytest.raises(UnicodeDecodeError):
        pydoc_tok.decode(ids, errors="strict")
    with pytest.raises(ValueError, match="5000"):
        pydoc_tok.decode([5000])


def test_lone_surrogates_like_tiktoken(pydoc_tok):
    text = "a\ud800b \udfff"
    assert pydoc_tok.encode(text) == pydoc_tok.to_tiktoken().encode(text)
    assert pydoc_tok.decode(pydoc_tok.encode(text)) == "a\ufffdb \ufffd"


@pytest.mark.parametrize("num_threads", [0, 1, 2, 3, 8])
def test_batch_equals_loop(pydoc_tok, num_threads):
    rng = random.Random(num_threads)
    texts = shakespeare_paragraphs(200, files=2) + ["", " ", "\n\n", "x" * 1000] + rng.sample(PYDOC_TEXTS, 10)
    loop = [pydoc_tok.encode_ordinary(t) for t in texts]
    assert pydoc_tok.encode_batch(texts, num_threads=num_threads) == loop
    arrays = pydoc_tok.encode_batch(texts, num_threads=num_threads, as_numpy=True)
    assert all(isinstance(a, np.ndarray) and a.dtype == np.uint32 for a in arrays)
    assert [a.tolist() for a in arrays] == loop
    mixed = ["<|bos|>", "<|bos|><|user_end|>x", "a<|bos|>", "", "no specials"] + texts[:20]
    mixed = [t + "<|assistant_end|>" + u for t, u in zip(mixed, reversed(mixed))]
    want = [pydoc_tok.encode(t, allowed_special="all") for t in mixed]
    assert pydoc_tok.encode_batch(mixed, num_threads=num_threads, allowed_special="all") == want


def test_special_token_policy(pydoc_tok):
    tok, enc = pydoc_tok, pydoc_tok.to_tiktoken()
    text = "hi <|bos|> there <|user_end|>"
    with pytest.raises(ValueError, match=r"allowed_special=\{'<\|bos\|>'\}.*\n.*disallowed_special=\(\)"):
        tok.encode(text)
    with pytest.raises(ValueError, match="<|user_end|>"):
        tok.encode(text, allowed_special={"<|bos|>"})
    with pytest.raises(ValueError):
        tok.encode_batch(["fine", text])
    for kwargs in [dict(allowed_special="all"), dict(allowed_special={"<|bos|>"}, disallowed_special=()),
                   dict(disallowed_special=())]:
        assert tok.encode(text, **kwargs) == enc.encode(text, **kwargs)
        assert tok.encode_batch([text, text], **kwargs) == [enc.encode(text, **kwargs)] * 2
    ids = tok.encode(text, allowed_special="all")
    assert ids.count(tok.special_tokens["<|bos|>"]) == 1 and tok.decode(ids) == text
    assert tok.special_tokens["<|bos|>"] not in tok.encode_ordinary(text)
    with pytest.raises(ValueError, match="lacks"):
        tok.encode("x", allowed_special={"<|nope|>"})


def test_token_lookups(pydoc_tok):
    bos = pydoc_tok.special_tokens["<|bos|>"]
    assert pydoc_tok.token_bytes(bos) == b"<|bos|>" and pydoc_tok.id_to_token(104) == "h"
    assert pydoc_tok.token_to_id("<|bos|>") == bos and pydoc_tok.token_to_id(b"h") == 104
    with pytest.raises(ValueError, match="not in the vocabulary"):
        pydoc_tok.token_bytes(10**6)


def test_pathological_pieces_round_trip(pydoc_tok):
    # long pieces take the O(n log n) heap merge; results must equal the simple loop and tiktoken
    ranks = pydoc_tok.mergeable_ranks
    for piece in [b"a" * 3000, b"ab" * 1500, "".join(random.Random(1).choice("xyz") for _ in range(3000)).encode()]:
        assert _reference._bpe_long(ranks, piece) == _reference._bpe_short(ranks, piece)
    text = "x" * 20000 + " " + "ab" * 10000
    assert pydoc_tok.decode(pydoc_tok.encode(text)) == text
    assert pydoc_tok.encode(text) == pydoc_tok.to_tiktoken().encode(text)


def test_backend_describe():
    assert "pretokenize=" in _backend.describe("gpt4") and "bpe=" in _backend.describe("gpt2")


def test_ids_equal_tiktoken_on_whole_builtin_corpus():
    texts = PYDOC_TEXTS + [t for _, t in shakespeare_texts()]
    tok = Tokenizer.train_from_iterator(texts[:100], 4096)
    assert tok.encode_batch(texts) == tok.to_tiktoken().encode_ordinary_batch(texts)


def test_tiktoken_encoding_name():
    assert isinstance(Tokenizer([bytes([b]) for b in range(256)]).to_tiktoken(), tiktoken.Encoding)


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4", "o200k"])
def test_native_backend_equals_python_reference(monkeypatch, pattern):
    if not (_backend.native_bpe() or _backend.native_pretokenizer()):
        pytest.skip("this build of fastlm._C has no tokenizer functions (the Python backend is the one in use)")
    texts = PYDOC_TEXTS + shakespeare_paragraphs(300, files=2) + ["a\ud800b", "x" * 5000, "日本語 🙂 ١٢٣"]
    native = Tokenizer.train_from_iterator(texts, 1500, pattern=pattern)
    monkeypatch.setattr(_backend, "_FORCE_PYTHON", True)
    python = Tokenizer.train_from_iterator(texts, 1500, pattern=pattern)
    assert _backend.describe(pattern) == "pretokenize=python bpe=python"
    assert native.tokens == python.tokens
    assert native.encode_batch(texts, num_threads=2) == python.encode_batch(texts)


def test_decode_rejects_non_integer_and_out_of_range_ids():
    tok = Tokenizer([bytes([b]) for b in range(256)], special_tokens={"<|bos|>": 256})
    # ids past int64 used to raise OverflowError (a traceback from `fastlm tokenizer decode`), floats and
    # strings were truncated / parsed silently
    for ids in ([2**64 - 1], [10**30], [104, -(2**70)], np.array([2**63], dtype=np.uint64)):
        with pytest.raises(ValueError, match="out of range"):
            tok.decode(ids)
    for ids in ([104.7], ["104"], [True]):
        with pytest.raises(ValueError, match="must be integers"):
            tok.decode(ids)
    assert tok.decode(np.array([104, 256], dtype=np.uint64)) == "h<|bos|>"
    assert tok.decode(np.array([], dtype=np.float32)) == ""


def test_train_rejects_a_single_string_for_texts_or_special_tokens():
    # a str is iterable: it used to train on its characters / make each character a special token
    with pytest.raises(TypeError, match="special_tokens"):
        Tokenizer.train_from_iterator(["ab ab"], 300, special_tokens="<|endoftext|>")
    with pytest.raises(TypeError, match="single str"):
        Tokenizer.train_from_iterator("ab ab ab", 300)
