"""Data commands at their edges: outputs under a regular file refused before any work, a chat record
whose text field is bad read as the chat it is (convert, RL prompts), dedup --shard bounded, and
tokenizer train options of the other backend (--min-frequency, --pattern, --model-type) refused
where they would be ignored."""
import json

import pytest

from fastlm.cli.main import main
from fastlm.data.readers import read_records
from fastlm.data.records import ErrorLog
from test_s12_cli_limits import _refused  # noqa: F401  (exit 2, the message on stderr, nothing on stdout)

CHAT = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}


@pytest.fixture()
def docs(tmp_path):
    p = tmp_path / "docs.jsonl"
    p.write_text("".join(json.dumps({"text": f"the quick brown fox number {i} jumps over the lazy dog", "label": i % 2})
                         + "\n" for i in range(20)))
    return str(p)


@pytest.fixture()
def model(tmp_path, docs):
    path = str(tmp_path / "m.cls")
    assert main(["data", "train-classifier", docs, "-o", path, "--epochs", "1", "--buckets", "1024"]) == 0
    return path


# ------------------------------------------------------------------------------ outputs under a file

@pytest.mark.parametrize("argv,flag", [
    (["data", "clean", "{docs}", "-o", "{bad}", "--quiet"], "-o"),
    (["data", "convert", "{docs}", "--to", "messages", "-o", "{bad}"], "-o"),
    (["data", "convert", "{docs}", "--to", "messages", "-o", "{tmp}/out.jsonl", "--report", "{bad}"], "--report"),
    (["data", "train-classifier", "{docs}", "-o", "{bad}"], "-o"),
    (["data", "classify", "{docs}", "-m", "{model}", "-o", "{bad}"], "-o"),
])
def test_output_under_a_file_refused(capsys, tmp_path, docs, model, argv, flag):
    # was: "[Errno 20] Not a directory" or "[Errno 17] File exists" (train-classifier: after the whole
    # training; convert --report: after writing every converted record to -o)
    capsys.readouterr()
    (tmp_path / "afile").write_text("x")
    bad = str(tmp_path / "afile" / "sub")
    before = sorted(p.name for p in tmp_path.iterdir())
    argv = [a.format(docs=docs, model=model, tmp=tmp_path, bad=bad) for a in argv]
    err = _refused(capsys, argv, f"{tmp_path / 'afile'} is a file, not a directory")
    assert f"error: {flag} {bad}" in err  # names the option and the path given
    assert sorted(p.name for p in tmp_path.iterdir()) == before and (tmp_path / "afile").read_text() == "x"


@pytest.mark.parametrize("argv,needle", [
    (["data", "clean", "{docs}", "-o", "{file}", "--quiet"], "-o {file}: is a file; name a folder"),
    (["data", "convert", "{docs}", "--to", "messages", "-o", "{tmp}"], "-o {tmp}: is a directory"),
    (["data", "train-classifier", "{docs}", "-o", "{tmp}"], "-o {tmp}: is a directory"),
    (["data", "convert", "{docs}", "--to", "messages", "-o", "{tmp}/o.jsonl", "--report", "{tmp}/o.jsonl"],
     "--report '{tmp}/o.jsonl' is also -o"),
    (["data", "convert", "{docs}", "--to", "messages", "-o", "{tmp}/o.jsonl", "--report", "{docs}"],
     "--report '{docs}' is also an input"),
])
def test_output_of_the_wrong_kind_refused(capsys, tmp_path, docs, argv, needle):
    # was: clean -o FILE "[Errno 17] File exists"; --report naming -o or an input replaced it by the counts
    (tmp_path / "afile").write_text("x")
    original = open(docs).read()
    fill = {"docs": docs, "tmp": str(tmp_path), "file": str(tmp_path / "afile")}
    _refused(capsys, [a.format(**fill) for a in argv], needle.format(**fill))
    assert open(docs).read() == original and not (tmp_path / "o.jsonl").exists()


# ------------------------------------------------------------------------------ chat record, bad text field

def test_reader_takes_a_chat_record_whatever_its_text_field(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in [
        {"text": 5, **CHAT},  # 1 a chat: its text field is never read
        {"text": 5},  # 2 wrong_type: no chat to read instead
        {"text": [1], "messages": [{"role": "wizard", "content": "x"}]},  # 3 the chat's own reason
        {"text": "plain", **CHAT},  # 4 a string text field: read as before
        {"body": None},  # 5 wrong_type (null)
    ]) + "\n")
    log = ErrorLog()
    assert [r.line for r in read_records(str(p), errors=log)] == [1, 4]
    assert [(s.line, s.reason) for s in log.samples] == [(2, "wrong_type"), (3, "unknown_role"), (5, "missing_field")]
    log = ErrorLog()
    assert [r.line for r in read_records(str(p), text_field="body", errors=log)] == [1, 4]
    assert [(s.line, s.reason) for s in log.samples] == [(2, "missing_field"), (3, "unknown_role"), (5, "wrong_type")]


def test_convert_reads_a_chat_record_whose_text_field_is_bad(tmp_path, capsys):
    # was: {"text": 5, "messages": [...]} malformed as wrong_type for a field convert never reads
    src, notes = tmp_path / "c.jsonl", tmp_path / "notes.txt"
    src.write_text("".join(json.dumps(r) + "\n" for r in [{"text": 5, **CHAT}, {"text": 5}, {"text": "plain"},
                                                          {"id": 4, "text": {"x": 1}, **CHAT}]))
    notes.write_text("para one\n\npara two\n")  # plain text is still read (and is no chat)
    out, report = tmp_path / "out.jsonl", tmp_path / "report.json"
    assert main(["data", "convert", str(src), str(notes), "--to", "alpaca", "--text-mode", "paragraphs",
                 "-o", str(out), "--report", str(report)]) == 0
    rep = json.loads(report.read_text())
    assert (rep["read"], rep["converted"], rep["output_records"]) == (5, 2, 2)
    assert rep["read"] == rep["converted"] + rep["failed"]["total"]
    assert rep["malformed"]["by_reason"] == {"wrong_type": 1} and rep["failed"]["by_reason"] == {"not_chat": 3}
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(r["instruction"], r["output"], r["text"]) for r in rows] == [("2+2?", "4", 5), ("2+2?", "4", {"x": 1})]


def test_rl_prompts_read_a_chat_record_whose_prompt_field_is_bad(tmp_path):
    from test_pairs import TOK

    from fastlm.posttrain.rl import _read_prompts
    from fastlm.tokenizer.chat_template import render_prompt

    chats, plain = tmp_path / "p.jsonl", tmp_path / "p.txt"
    chats.write_text(json.dumps({"prompt": 5, **CHAT}) + "\n" + json.dumps({"prompt": "hi"}) + "\n")
    plain.write_text("a plain prompt")
    items = _read_prompts([str(chats), str(plain)], TOK)  # was: "1 malformed RL prompt record(s) (wrong_type 1)"
    assert len(items) == 3 and items[0][0] == render_prompt(TOK, CHAT)
    (tmp_path / "bad.jsonl").write_text(json.dumps({"prompt": 5}) + "\n")  # no chat to read instead
    with pytest.raises(ValueError, match=r"1 malformed RL prompt record\(s\) \(wrong_type 1\)"):
        _read_prompts([str(tmp_path / "bad.jsonl")], TOK)


# ------------------------------------------------------------------------------ dedup --shard

@pytest.mark.parametrize("value", ["100000", str(10**30), pytest.param(str(10**250), id="10**250"), "-1"])
@pytest.mark.parametrize("stage", [
    ["--stage", "signatures", "-o", "{tmp}/s.npz"],
    ["--stage", "filter", "--clusters", "{tmp}/c.npz", "-o", "{tmp}/out"],
])
def test_dedup_shard_bounded(capsys, tmp_path, docs, stage, value):
    # was: 10**30 ran and wrote part-1000000000000000000000000000000-00000.jsonl; 10**250 "File name too long";
    # the filter stage refuses it before opening the (here absent) cluster file
    argv = ["data", "dedup", docs, *[a.format(tmp=tmp_path) for a in stage], "--shard", value]
    _refused(capsys, argv, f"--shard must be in [0, 99999], got {value}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs.jsonl"]


def test_dedup_shard_at_the_limit_runs(capsys, tmp_path, docs):
    assert main(["data", "dedup", docs, "--stage", "signatures", "--shard", "99999", "-o", str(tmp_path / "s.npz")]) == 0
    assert "shard 99999: 20 documents" in capsys.readouterr().out


# ------------------------------------------------------------------------------ tokenizer --min-frequency

def test_min_frequency_refused_with_sentencepiece(capsys, tmp_path, docs):
    # was: silently ignored (sentencepiece's trainer has no minimum pair count)
    _refused(capsys, ["tokenizer", "train", docs, "-o", str(tmp_path / "tok"), "--vocab-size", "400", "--quiet",
                      "--backend", "sentencepiece", "--min-frequency", "5"],
             "--min-frequency applies to --backend native only")
    assert not (tmp_path / "tok").exists()


@pytest.mark.parametrize("backend, flag, value, message", [
    ("sentencepiece", "--pattern", "gpt2", "--pattern applies to --backend native only"),
    ("native", "--model-type", "unigram", "--model-type applies to --backend sentencepiece only")])
def test_other_backends_options_refused(capsys, tmp_path, docs, backend, flag, value, message):
    # was: silently ignored (sentencepiece has no split pattern; the native trainer no model type)
    _refused(capsys, ["tokenizer", "train", docs, "-o", str(tmp_path / "tok"), "--vocab-size", "400", "--quiet",
                      "--backend", backend, flag, value], message)
    assert not (tmp_path / "tok").exists()


@pytest.mark.parametrize("extra,want", [([], 2), (["--min-frequency", "7"], 7), (["--backend", "native"], 2)])
def test_min_frequency_reaches_the_native_trainer(monkeypatch, tmp_path, docs, extra, want):
    from fastlm.tokenizer import Tokenizer

    seen = {}
    train = Tokenizer.train_from_iterator

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return train(*args, **kwargs)

    monkeypatch.setattr(Tokenizer, "train_from_iterator", spy)
    assert main(["tokenizer", "train", docs, "-o", str(tmp_path / "tok"), "--vocab-size", "300", "--quiet", *extra]) == 0
    assert seen["min_frequency"] == want and seen["backend"] == "bpe"
