"""Odd real-world inputs to the data-stage CLI and the tokenizer: each test is a bug that such an
input used to hit (lost or double-counted records, a lossy round trip)."""

import contextlib
import io
import json
import os

import pytest

from corpora import PYDOC
from fastlm.cli.main import main
from fastlm.data.io import expand_inputs
from fastlm.tokenizer import Tokenizer


def cli(*args) -> tuple[int, str]:
    """Run `fastlm ARGS...`; return its exit status and what it printed (stdout + stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([*map(str, args)])
    return rc, out.getvalue() + err.getvalue()


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


# ---- sentencepiece: a literal U+2581 in text ---------------------------------------------------------

@pytest.fixture(scope="module", params=["bpe", "unigram"])
def spm_tok(request):
    texts = [PYDOC[k] for k in sorted(PYDOC)][:60]
    return Tokenizer.train_from_iterator(texts, 800, backend="sentencepiece", model_type=request.param)


@pytest.mark.parametrize("text", ["\u2581", "a\u2581b", "\u2581\u2581 \u2581", "sparkline \u2581\u2582\u2583\u2585\u2587\u2588",
                                  "<|bos|>\u2581", "\u2581<|bos|>"])
def test_sentencepiece_round_trips_u2581(spm_tok, text):
    # U+2581 (LOWER ONE EIGHTH BLOCK, in sparklines and block-drawing text) is sentencepiece's own
    # whitespace symbol: it was encoded as a space and decoded as " ", so decode(encode(x)) != x.
    assert spm_tok.decode(spm_tok.encode(text, disallowed_special=())) == text
    assert spm_tok.decode_batch(spm_tok.encode_batch([text, "x"], disallowed_special=())) == [text, "x"]
    ids = spm_tok.encode(text, allowed_special="all")
    assert spm_tok.decode(ids) == text


# ---- the same input file named twice -----------------------------------------------------------------

def test_a_file_named_in_two_spellings_is_read_once(tmp_path, monkeypatch):
    # `a.jsonl ./a.jsonl` (or a file and the folder holding it, or a symlink to it) read the file
    # twice: every record counted and written twice, while `a.jsonl a.jsonl` read it once.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    write_jsonl(tmp_path / "d" / "a.jsonl", [{"text": "one"}, {"text": "two"}])
    os.symlink("a.jsonl", tmp_path / "d" / "link.jsonl")
    assert expand_inputs(["d/a.jsonl", "./d/a.jsonl", str(tmp_path / "d" / "a.jsonl")]) == ["d/a.jsonl"]
    assert expand_inputs(["./d/a.jsonl", "d"]) == ["./d/a.jsonl"]  # the link is the same file
    rc, out = cli("data", "stats", "--json", "d/a.jsonl", "./d/a.jsonl", "d/")
    assert rc == 0 and json.loads(out)["documents"] == 2


# ---- -o naming an input file ---------------------------------------------------------------------------

def _classifier(tmp_path) -> str:
    from fastlm.data.classifier import TextClassifier

    path = str(tmp_path / "m.cls")
    TextClassifier.train(["good text", "bad text"] * 4, ["ok", "bad"] * 4, buckets=2**10, epochs=1).save(path)
    return path


@pytest.mark.parametrize("command", ["convert", "classify", "train-classifier"])
def test_output_that_is_an_input_file_is_refused_and_the_input_kept(tmp_path, command):
    # `convert in.jsonl -o in.jsonl` replaced the input with its converted records: the records that
    # were malformed or not convertible were gone for good (classify: the malformed ones; train-
    # classifier: the whole data file, replaced by a model).
    rows = [{"instruction": "say hi", "output": "hi", "label": "ok"}, {"text": "plain", "label": "bad"},
            {"instruction": "say bye", "output": "bye", "label": "bad"}]
    path = tmp_path / "in.jsonl"
    write_jsonl(path, rows)
    original = path.read_bytes() + b"not json\n"
    path.write_bytes(original)
    extra = {"convert": ["--to", "messages"], "classify": ["-m", _classifier(tmp_path)],
             "train-classifier": ["--valid-fraction", "0", "--buckets", "1024", "--epochs", "1"]}[command]
    for spelling in (str(path), os.path.join(str(tmp_path), ".", "in.jsonl")):
        rc, out = cli("data", command, str(path), "-o", spelling, *extra)
        assert rc == 2 and "in.jsonl" in out and "is also an input" in out, out
        assert path.read_bytes() == original
    rc, out = cli("data", command, str(path), "-o", str(tmp_path / "other.out"), *extra)  # elsewhere: fine
    assert rc == 0, out


# ---- config files -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, body", [("c.toml", "[dedup]\nthreshold = 0.7\n"), ("c.yaml", "dedup:\n  threshold: 0.7\n")])
def test_config_file_with_a_utf8_bom(tmp_path, name, body):
    # a TOML config saved by a Windows editor (UTF-8 with BOM) failed: "c.toml:1:1: invalid TOML:
    # Invalid statement" for a character that no editor shows; YAML and the data readers accept it
    from fastlm.config import load_config_file

    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    assert load_config_file(str(path)) == {"dedup": {"threshold": 0.7}}


# ---- text files in paragraph mode: old Mac line ends, Unicode blank lines ---------------------------

def test_paragraphs_split_at_lone_cr_and_unicode_blank_lines(tmp_path):
    from fastlm.data.readers import read_records
    from fastlm.data.records import ErrorLog

    cases = {
        b"mac one\rmac two\r\rmac three\r": ["mac one\nmac two", "mac three"],  # old Mac: \r alone
        b"one\n\xc2\xa0\ntwo\n\xe2\x80\xa8\nthree\n": ["one", "two", "three"],  # NBSP, U+2028 lines
        b"keep\n\xff\nbad byte alone\n": None,  # a line of one invalid byte is not blank: reported
    }
    for i, (body, want) in enumerate(cases.items()):
        path = tmp_path / f"p{i}.txt"
        path.write_bytes(body)
        log = ErrorLog()
        got = [r.data["text"] for r in read_records(str(path), text_mode="paragraphs", errors=log)]
        if want is None:
            assert got == [] and [s.reason for s in log.samples] == ["invalid_utf8"]
        else:
            assert got == want and log.total == 0


def test_jsonl_bom_at_the_start_of_a_later_line_is_ignored(tmp_path):
    # `cat a.jsonl b.jsonl` of files that each start with a BOM: b's first record was bad_json
    from fastlm.data.readers import read_records
    from fastlm.data.records import ErrorLog

    bom = "\ufeff".encode()
    path = tmp_path / "cat.jsonl"
    path.write_bytes(bom + b'{"text": "a"}\n' + bom + b'{"text": "b"}\n')
    log = ErrorLog()
    assert [r.data["text"] for r in read_records(str(path), errors=log)] == ["a", "b"]
    assert log.total == 0


def test_python_dash_m_fastlm_is_the_fastlm_command():
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(
        __import__("fastlm").__file__))))
    r = subprocess.run([sys.executable, "-m", "fastlm", "--help"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0 and "usage: fastlm" in r.stdout, r.stderr


@pytest.mark.parametrize("backend", ["native", "sentencepiece"])
def test_tokenizer_train_without_text_is_a_clear_error(tmp_path, backend):
    # native BPE wrote a bytes-only tokenizer "on 0 documents"; sentencepiece failed with its
    # internal check "[!sentences_.empty()]"
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n{}\n")
    out = tmp_path / "tok"
    rc, text = cli("tokenizer", "train", str(bad), "--vocab-size", "300", "-o", out, "--quiet",
                   "--backend", backend)
    assert rc == 2 and "no text to train on" in text and "malformed" in text, text
    assert not out.exists()


def test_tokenizer_train_says_when_the_data_supports_fewer_ids(tmp_path):
    path = write_jsonl(tmp_path / "tiny.jsonl", [{"text": "ab ab ab"}] * 3)
    rc, text = cli("tokenizer", "train", path, "--vocab-size", "5000", "-o", tmp_path / "tok", "--quiet")
    assert rc == 0 and "fewer than --vocab-size 5000" in text, text
