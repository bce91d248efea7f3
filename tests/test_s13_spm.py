"""Parity of the sentencepiece backend with `sentencepiece` itself on odd inputs: random Unicode,
whitespace runs, special-token spellings, batches and thread counts, the decode of every id and of
random id sequences (byte pieces, invalid UTF-8, <unk>), save/load, and training options' errors."""

import json
import random

import numpy as np
import pytest
import sentencepiece
from hypothesis import given, settings
from hypothesis import strategies as st

from corpora import PYDOC, shakespeare_paragraphs
from fastlm.cli.main import main
from fastlm.tokenizer import Tokenizer, TokenizerFileError, load

TEXTS = [PYDOC[k] for k in sorted(PYDOC)][:30] + shakespeare_paragraphs(200, files=2)

# pieces that hypothesis combines: whitespace runs, combining marks, emoji ZWJ sequences, RTL,
# unassigned and private-use code points, the spellings of special, control and byte pieces
FRAGMENTS = [" ", "  ", "   ", "\t", "\t\t", "\n", "\r\n", "\u3000", "\u00a0", "\u2028", "\x0b", "\x00",
             "the", " the", "e\u0301", "\u0301", "\U0001F468\u200d\U0001F469\u200d\U0001F467", "\u200f",
             "\u05e9\u05dc\u05d5\u05dd", "\u0627\u0644", "\u0378", "\U000E0001", "\U0010FFFF", "\ue000",
             "<unk>", "<s>", "</s>", "<0x41>", "<0xE2>", " \u2047 ", "\ufffd", "<|", "|>", "<|bos|>",
             "<|user_start|>", "<|pad|>"]
PLAIN_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\u2581")
TEXT = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(PLAIN_CHARS, max_size=8)), max_size=12).map("".join)


@pytest.fixture(scope="module", params=["bpe", "unigram"])
def pair(request):
    """(fastlm tokenizer, sentencepiece processor of the same model)."""
    tok = Tokenizer.train_from_iterator(TEXTS, 600, backend="sentencepiece", model_type=request.param)
    return tok, sentencepiece.SentencePieceProcessor(model_proto=tok.model_proto())


@settings(max_examples=150, deadline=None)
@given(text=TEXT)
def test_ids_and_decodes_equal_sentencepiece(pair, text):
    tok, sp = pair
    # with the special tokens allowed, sentencepiece's own ids (it always matches user-defined symbols)
    assert tok.encode(text, allowed_special="all") == sp.encode(text)
    present = {s for s in tok.special_tokens if s in text}
    assert tok.encode(text, allowed_special=present) == sp.encode(text)
    if not any(s in text for s in tok.special_tokens):
        assert tok.encode_ordinary(text) == sp.encode(text)
    ordinary = tok.encode_ordinary(text)
    assert not set(ordinary) & set(tok.special_tokens.values())
    # sentencepiece decodes fastlm's ids back to the text, as fastlm does
    assert tok.decode(ordinary) == sp.decode(ordinary) == text


@settings(max_examples=60, deadline=None)
@given(text=st.text(st.characters(blacklist_categories=("Cs",))))  # full range, U+2581 included
def test_any_text_round_trips_through_sentencepiece_decode(pair, text):
    tok, sp = pair
    ids = tok.encode_ordinary(text)
    assert sp.decode(ids) == tok.decode(ids) == text


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_decode_of_random_ids_equals_sentencepiece(pair, data):
    # byte pieces (ids 1 + 9 specials .. 265) alone make invalid UTF-8: sentencepiece gives one U+FFFD
    # per bad byte, Python's "replace" one per maximal invalid subpart (was b"\xe2\xaf" -> 1, not 2)
    tok, sp = pair
    id_ = st.one_of(st.integers(0, tok.n_vocab - 1), st.integers(10, 265))
    ids = data.draw(st.lists(id_, max_size=12))
    assert tok.decode(ids) == sp.decode(ids)
    assert tok.decode_bytes(ids).decode("utf-8", "replace").count("\ufffd") <= tok.decode(ids).count("\ufffd")


def test_decode_of_every_id(pair):
    tok, sp = pair
    ids = list(range(tok.n_vocab))
    assert [tok.decode([i]) for i in ids] == [sp.decode([i]) for i in ids]  # <unk> was "<unk>", not " \u2047 "
    assert tok.decode(ids) == sp.decode(ids)
    assert tok.decode(np.array(ids, dtype=np.uint32)) == sp.decode(ids)
    byte = {b: sp.piece_to_id(f"<0x{b:02X}>") for b in range(256)}
    assert tok.decode([0]) == " \u2047 " and tok.decode_batch([[0], [byte[0x41]]]) == [" \u2047 ", "A"]
    assert tok.decode([byte[0xE2], byte[0x82], byte[0xAC]], errors="strict") == "\u20ac"
    assert tok.decode([byte[0xE2], byte[0x82]]) == "\ufffd\ufffd" == sp.decode([byte[0xE2], byte[0x82]])
    assert tok.decode([byte[0xE2], byte[0x82]], errors="ignore") == ""
    with pytest.raises(UnicodeDecodeError):
        tok.decode([byte[0xE2], byte[0x82]], errors="strict")


@pytest.mark.parametrize("bad, match", [([-1], "not in the vocabulary"), ([600], "not in the vocabulary"),
                                        ([2**70], "not in the vocabulary"), ([1.5], "must be integers"),
                                        ([True], "must be integers"), ([[1, 2]], "one flat sequence"),
                                        (np.array([[1]]), "one flat sequence")])
def test_invalid_ids_are_refused(pair, bad, match):
    tok, _ = pair
    with pytest.raises(ValueError, match=match):  # 1.5 and True decoded as id 1, [[1, 2]] was a TypeError
        tok.decode(bad)


def test_allowed_specials_keep_unigram_ties(pair):
    # "    " after a special token: unigram pieces "\u2581" + "\u2581\u2581\u2581" or the reverse score the
    # same up to float rounding, which depends on the text before; the text was encoded piecewise
    # around special tokens, so one tie could go the other way ([.., 266, 293] vs [.., 293, 266])
    tok, sp = pair
    for text in ["<|bos|><0x41>000    ", "<|bos|>xx    ", "<|pad|>" + "x" * 7 + "    \t   <|bos|>     "]:
        assert tok.encode(text, allowed_special="all") == sp.encode(text)
        assert tok.encode_batch([text], allowed_special="all") == [sp.encode(text)]


def test_special_with_a_space_is_matched_only_when_allowed():
    # sentencepiece never matches it (it compares it with text whose spaces are U+2581)
    tok = Tokenizer.train_from_iterator(["hello world, a b"] * 20, 400, backend="sentencepiece",
                                        special_tokens=["a b", "Q"])
    ab, q = tok.special_id("a b"), tok.special_id("Q")
    assert tok.encode("xa bQ", allowed_special="all") == tok.encode("x") + [ab, q]
    assert ab not in tok.encode("xa bQ", allowed_special={"Q"}, disallowed_special=())
    for text in ["a b", "xa bQ", "Q a b"]:
        assert tok.decode(tok.encode_ordinary(text)) == text and not {ab, q} & set(tok.encode_ordinary(text))


def test_whitespace_empty_and_long_inputs(pair):
    tok, sp = pair
    for text in ["", " ", "  lead", "trail  ", " \t \n\n\u3000\u00a0 ", " " * 1000, "\n" * 50, "a" + " " * 333 + "b"]:
        assert tok.encode(text) == sp.encode(text) and tok.decode(tok.encode(text)) == text
    long = (" ".join(TEXTS) * 2)[:300_000] + " \u05e9\U0001F600 " * 1000
    assert len(long) > 200_000 and tok.encode_ordinary(long) == sp.encode(long)


def test_literal_u2581_is_its_byte_pieces(pair):
    tok, sp = pair
    meta = [sp.piece_to_id(f"<0x{b:02X}>") for b in "\u2581".encode()]
    assert tok.encode("a\u2581 b") == sp.encode("a") + meta + sp.encode(" b")
    assert sp.decode(tok.encode("\u2581\u2581")) == "\u2581\u2581"


def test_batch_equals_single_for_every_thread_count(pair):
    tok, sp = pair
    rng = random.Random(0)
    texts = TEXTS[:40] + ["", " ", "\u2581x", "a<|bos|>b", "<|bos|>"] + ["".join(rng.choices(FRAGMENTS, k=9)) for _ in range(40)]
    single = [tok.encode(t, disallowed_special=()) for t in texts]
    for threads in (0, 1, 2, 3, 64):
        assert tok.encode_batch(texts, num_threads=threads, disallowed_special=()) == single
        assert tok.encode_ordinary_batch(texts, num_threads=threads) == single
    allowed = [tok.encode(t, allowed_special="all") for t in texts]
    assert tok.encode_batch(texts, allowed_special="all") == allowed
    assert [a.tolist() for a in tok.encode_batch(texts, allowed_special="all", as_numpy=True)] == allowed
    plain = [t for t in texts if "<|" not in t and "\u2581" not in t]
    assert tok.encode_batch(plain, num_threads=2) == sp.encode(plain)
    assert tok.encode_batch(iter(plain)) == sp.encode(plain)
    with pytest.raises(ValueError, match="num_threads"):  # was ignored
        tok.encode_batch(plain, num_threads=-1)
    with pytest.raises(TypeError, match="not a single str"):  # was encoded one character per text
        tok.encode_batch("abc")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        tok.encode_batch(["a", 3])
    with pytest.raises(TypeError, match="must be a str"):  # was an AttributeError
        tok.encode_ordinary(b"abc")


@pytest.fixture(scope="module")
def odd_specials():
    # a one-character special (sentencepiece matches it anywhere), one inside another, a newline
    specials = ["Q", "<x>", "x>y", "\n", "<|bos|>", "bos"]
    return Tokenizer.train_from_iterator(TEXTS[:50], 500, backend="sentencepiece", special_tokens=specials)


@settings(max_examples=100, deadline=None)
@given(text=st.lists(st.sampled_from(["Q", "<x>", "x>y", "\n", "<|bos|>", "bos", "x", "<", ">", "y", " ", "the"]),
                     max_size=10).map("".join))
def test_special_spellings_stay_ordinary_text(odd_specials, text):
    tok = odd_specials
    sp = sentencepiece.SentencePieceProcessor(model_proto=tok.model_proto())
    ids = tok.encode_ordinary(text)
    # was: "Q", "\n" and the "bos" inside "<|bos|>" came out as special ids
    assert not set(ids) & set(tok.special_tokens.values())
    assert tok.decode(ids) == sp.decode(ids) == text
    assert tok.decode(tok.encode(text, allowed_special="all")) == text
    assert tok.encode(text, allowed_special="all") == sp.encode(text)


def test_bad_special_tokens_are_refused():
    for specials, match in [([""], "non-empty"), (["\u2581x"], "U\\+2581"), ([3], "non-empty"),
                            (["<unk>"], "<unk>"), (["<0x41>"], "already defined")]:
        with pytest.raises(ValueError, match=match):  # "" and "\u2581x" were sentencepiece CHECK texts / accepted
            Tokenizer.train_from_iterator(["hello world"] * 5, 400, backend="sentencepiece", special_tokens=specials)


def test_training_errors_are_clear():
    texts = ["hello world, the quick brown fox"] * 20
    for mt in ("bpe", "unigram"):
        with pytest.raises(ValueError, match=r"vocab_size 270 is too small for this text: sentencepiece needs at least 285 ids"):
            Tokenizer.train_from_iterator(texts, 270, backend="sentencepiece", model_type=mt)
        assert Tokenizer.train_from_iterator(texts, 285, backend="sentencepiece", model_type=mt).n_vocab == 285
    for bad, match in [([], "no text to train on"), (["  ", "\n\n"], "no text to train on")]:
        with pytest.raises(ValueError, match=match):
            Tokenizer.train_from_iterator(bad, 400, backend="sentencepiece")
    for size in (0, -5, 300.5, True, "300"):
        with pytest.raises(ValueError, match="vocab_size must be a positive int"):
            Tokenizer.train_from_iterator(texts, size, backend="sentencepiece")
    for mt in ("char", "word", "BPE"):
        with pytest.raises(ValueError, match="model_type must be 'bpe' or 'unigram'"):
            Tokenizer.train_from_iterator(texts, 400, backend="sentencepiece", model_type=mt)
    with pytest.raises(ValueError, match="num_threads"):
        Tokenizer.train_from_iterator(texts, 400, backend="sentencepiece", num_threads=-2)


def test_long_lines_are_trained_on():
    # one 200,000-character line: sentencepiece skips lines past 65,536 bytes (was: "no sentences" error)
    words = " ".join(["fastlm", "tokenizer", "sentencepiece", "parity"] * 20_000)[:200_000]
    tok = Tokenizer.train_from_iterator([words], 320, backend="sentencepiece", special_tokens=())
    assert tok.n_vocab == 320 and len(tok.encode("sentencepiece")) <= 2 and tok.decode(tok.encode(words)) == words


def test_save_load_round_trip_and_header_checks(pair, tmp_path):
    tok, sp = pair
    texts = ["\u2581 a<|bos|>\n\tb", " \u3000 ", ""] + TEXTS[:10]
    for path in (tmp_path / "t.fastlm", tmp_path / "dir"):
        if path.name == "dir":
            path.mkdir()
        tok.save(str(path))
        back = load(str(path))
        assert type(back) is type(tok) and back.model_proto() == tok.model_proto()
        assert back.special_tokens == tok.special_tokens and back.model_type == tok.model_type
        assert back.encode_batch(texts, allowed_special="all") == tok.encode_batch(texts, allowed_special="all")
        assert back.decode(list(range(tok.n_vocab))) == sp.decode(list(range(tok.n_vocab)))
    lines = (tmp_path / "t.fastlm").read_text().splitlines()
    header = json.loads(lines[0])
    for change, match in [({"n_vocab": 601}, "header n_vocab 601"), ({"model_type": "char"}, "model_type"),
                          ({"special_tokens": {**header["special_tokens"], "<|bos|>": 7}}, "<|bos|>"),
                          ({"special_tokens": {"<unk>": 0}}, "lacks the special token '<unk>'"),
                          ({"special_tokens": {"<|nope|>": 600}}, "lacks the special token")]:
        bad = tmp_path / "bad.fastlm"
        bad.write_text(json.dumps({**header, **change}) + "\n" + lines[1] + "\n")
        with pytest.raises(TokenizerFileError, match=r"bad\.fastlm:2: .*" + match):  # was loaded as if right
            load(str(bad))


def test_token_bytes_and_token_to_id(pair):
    tok, sp = pair
    for i in range(tok.n_vocab):
        b = tok.token_bytes(i)
        assert tok.decode_bytes([i]) == b
        if i != sp.unk_id():
            assert tok.token_bytes(tok.token_to_id(b)) == b
    assert tok.token_to_id(b"\xff") == sp.piece_to_id("<0xFF>")  # was a UnicodeDecodeError
    with pytest.raises(KeyError):
        tok.token_to_id(b"\xff\xfe")
    assert tok.tokens == [tok.token_bytes(i) for i in range(tok.n_vocab)]


def test_cli_sentencepiece_errors(tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("hello world\n" * 10)
    rc = main(["tokenizer", "train", str(src), "--vocab-size", "270", "-o", str(tmp_path / "t"), "--quiet",
               "--backend", "sentencepiece"])
    assert rc != 0 and "vocab_size 270 is too small" in capsys.readouterr().err
    assert main(["tokenizer", "train", str(src), "--vocab-size", "300", "-o", str(tmp_path / "t"), "--quiet",
                 "--backend", "sentencepiece", "--model-type", "bpe"]) == 0
    capsys.readouterr()
    sp = sentencepiece.SentencePieceProcessor(model_proto=load(str(tmp_path / "t")).model_proto())
    assert main(["tokenizer", "decode", "0", str(sp.piece_to_id("<0x41>")), "--tokenizer", str(tmp_path / "t")]) == 0
    assert capsys.readouterr().out == " \u2047 A\n"


@pytest.mark.parametrize("kw", [{"pattern": "gpt2"}, {"min_frequency": 5}, {"progress": True}])
def test_library_refuses_bpe_options_on_the_sentencepiece_backend(kw):
    # they were dropped silently (the CLI refused them; the library did not)
    from fastlm.tokenizer import Tokenizer
    with pytest.raises(ValueError, match="apply to the byte-level BPE backend"):
        Tokenizer.train_from_iterator(["ab ab"] * 20, 300, backend="sentencepiece", **kw)


def test_library_refuses_model_type_on_the_bpe_backend():
    from fastlm.tokenizer import Tokenizer
    with pytest.raises(ValueError, match="model_type='unigram' applies to backend='sentencepiece'"):
        Tokenizer.train_from_iterator(["ab ab"] * 20, 300, model_type="unigram")
