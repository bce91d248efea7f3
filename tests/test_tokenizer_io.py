"""Tokenizer files: save/load round trip, corrupt files name file and line, .tiktoken files, HF
tokenizer.json export (identical ids with `tokenizers`) and import (a GPT-2-like file trained by HF)."""

import json
import os

import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from corpora import PYDOC, shakespeare_paragraphs
from fastlm.tokenizer import Tokenizer, TokenizerFileError, load
from fastlm.tokenizer.hf import bytes_to_unicode, derive_merges

PYDOC_TEXTS = [PYDOC[k] for k in sorted(PYDOC)]
CORPUS = PYDOC_TEXTS + shakespeare_paragraphs(400, files=3)


@pytest.fixture(scope="module", params=["gpt2", "gpt4", "o200k"])
def tok(request):
    return Tokenizer.train_from_iterator(CORPUS, 1500, pattern=request.param)


def test_save_load_round_trip(tok, tmp_path):
    path = str(tmp_path / "t.fastlm")
    tok.save(path)
    back = Tokenizer.from_file(path)
    assert back.tokens == tok.tokens and back.special_tokens == tok.special_tokens
    assert back.pat_str == tok.pat_str and back.pattern_name == tok.pattern_name
    assert back.encode_batch(CORPUS[:40]) == tok.encode_batch(CORPUS[:40])
    # directory form, and the body is a valid .tiktoken ranks file
    os.makedirs(tmp_path / "tok")
    tok.save(str(tmp_path / "tok"))
    assert load(str(tmp_path / "tok")).tokens == tok.tokens
    body = str(tmp_path / "ranks.tiktoken")
    with open(path) as f, open(body, "w") as g:
        g.writelines(f.readlines()[1:])
    t2 = Tokenizer.from_tiktoken_file(body, pattern=tok.pattern, special_tokens=tok.special_tokens)
    assert t2.tokens == tok.tokens


def test_custom_pattern_saved(tmp_path):
    pat = r"""\p{L}+|[^\p{L}]"""
    tok = Tokenizer.train_from_iterator(PYDOC_TEXTS[:20], 400, pattern=pat, special_tokens=())
    tok.save(str(tmp_path / "c.fastlm"))
    back = load(str(tmp_path / "c.fastlm"))
    assert back.pat_str == pat and back.encode(PYDOC_TEXTS[0]) == tok.encode(PYDOC_TEXTS[0])


def _write_corrupt(tmp_path, tok, edit):
    path = str(tmp_path / "t.fastlm")
    tok.save(path)
    with open(path) as f:
        lines = f.readlines()
    edit(lines)
    with open(path, "w") as f:
        f.writelines(lines)
    return path


def _err(path):
    with pytest.raises(TokenizerFileError) as info:
        load(path)
    return str(info.value)


def test_corrupt_files_name_file_and_line(tmp_path):
    tok = Tokenizer.train_from_iterator(PYDOC_TEXTS[:20], 400)

    def bad_header(lines):
        lines[0] = "{not json\n"

    def wrong_format(lines):
        lines[0] = json.dumps({"format": "other"}) + "\n"

    def bad_version(lines):
        h = json.loads(lines[0]); h["version"] = 99; lines[0] = json.dumps(h) + "\n"

    def bad_base64(lines):
        lines[9] = "@@notbase64@@ 8\n"

    def bad_rank(lines):
        lines[9] = lines[9].split()[0] + " eight\n"

    def duplicate_rank(lines):
        lines[9] = lines[9].split()[0] + " 3\n"

    def duplicate_token(lines):
        lines[300] = lines[301].split()[0] + " 299\n"

    def missing_byte(lines):
        del lines[1 + 65]  # the token b"A"
        for i in range(1 + 65, len(lines)):
            t, r = lines[i].split()
            lines[i] = f"{t} {int(r) - 1}\n"

    def missing_rank(lines):
        del lines[350]

    def wrong_count(lines):
        h = json.loads(lines[0]); h["n_mergeable"] += 1; lines[0] = json.dumps(h) + "\n"

    cases = [
        (bad_header, ":1:", "not JSON"), (wrong_format, ":1:", "not a fastlm-tokenizer"),
        (bad_version, ":1:", "version 99"), (bad_base64, ":10:", "bad base64"), (bad_rank, ":10:", "bad rank"),
        (duplicate_rank, ":10:", "duplicate rank 3"), (duplicate_token, ":302:", "also at line 301"),
        (missing_byte, ":", "missing single-byte tokens"), (missing_rank, ":", "rank 349 is missing"),
        (wrong_count, ":1:", "header says"),
    ]
    for edit, line, what in cases:
        msg = _err(_write_corrupt(tmp_path, tok, edit))
        assert msg.startswith(str(tmp_path / "t.fastlm") + line) and what in msg, (edit.__name__, msg)


def test_save_is_atomic(tmp_path, monkeypatch):
    tok = Tokenizer.train_from_iterator(PYDOC_TEXTS[:5], 300)
    path = str(tmp_path / "t.fastlm")
    tok.save(path)
    before = open(path).read()
    monkeypatch.setattr(type(tok), "tokens", property(lambda self: 1 / 0))
    with pytest.raises(ZeroDivisionError):
        tok.save(path)
    assert open(path).read() == before and os.listdir(tmp_path) == ["t.fastlm"]


def test_hf_export_identical_ids(tok, tmp_path):
    path = str(tmp_path / "tokenizer.json")
    tok.save_hf(path)
    hf = tokenizers.Tokenizer.from_file(path)
    ids = tok.encode_batch(CORPUS)
    assert [e.ids for e in hf.encode_batch(CORPUS, add_special_tokens=False)] == ids
    assert hf.decode_batch(ids[:20], skip_special_tokens=False) == CORPUS[:20]
    # specials are added tokens with their ids
    assert hf.token_to_id("<|bos|>") == tok.special_tokens["<|bos|>"]
    back = Tokenizer.from_hf(path)
    assert back.tokens == tok.tokens and back.special_tokens == tok.special_tokens
    assert back.pattern_name == tok.pattern_name


def test_hf_export_loads_in_transformers(tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    path = str(tmp_path / "tokenizer.json")
    tok.save_hf(path)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=path)
    assert fast(CORPUS[:20], add_special_tokens=False)["input_ids"] == tok.encode_batch(CORPUS[:20])


def test_derived_merges_rebuild_trained_vocab():
    tok = Tokenizer.train_from_iterator(CORPUS, 800, special_tokens=())
    merges = derive_merges(tok.tokens)
    assert len(merges) == tok.n_mergeable - 256
    assert [a + b for a, b in merges] == tok.tokens[256:]


def test_from_hf_gpt2_like_file(tmp_path):
    """A GPT-2-style tokenizer.json made by HF itself (ByteLevel pre-tokenizer, <|endoftext|> last)."""
    hf = tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1200, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[], show_progress=False)
    hf.train_from_iterator(CORPUS, trainer)
    hf.add_special_tokens(["<|endoftext|>"])
    path = str(tmp_path / "tokenizer.json")
    hf.save(path)
    tok = Tokenizer.from_hf(path)
    assert tok.pattern_name == "gpt2" and tok.special_tokens == {"<|endoftext|>": hf.get_vocab_size() - 1}
    want = [e.ids for e in hf.encode_batch(CORPUS, add_special_tokens=False)]
    assert tok.encode_batch(CORPUS) == want
    assert tok.decode_batch(want[:20]) == CORPUS[:20]
    assert tok.encode("a<|endoftext|>", allowed_special="all") == hf.encode("a<|endoftext|>").ids


def test_from_hf_rejects_other_models(tmp_path):
    path = str(tmp_path / "tokenizer.json")
    with open(path, "w") as f:
        json.dump({"model": {"type": "WordPiece", "vocab": {}}}, f)
    with pytest.raises(ValueError, match="not a BPE model"):
        Tokenizer.from_hf(path)


def test_bytes_to_unicode_is_a_bijection():
    m = bytes_to_unicode()
    assert sorted(m) == list(range(256)) and len(set(m.values())) == 256


def test_non_utf8_and_unknown_pattern_name_name_the_file(tmp_path):
    tok = Tokenizer.train_from_iterator(PYDOC_TEXTS[:5], 300)
    path = tmp_path / "t.fastlm"
    tok.save(str(path))
    lines = path.read_bytes().split(b"\n")
    path.write_bytes(b"\n".join(lines[:5] + [b"\xff\xfe 4"] + lines[6:]))  # used to raise a bare UnicodeDecodeError
    assert _err(str(path)).startswith(f"{path}:6: not UTF-8")
    ranks = tmp_path / "r.tiktoken"
    ranks.write_bytes(b"\n".join(lines[1:3] + [b"\xc3"]))
    with pytest.raises(TokenizerFileError, match=r"r\.tiktoken:3: not UTF-8"):
        Tokenizer.from_tiktoken_file(str(ranks), pattern="gpt4")
    header = json.loads(lines[0])
    header["pattern"] = "gpt5"  # used to be taken as the regex "gpt5"
    path.write_bytes(b"\n".join([json.dumps(header).encode()] + lines[1:]))
    assert _err(str(path)).startswith(f"{path}:1: header pattern 'gpt5'")


@pytest.mark.parametrize("doc", [
    b"\xff\xfe", b"[]", b'{"model": [1]}',
    b'{"model": {"type": "BPE", "vocab": {}}, "pre_tokenizer": {"type": "Sequence", "pretokenizers": [1, 2]}}',
    b'{"model": {"type": "BPE", "vocab": {}}, "pre_tokenizer": {"type": "ByteLevel"}, "added_tokens": [{"id": 3}]}',
    b'{"model": {"type": "BPE", "vocab": {"a": "x"}}, "pre_tokenizer": {"type": "ByteLevel"}}',
    b'{"model": {"type": "BPE", "vocab": {"a": 0}}, "pre_tokenizer": {"type": "ByteLevel"}}',
])
def test_from_hf_malformed_file_names_it(tmp_path, doc):
    path = tmp_path / "tokenizer.json"
    path.write_bytes(doc)  # these raised AttributeError / KeyError / messages without the file
    with pytest.raises(ValueError) as info:
        Tokenizer.from_hf(str(path))
    assert type(info.value) is ValueError and str(info.value).startswith(f"{path}:")
