"""`fastlm tokenizer` end to end: train on builtin:pydoc, encode to shards, read them back with
numpy.memmap and decode == the documents; encode-text / decode; data-stage shards as input."""

import glob
import hashlib
import json
import os

import numpy as np
import pytest

from fastlm.cli.main import main
from fastlm.data.readers import read_records, record_text
from fastlm.tokenizer import load


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cli") / "tok")
    assert main(["tokenizer", "train", "builtin:pydoc", "--vocab-size", "700", "-o", out, "--quiet"]) == 0
    return out


def test_train_outputs(tok_dir, capsys):
    assert sorted(os.listdir(tok_dir)) == ["tokenizer.fastlm", "tokenizer.json"]
    tok = load(tok_dir)
    assert tok.n_vocab == 700 and "<|bos|>" in tok.special_tokens
    assert load(os.path.join(tok_dir, "tokenizer.json")).tokens == tok.tokens


def test_train_prints_summary(tmp_path, capsys):
    out = str(tmp_path / "t")
    assert main(["tokenizer", "train", "builtin:pydoc", "--vocab-size", "400", "-o", out, "--quiet",
                 "--pattern", "gpt2", "--min-frequency", "5"]) == 0
    text = capsys.readouterr().out
    assert "trained 400 ids" in text and "bytes/token" in text and "longest tokens" in text
    assert load(out).pattern_name == "gpt2"


@pytest.mark.parametrize("separator", ["bos", "none"])
def test_encode_shards_read_back(tok_dir, tmp_path, separator):
    out = str(tmp_path / "tokens")
    assert main(["tokenizer", "encode", "builtin:pydoc", "--tokenizer", tok_dir, "-o", out, "--quiet",
                 "--separator", separator, "--shard-tokens", "50000", "--threads", "2"]) == 0
    tok = load(tok_dir)
    docs = [record_text(r) for r in read_records("builtin:pydoc")]
    headers = sorted(glob.glob(os.path.join(out, "*.json")))
    assert len(headers) > 1  # several shards
    sha = hashlib.sha256(open(os.path.join(tok_dir, "tokenizer.fastlm"), "rb").read()).hexdigest()
    got = []
    for h in headers:
        header = json.load(open(h))
        assert header["dtype"] == "uint16" and header["vocab_size"] == 700 and header["tokenizer_sha256"] == sha
        tokens = np.memmap(os.path.join(out, header["bin"]), dtype=np.uint16, mode="r")
        offsets = np.fromfile(os.path.join(out, header["idx"]), dtype=np.uint64)
        assert tokens.size == header["n_tokens"] == offsets[-1] and offsets.size == header["n_docs"] + 1
        for a, b in zip(offsets[:-1], offsets[1:]):
            ids = tokens[a:b].tolist()
            if separator == "bos":
                assert ids[0] == tok.special_tokens["<|bos|>"]
                ids = ids[1:]
            got.append(tok.decode(ids))
    assert got == docs


def test_encode_data_stage_jsonl_and_eos_error(tok_dir, tmp_path, capsys):
    src = tmp_path / "docs.jsonl"
    src.write_text('{"text": "hello <|bos|> world"}\n{"text": "second"}\nnot json\n')
    out = str(tmp_path / "tokens")
    assert main(["tokenizer", "encode", str(src), "--tokenizer", tok_dir, "-o", out, "--quiet"]) == 0
    assert "skipped 1 malformed" in capsys.readouterr().err
    header = json.load(open(glob.glob(os.path.join(out, "*.json"))[0]))
    tok = load(tok_dir)
    tokens = np.fromfile(os.path.join(out, header["bin"]), dtype=np.uint16).tolist()
    bos = tok.special_tokens["<|bos|>"]
    assert tokens.count(bos) == 2  # document text "<|bos|>" is ordinary text, never the control token
    assert tok.decode(tokens) == "<|bos|>hello <|bos|> world<|bos|>second"
    assert main(["tokenizer", "encode", str(src), "--tokenizer", tok_dir, "-o", out, "--separator", "eos"]) == 2
    assert "--separator bos" in capsys.readouterr().err


def test_encode_text_and_decode(tok_dir, capsys):
    assert main(["tokenizer", "encode-text", "Hello world", "--tokenizer", tok_dir]) == 0
    ids = [int(x) for x in capsys.readouterr().out.splitlines()[0].split()]
    assert ids == load(tok_dir).encode("Hello world")
    assert main(["tokenizer", "decode", *map(str, ids), "--tokenizer", tok_dir]) == 0
    assert capsys.readouterr().out == "Hello world\n"
    assert main(["tokenizer", "decode", "99999", "--tokenizer", tok_dir]) == 2
    assert "99999" in capsys.readouterr().err
    assert main(["tokenizer", "decode", "99999999999999999999", "--tokenizer", tok_dir]) == 2  # was OverflowError
    assert "99999999999999999999 is out of range" in capsys.readouterr().err


def test_missing_tokenizer_is_a_clear_error(tmp_path, capsys):
    assert main(["tokenizer", "encode-text", "x", "--tokenizer", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err


def test_shard_writer_uint32_and_read_shard(tmp_path):
    from fastlm.tokenizer.shards import TokenShardWriter, read_shard

    w = TokenShardWriter(str(tmp_path), vocab_size=70_000, tokenizer_sha256="abc", shard_tokens=3)  # documents are never split
    docs = [[69_999, 1, 2], [], [65_536], [3, 4, 5, 6]]
    for d in docs:
        w.add(d)
    with pytest.raises(ValueError, match="out of range"):
        w.add([70_000])
    headers = w.close()
    assert w.total_docs == 4 and w.total_tokens == 8 and len(headers) == 2
    got = []
    for h in headers:
        header, tokens, offsets = read_shard(h)
        assert header["dtype"] == "uint32" and tokens.dtype == np.uint32
        got += [tokens[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])]
    assert got == docs


def test_shard_writer_replaces_an_earlier_longer_run(tmp_path):
    """Writing into a directory that holds more shards from an earlier run removes the extra ones
    (a reader of the directory took them as part of the new data); other prefixes stay."""
    from fastlm.train.data import TokenDataset
    from fastlm.tokenizer.shards import TokenShardWriter

    def write(docs, prefix="tokens"):
        w = TokenShardWriter(str(tmp_path), vocab_size=300, tokenizer_sha256="x", prefix=prefix, shard_tokens=2)
        for d in docs:
            w.add(d)
        return w.close()

    write([[7, 7]], prefix="other")
    assert len(write([[1, 2], [3, 4], [5, 6]])) == 3
    assert len(write([[9, 9, 9]])) == 1
    names = sorted(os.listdir(tmp_path))
    assert names == sorted(f"{p}-00000.{e}" for p in ("tokens", "other") for e in ("json", "bin", "idx"))
    ds = TokenDataset(os.path.join(tmp_path, "tokens-00000.json"))
    assert ds.n_docs == 1 and ds.document(0).tolist() == [9, 9, 9]
    assert TokenDataset(str(tmp_path)).n_docs == 2  # this run's document and the other prefix's


def test_shard_writer_and_reader_reject_bad_input(tmp_path):
    from fastlm.tokenizer.shards import TokenShardWriter, read_shard

    with pytest.raises(ValueError, match="shard_tokens"):
        TokenShardWriter(str(tmp_path), vocab_size=300, tokenizer_sha256="x", shard_tokens=0)
    with pytest.raises(ValueError, match="vocab_size"):  # ids >= 2**32 would wrap in uint32
        TokenShardWriter(str(tmp_path), vocab_size=2**32 + 1, tokenizer_sha256="x")
    w = TokenShardWriter(str(tmp_path), vocab_size=300, tokenizer_sha256="x")
    with pytest.raises(ValueError, match="integers"):
        w.add(np.array([1.5, 2.7]))  # was written as [1, 2]
    w.add([1, 2, 3])
    (h,) = w.close()
    with open(h.replace(".json", ".bin"), "ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match="tokens-00000.json: tokens-00000.bin holds 7 bytes"):
        read_shard(h)
    for text in ("{", json.dumps({"format": "fastlm-tokens"})):
        with open(h, "w") as f:
            f.write(text)  # raised JSONDecodeError / KeyError without the file
        with pytest.raises(ValueError, match="tokens-00000.json: "):
            read_shard(h)


def test_tiktoken_file_given_to_from_file_gets_a_hint(tmp_path, tok_dir):
    body = tmp_path / "ranks.tiktoken"
    body.write_text("".join(open(os.path.join(tok_dir, "tokenizer.fastlm")).readlines()[1:]))
    with pytest.raises(ValueError, match="from_tiktoken_file"):
        load(str(body))
