"""LexiconFilter: word-boundary matching, native counts vs the Python reference, word-list files."""

import random
import unicodedata

import pytest

import reference_classifier as ref
from fastlm import _C
from fastlm.data.lexicon import LexiconFilter, load_lexicon
import corpora


@pytest.mark.parametrize("entry, text, hits", [
    ("ass", "a first class talk", 0),
    ("ass", "passé, assé, assassin", 0),
    ("ass", "Ass! ASS. ass", 3),
    ("ass", "ass_hat", 1),  # underscore separates words
    ("ass", "ass's", 1),
    ("naïve", "so Naïve, NAÏVE", 2),
    ("naïve", "naïves and naive", 0),
    ("naïve", "NAI\u0308VE nai\u0308ve", 2),  # decomposed text, composed entry
    ("nai\u0308ve", "naïve", 1),  # decomposed entry, composed text
    ("bad word", "bad   word, Bad-Word\nbad\tword", 3),
    ("bad word", "bad words, badword, bad", 0),
    ("straße", "STRASSE Straße", 1),
    ("жопа", "ЖОПА!", 1),
    ("東京", "東京, 東京都", 1),
    ("x", "", 0),
])
def test_word_boundaries(entry, text, hits):
    f = LexiconFilter.from_words([entry])
    assert f.count([text])[0] == [hits]
    assert f.check(text) == ("lexicon:hit" if hits else None)
    nfc = lambda s: unicodedata.normalize("NFC", s)  # noqa: E731
    assert ref.lexicon_count([nfc(entry)], nfc(text))[0] == hits


def test_overlapping_phrases_all_count():
    f = LexiconFilter.from_words(["bad", "bad word", "bad word ever", "word"])
    assert f.count(["the bad word ever said, bad word"]) == ([7], [7])
    assert len(f) == 4 and f._lexicon.max_words == 3


def random_corpus(seed):
    rng = random.Random(seed)
    vocab = ["ass", "class", "bad", "word", "naïve", "Ünï", "東京", "x", "ok", "Bad", "WORD"]
    seps = [" ", ", ", "-", "\n", "_", "!", "—", "", "é"]
    texts = ["".join(rng.choice(vocab) + rng.choice(seps) for _ in range(rng.randrange(40))) for _ in range(300)]
    lexicon = ["bad word", "ass", "naïve x", "ok ok ok", "東京", "word bad word"]
    return texts, lexicon


def test_counts_match_reference_random():
    texts, lexicon = random_corpus(0)
    f = LexiconFilter.from_words(lexicon)
    hits, words = f.count(texts)
    for text, h, w in zip(texts, hits, words):
        assert (h, w) == ref.lexicon_count(lexicon, text), repr(text)
    assert sum(hits) > 50  # the corpus does exercise matches


def test_counts_match_reference_real():
    text = corpora.shakespeare_texts()[0][1]
    paras = [p for p in text.split("\n\n") if p.strip()][:500]
    lexicon = ["lord", "my lord", "good my lord", "sir", "thee", "i pray you", "honour"]
    f = LexiconFilter.from_words(lexicon)
    hits, words = f.count(paras)
    assert [ref.lexicon_count(lexicon, p) for p in paras] == list(zip(hits, words))
    assert sum(hits) > 100
    for t in (1, 2):
        assert LexiconFilter.from_words(lexicon, num_threads=t).count(paras) == (hits, words)


def test_thresholds():
    text = "bad " + "fine " * 98 + "bad"  # 2 hits in 100 words
    assert LexiconFilter.from_words(["bad"]).check(text) == "lexicon:hit"
    assert LexiconFilter.from_words(["bad"], max_hits=1).check(text) == "lexicon:hit"
    assert LexiconFilter.from_words(["bad"], max_hits=2).check(text) is None
    assert LexiconFilter.from_words(["bad"], max_ratio=0.02).check(text) is None
    assert LexiconFilter.from_words(["bad"], max_ratio=0.019).check(text) == "lexicon:hit"
    assert LexiconFilter.from_words(["bad"], max_ratio=0.5, max_hits=1).check(text) == "lexicon:hit"
    assert LexiconFilter.from_words(["bad"], max_ratio=0.5).check("") is None


def test_load_word_list_file(tmp_path):
    p = tmp_path / "words.txt"
    p.write_bytes("\ufeff# comment\nBadWord\n\n   \n  very bad phrase  \nnaïve\n#another\n".encode())
    assert load_lexicon(p) == ["BadWord", "very bad phrase", "naïve"]
    f = LexiconFilter(p)
    assert f.path == str(p) and f.check_batch(["a badword", "NAÏVE", "very bad", "very  bad phrase"]) == [
        "lexicon:hit", "lexicon:hit", None, "lexicon:hit"]


@pytest.mark.parametrize("content, message", [
    (b"ok\n\xff\xfebad\n", ":2: not valid UTF-8"),
    (b"ok\n# c\n!!!\n", ":3: entry '!!!' has no word characters"),
    (b"# only comments\n\n", "has no entries"),
    (b"", "has no entries"),
])
def test_bad_word_list_files(tmp_path, content, message):
    p = tmp_path / "words.txt"
    p.write_bytes(content)
    with pytest.raises(ValueError) as e:
        LexiconFilter(p)
    assert str(p) in str(e.value) and message in str(e.value)


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError):
        LexiconFilter(tmp_path / "missing.txt")
    with pytest.raises(TypeError):
        LexiconFilter.from_words("ass")
    with pytest.raises(TypeError):
        LexiconFilter.from_words(["ok", 3])
    with pytest.raises(ValueError, match="no word characters"):
        LexiconFilter.from_words(["ok", "..."])
    with pytest.raises(ValueError):
        LexiconFilter.from_words([])
    for kw in ({"max_hits": -1}, {"max_hits": 1.5}, {"max_hits": True}, {"max_ratio": 2}, {"num_threads": -1}):
        with pytest.raises(ValueError):
            LexiconFilter.from_words(["a"], **kw)
    f = LexiconFilter.from_words(["a"])
    with pytest.raises(TypeError):
        f.check(None)
    with pytest.raises(TypeError):
        f.check_batch("a text")
    with pytest.raises(TypeError):
        f.check_batch(["ok", b"bytes"])
    with pytest.raises(ValueError):
        f.check("lone \ud800 surrogate")


def test_native_lexicon_direct():
    lex = _C.Lexicon(["one two", "three"])
    hits, words = lex.count(["One, two; three", ""])
    assert hits.tolist() == [2, 0] and words.tolist() == [3, 0]
