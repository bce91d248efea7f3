"""fastlm.train.prepare: text -> cached clean/tokenizer/shards (reuse, keys, atomic steps); given shards checked."""

import json
import os

import pytest

from fastlm.config import from_dict
from fastlm.data.readers import read_records
from fastlm.tokenizer import Tokenizer, load
from fastlm.tokenizer.shards import TokenShardWriter, file_sha256
from fastlm.train import prepare as prep
from fastlm.train.config import TrainConfig
from fastlm.train.data import TokenDataset


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A small JSONL corpus of our own: 40 Python documentation topics of 80+ words."""
    docs = [r.data["text"] for r in read_records("builtin:pydoc") if len(r.data["text"].split()) >= 80][:40]
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs), encoding="utf-8")
    return str(path)


def config(tmp_path, corpus, **data):
    return from_dict(TrainConfig, {"out": str(tmp_path / "runs"), "data": {"text": [corpus], "vocab_size": 400, **data}})


def test_text_is_cleaned_tokenized_and_encoded(tmp_path, corpus):
    lines = []
    got = prep.prepare_data(config(tmp_path, corpus), log=lines.append)
    assert got.val == [] and got.cache_dir.startswith(str(tmp_path / "runs" / "cache"))
    tok = load(got.tokenizer)
    assert tok.n_vocab <= 400 and "<|mask|>" in tok.special_tokens and "<|pad|>" in tok.special_tokens
    ds = TokenDataset(got.train)
    assert ds.tokenizer_sha256 == file_sha256(got.tokenizer) and ds.vocab_size == tok.n_vocab
    cleaned = [r.data["text"] for r in read_records(os.path.join(got.cache_dir, "text"))]
    assert ds.n_docs == len(cleaned) > 30
    bos = tok.special_tokens["<|bos|>"]
    for i in (0, 7, ds.n_docs - 1):  # <|bos|> then the document's ids, which decode to its cleaned text
        doc = ds.document(i).tolist()
        assert doc[0] == bos and bos not in doc[1:]
        assert tok.decode(doc[1:]) == cleaned[i]
    assert os.path.isfile(os.path.join(got.cache_dir, "tokenizer", "tokenizer.json"))
    assert not [n for n in os.listdir(got.cache_dir) if n.startswith(".")]  # no temp folders left
    text = "\n".join(lines)
    assert "cleaned" in text and "trained" in text and "encoded" in text and "tokens" in text


def test_second_call_reuses_the_cache(tmp_path, corpus, monkeypatch):
    cfg = config(tmp_path, corpus)
    first = prep.prepare_data(cfg, log=lambda s: None)
    mtimes = {p: os.stat(p).st_mtime_ns for p in [first.tokenizer] + first.train}
    calls = []
    real_train = Tokenizer.train_from_iterator
    monkeypatch.setattr(Tokenizer, "train_from_iterator", classmethod(
        lambda cls, *a, **k: calls.append("train") or real_train.__func__(cls, *a, **k)))
    import fastlm.data.pipeline as pipeline
    monkeypatch.setattr(pipeline, "clean", lambda *a, **k: calls.append("clean"))
    lines = []
    again = prep.prepare_data(cfg, log=lines.append)
    assert again == first and calls == []
    assert {p: os.stat(p).st_mtime_ns for p in mtimes} == mtimes
    assert sum("reusing" in line for line in lines) == 3


def test_cache_key_follows_what_decides_the_data(tmp_path, corpus):
    key = prep.cache_key(config(tmp_path, corpus))[0]
    assert prep.cache_key(config(tmp_path, corpus, vocab_size=512))[0] != key
    assert prep.cache_key(config(tmp_path, corpus, seq_len=32))[0] == key  # not a data setting
    cfg = from_dict(TrainConfig, {"out": "elsewhere", "seed": 3, "optim": {"lr": 1e-4},
                                  "data": {"text": [corpus], "vocab_size": 400}})
    assert prep.cache_key(cfg)[0] == key
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(open(corpus, "rb").read())
    other = prep.cache_key(config(tmp_path, str(copy)))[0]
    assert other != key  # another file
    with open(copy, "a", encoding="utf-8") as f:
        f.write(json.dumps({"text": "one more document"}) + "\n")
    assert prep.cache_key(config(tmp_path, str(copy)))[0] != other  # the file changed
    assert prep.cache_key(TrainConfig())[0] != key  # the built-in corpora


def test_vocab_size_change_builds_a_new_tokenizer(tmp_path, corpus):
    a = prep.prepare_data(config(tmp_path, corpus), log=lambda s: None)
    b = prep.prepare_data(config(tmp_path, corpus, vocab_size=300), log=lambda s: None)
    assert a.cache_dir != b.cache_dir and load(b.tokenizer).n_vocab == 300 < load(a.tokenizer).n_vocab


def test_interrupted_step_is_not_taken_as_done(tmp_path, corpus, monkeypatch):
    cfg = config(tmp_path, corpus)

    def broken(texts, *a, **k):
        next(iter(texts))
        raise KeyboardInterrupt  # as if stopped during the step

    monkeypatch.setattr(Tokenizer, "train_from_iterator", broken)
    with pytest.raises(KeyboardInterrupt):
        prep.prepare_data(cfg, log=lambda s: None)
    monkeypatch.undo()
    key_dir = os.path.join(cfg.out, "cache", prep.cache_key(cfg)[0])
    assert os.path.isdir(os.path.join(key_dir, "text")) and not os.path.exists(os.path.join(key_dir, "tokenizer"))
    lines = []
    got = prep.prepare_data(cfg, log=lines.append)
    assert any("reusing cleaned text" in line for line in lines) and any("trained" in line for line in lines)
    assert TokenDataset(got.train).n_docs > 30


def test_shards_of_another_tokenizer_are_encoded_again(tmp_path, corpus):
    cfg = config(tmp_path, corpus)
    first = prep.prepare_data(cfg, log=lambda s: None)
    other = Tokenizer.train_from_iterator(["something else entirely"] * 3, 300)
    other.save(first.tokenizer)
    lines = []
    got = prep.prepare_data(cfg, log=lines.append)
    assert any("encoding again" in line for line in lines)
    assert TokenDataset(got.train).tokenizer_sha256 == file_sha256(first.tokenizer)


def test_text_input_errors(tmp_path, corpus):
    with pytest.raises(FileNotFoundError, match="data.text: .*missing.jsonl"):
        prep.prepare_data(config(tmp_path, str(tmp_path / "missing.jsonl")))
    with pytest.raises(ValueError, match="stdin"):
        prep.prepare_data(config(tmp_path, "-"))
    with pytest.raises(ValueError, match="nothing to train on"):
        prep.prepare_data(from_dict(TrainConfig, {"out": str(tmp_path), "data": {"text": []}}))


def test_unusable_text_is_refused_with_counts_by_reason(tmp_path):
    """Data with no usable document failed at the tokenizer step with "input directory .../cache/<key>/text
    contains no (non-hidden) files" (the cleaning report above it hidden by --quiet), and that empty folder
    was cached; now the cleaning step says what happened to the documents, on one line, and caches nothing."""
    junk = tmp_path / "junk.jsonl"
    junk.write_text('not json\n{"text": ""}\n')
    lines = []
    with pytest.raises(ValueError) as e:
        prep.prepare_data(config(tmp_path, str(junk)), log=lines.append)
    msg = str(e.value)
    assert msg.startswith(f"data.text ['{junk}']: no usable documents: 2 read, 0 kept; ") and "\n" not in msg
    assert "removed 1 empty" in msg and "malformed 1 bad_json" in msg and f"e.g. {junk}:1: bad_json" in msg
    assert not list((tmp_path / "runs" / "cache").glob("*/text"))  # nothing cached: the next run cleans again


# ---- given token shards ---------------------------------------------------------------------------

@pytest.fixture()
def shards(tmp_path):
    tok = Tokenizer.train_from_iterator(["hello world, hello shards"] * 5, 300)
    tok_path = str(tmp_path / "tok.fastlm")
    tok.save(tok_path)
    for name in ("train", "val"):
        w = TokenShardWriter(str(tmp_path / name), vocab_size=tok.n_vocab, tokenizer_sha256=file_sha256(tok_path))
        w.add(tok.encode("hello world")); w.close()
    return tmp_path, tok_path


def tokens_config(tmp_path, **data):
    return from_dict(TrainConfig, {"out": str(tmp_path / "runs"), "data": data})


def test_given_tokens_are_checked_and_returned(shards):
    d, tok_path = shards
    got = prep.prepare_data(tokens_config(d, tokens=[str(d / "train")], val_tokens=[str(d / "val")],
                                          tokenizer=tok_path))
    assert got.tokenizer == tok_path and got.cache_dir == ""
    assert got.train == [str(d / "train" / "tokens-00000.json")] and got.val == [str(d / "val" / "tokens-00000.json")]
    assert not os.path.exists(d / "runs")  # nothing written


def test_given_tokens_refuse_a_mismatch(shards):
    d, tok_path = shards
    with pytest.raises(ValueError, match="data.tokenizer is empty"):
        prep.prepare_data(tokens_config(d, tokens=[str(d / "train")]))
    with pytest.raises(FileNotFoundError, match="data.tokenizer: no tokenizer file"):
        prep.prepare_data(tokens_config(d, tokens=[str(d / "train")], tokenizer=str(d / "nope.fastlm")))
    with pytest.raises(FileNotFoundError, match="data.tokens: .*absent"):
        prep.prepare_data(tokens_config(d, tokens=[str(d / "absent")], tokenizer=tok_path))
    other = Tokenizer.train_from_iterator(["other text"] * 5, 300)
    other_path = str(d / "other.fastlm")
    other.save(other_path)
    with pytest.raises(ValueError, match="data.tokens: .*tokens-00000.json was encoded with tokenizer sha256"):
        prep.prepare_data(tokens_config(d, tokens=[str(d / "train")], tokenizer=other_path))
    w = TokenShardWriter(str(d / "val2"), vocab_size=other.n_vocab, tokenizer_sha256=file_sha256(other_path))
    w.add([1, 2]); w.close()
    with pytest.raises(ValueError, match="data.val_tokens: .*val2"):
        prep.prepare_data(tokens_config(d, tokens=[str(d / "train")], val_tokens=[str(d / "val2")], tokenizer=tok_path))


def test_tokenizer_never_sees_the_validation_documents(tmp_path, corpus, monkeypatch):
    from fastlm.train.data import holdout_split

    seen = []
    real_train = Tokenizer.train_from_iterator
    monkeypatch.setattr(Tokenizer, "train_from_iterator", classmethod(
        lambda cls, texts, *a, **k: real_train.__func__(cls, seen.extend(texts) or seen, *a, **k)))
    got = prep.prepare_data(config(tmp_path, corpus, val_fraction=0.1), log=lambda s: None)
    cleaned = [r.data["text"] for r in read_records(os.path.join(got.cache_dir, "text"))]
    train_docs, val_docs = holdout_split(len(cleaned), 0.1)  # the trainer's split of the same documents
    assert len(val_docs) >= 3 and seen == [cleaned[i] for i in train_docs]
    key = prep.cache_key(config(tmp_path, corpus, val_fraction=0.1))[0]
    assert prep.cache_key(config(tmp_path, corpus, val_fraction=0.2))[0] != key
    assert prep.cache_key(config(tmp_path, corpus, val_fraction=0.1, val_tokens=["v"]))[0] == key


def test_text_mode_val_tokens_must_use_the_runs_tokenizer(tmp_path, corpus, shards):
    d, _ = shards
    with pytest.raises(ValueError, match="data.val_tokens: .*encode them with that tokenizer"):
        prep.prepare_data(config(tmp_path, corpus, val_tokens=[str(d / "val")]), log=lambda s: None)
    got = prep.prepare_data(config(tmp_path, corpus), log=lambda s: None)
    tok = load(got.tokenizer)
    w = TokenShardWriter(str(tmp_path / "myval"), vocab_size=tok.n_vocab, tokenizer_sha256=file_sha256(got.tokenizer))
    w.add(tok.encode("held-out text")); w.close()
    again = prep.prepare_data(config(tmp_path, corpus, val_tokens=[str(tmp_path / "myval")]), log=lambda s: None)
    assert again.val == [str(tmp_path / "myval" / "tokens-00000.json")] and again.tokenizer == got.tokenizer
