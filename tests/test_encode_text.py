"""Native text encoding (pre-tokenize + BPE in one GIL-free call) == tiktoken with the same ranks."""

import numpy as np
import pytest
import tiktoken

import reference_bpe as ref
from corpora import PYDOC, shakespeare_texts
from fastlm import _C
from fastlm.tokenizer.patterns import PATTERN_IDS as IDS, PATTERNS


def _corpus():
    docs = [t for _, t in sorted(PYDOC.items())][:40] + [t[:20_000] for _, t in shakespeare_texts()[:4]]
    docs += ["", " ", "\n\n\t ", "naïve café 😀👍🏽 東京 مرحبا ١٢٣٤ 12345 I'M you'LL", "a" * 5000, "x\u0301" * 50]
    return docs


@pytest.fixture(scope="module", params=list(PATTERNS))
def setup(request):
    name = request.param
    docs = _corpus()
    pieces, counts = _C.tok_count_pieces(docs[:30], IDS[name], 0)
    merges = _C.bpe_train(pieces, counts, 256 + 800, 2)
    tokens = ref.vocab_from_merges(merges)
    ranks = {t: i for i, t in enumerate(tokens)}
    enc = tiktoken.Encoding(f"fastlm-{name}", pat_str=PATTERNS[name], mergeable_ranks=ranks, special_tokens={})
    return name, docs, _C.BpeEncoder(tokens), enc


def test_ids_equal_tiktoken(setup):
    name, docs, native, tk = setup
    got = native.encode_ordinary_batch(docs, IDS[name], 0)
    assert len(got) == len(docs)
    for i, (doc, ids) in enumerate(zip(docs, got)):
        assert ids.dtype == np.uint32
        assert ids.tolist() == tk.encode_ordinary(doc), (name, i)
        assert native.decode(ids) == doc.encode("utf-8")


def test_lists_equal_arrays(setup):
    name, docs, native, _ = setup
    arrays = native.encode_ordinary_batch(docs, IDS[name], 0)
    lists = native.encode_ordinary_batch(docs, IDS[name], 0, False)
    assert all(type(x) is list for x in lists)
    assert lists == [a.tolist() for a in arrays]


def test_batch_is_thread_invariant(setup):
    name, docs, native, _ = setup
    one = native.encode_ordinary_batch(docs, IDS[name], 1)
    for threads in (2, 3, 0):
        assert [a.tolist() for a in native.encode_ordinary_batch(docs, IDS[name], threads)] == [a.tolist() for a in one]


def test_lone_surrogates_and_bad_arguments(setup):
    name, _, native, _ = setup
    (ids,) = native.encode_ordinary_batch(["a\ud800b"], IDS[name], 0)
    assert native.decode(ids) == "a\ud800b".encode("utf-8", "surrogatepass")
    with pytest.raises(ValueError, match="pattern must be"):
        native.encode_ordinary_batch(["x"], 7, 0)
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        native.encode_ordinary_batch(["x", 3], IDS[name], 0)
    with pytest.raises(TypeError, match="not a single str"):
        native.encode_ordinary_batch("abc", IDS[name], 0)


def test_single_text_path_and_gc_state(setup):
    import gc

    name, docs, native, tk = setup
    for doc in docs[-6:] + ["a\ud800b\udfff"]:
        assert native.encode_ordinary(doc, IDS[name]) == tk.encode_ordinary(doc)
    assert native.encode_ordinary_batch(["a\ud800b"], IDS[name], 0, False, True) == [tk.encode_ordinary("a\ud800b")]
    assert gc.isenabled()
    native.encode_ordinary_batch(docs, IDS[name], 0, False)
    assert gc.isenabled()  # paused while building the lists, then restored
    gc.disable()
    try:
        native.encode_ordinary_batch(docs, IDS[name], 0, False)
        assert not gc.isenabled()  # a caller's disabled GC stays disabled
    finally:
        gc.enable()
