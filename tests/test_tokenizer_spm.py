"""The sentencepiece backend behind the Tokenizer interface: lossless round trips, ids equal to
sentencepiece's own, special-token policy, save/load, CLI, and a clear error without the package."""

import base64
import sys

import pytest
import sentencepiece
from hypothesis import given, settings
from hypothesis import strategies as st

from corpora import PYDOC, shakespeare_paragraphs
from fastlm.cli.main import main
from fastlm.data.io import MissingDependencyError
from fastlm.tokenizer import Tokenizer, TokenizerFileError, load

TEXTS = [PYDOC[k] for k in sorted(PYDOC)][:40] + shakespeare_paragraphs(300, files=2)


@pytest.fixture(scope="module", params=["bpe", "unigram"])
def tok(request):
    return Tokenizer.train_from_iterator(TEXTS, 1500, backend="sentencepiece", model_type=request.param)


def test_round_trip_and_peer_ids(tok):
    sp = sentencepiece.SentencePieceProcessor(model_proto=tok.model_proto())
    plain = [t for t in TEXTS if "<|" not in t]
    assert tok.encode_batch(plain) == sp.encode(plain)
    assert tok.decode_batch(tok.encode_batch(TEXTS)) == TEXTS
    assert tok.n_vocab == 1500 and set(tok.special_tokens) >= {"<|bos|>", "<|assistant_end|>"}


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",))))  # U+2581 included
def test_round_trip_hypothesis(tok, text):
    assert tok.decode(tok.encode_ordinary(text)) == text


def test_special_policy(tok):
    text = "a <|bos|> b"
    with pytest.raises(ValueError, match="allowed_special"):
        tok.encode(text)
    bos = tok.special_tokens["<|bos|>"]
    assert bos in tok.encode(text, allowed_special="all")
    assert bos not in tok.encode(text, disallowed_special=()) and bos not in tok.encode_ordinary(text)
    assert tok.decode(tok.encode(text, disallowed_special=())) == text


def test_save_load(tok, tmp_path):
    tok.save(str(tmp_path / "s.fastlm"))
    back = load(str(tmp_path / "s.fastlm"))
    assert back.encode_batch(TEXTS[:30]) == tok.encode_batch(TEXTS[:30]) and back.model_type == tok.model_type


def test_corrupt_model_names_the_file(tok, tmp_path):
    path = tmp_path / "s.fastlm"
    tok.save(str(path))
    header = path.read_text().splitlines()[0]
    path.write_text(header + "\n" + base64.b64encode(b"not a model").decode() + "\n")
    with pytest.raises(TokenizerFileError, match=r"s\.fastlm:2: bad sentencepiece model"):  # was a RuntimeError
        load(str(path))


def test_cli_sentencepiece(tmp_path, capsys):
    out = str(tmp_path / "tok")
    assert main(["tokenizer", "train", "builtin:pydoc", "--vocab-size", "800", "-o", out, "--quiet",
                 "--backend", "sentencepiece", "--model-type", "unigram"]) == 0
    assert "trained 800 ids (sentencepiece)" in capsys.readouterr().out
    assert load(out).model_type == "unigram"


def test_missing_package_is_clear(monkeypatch):
    monkeypatch.setitem(sys.modules, "sentencepiece", None)
    with pytest.raises(MissingDependencyError, match="pip install sentencepiece"):
        Tokenizer.train_from_iterator(["x"], 300, backend="sentencepiece")


def test_lone_surrogates_become_replacement_characters(tok):
    # sentencepiece refuses them (RuntimeError, a traceback from `fastlm tokenizer encode-text`); the
    # BPE backend's rule: U+FFFD
    assert tok.encode("a\ud800b") == tok.encode("a\ufffdb")
    assert tok.encode_batch(["\udc00<|bos|>"], allowed_special="all") == [tok.encode("\ufffd<|bos|>", allowed_special="all")]
    small = Tokenizer.train_from_iterator(["ab\ud800cd ab"] * 20 + ["hello world"] * 20, 300, backend="sentencepiece")
    assert small.decode(small.encode("ab\ud800")) == "ab\ufffd"
