"""`fastlm data convert` and `fastlm data stats` end to end through fastlm.cli.main.main."""

import gzip
import io
import json
import sys

import numpy as np
import pytest
import zstandard

from fastlm.cli.main import main

CHATS = [
    {"id": 1, "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"},
                                {"from": "human", "value": "Bye"}, {"from": "gpt", "value": "Ciao"}]},
    {"id": 2, "messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
    {"id": 3, "instruction": "Echo", "input": "x", "output": "x"},
    {"id": 4, "text": "plain document"},  # readable, but not convertible
    {"id": 5, "messages": [{"role": "user", "content": "unanswered"}]},  # readable, not convertible to alpaca
]


def write_input(tmp_path, extra=b""):
    path = tmp_path / "chats.jsonl"
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in CHATS) + extra)
    return str(path)


def read_jsonl(path):
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    elif data[:4] == b"\x28\xb5\x2f\xfd":
        data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    return [json.loads(x) for x in data.decode().splitlines()]


def test_convert_to_alpaca_counts_and_report(tmp_path, capsys):
    src = write_input(tmp_path, b'{"broken\n{"messages": [{"role": "wizard", "content": "x"}]}\n')
    out, report = tmp_path / "out.jsonl", tmp_path / "report.json"
    assert main(["data", "convert", src, "--to", "alpaca", "-o", str(out), "--report", str(report)]) == 0
    records = read_jsonl(out)
    assert [(r["id"], r["instruction"], r["output"]) for r in records] == [
        (1, "Hi", "Hello"), (1, "Bye", "Ciao"), (2, "2+2?", "4"), (3, "Echo", "x")]
    assert records[1]["input"] == "User: Hi\n\nAssistant: Hello"
    rep = json.loads(report.read_text())
    assert (rep["records"], rep["read"], rep["converted"], rep["output_records"]) == (7, 5, 3, 4)
    assert rep["read"] == rep["converted"] + rep["failed"]["total"]
    assert rep["records"] == rep["read"] + rep["malformed"]["total"]
    assert rep["failed"]["by_reason"] == {"not_chat": 1, "no_assistant_turn": 1}
    assert rep["malformed"]["by_reason"] == {"bad_json": 1, "unknown_role": 1}
    assert [(s["line"], s["reason"]) for s in rep["malformed"]["samples"]] == [(6, "bad_json"), (7, "unknown_role")]
    assert [(s["line"], s["reason"]) for s in rep["failed"]["samples"]] == [(4, "not_chat"), (5, "no_assistant_turn")]
    text = capsys.readouterr().out
    assert "read 7 records: 5 well-formed, 2 malformed (skipped)" in text and "wrote 4 alpaca records" in text
    assert f"{src}:4: not_chat" in text


@pytest.mark.parametrize("suffix", ["", ".gz", ".zst"])
def test_convert_round_trip_sharegpt_messages(tmp_path, suffix):
    src = write_input(tmp_path)
    mid, back = tmp_path / f"m.jsonl{suffix}", tmp_path / "back.jsonl"
    assert main(["data", "convert", src, "--to", "messages", "-o", str(mid)]) == 0
    assert main(["data", "convert", str(mid), "--to", "sharegpt", "-o", str(back)]) == 0
    got = read_jsonl(back)
    assert got[0] == CHATS[0]  # sharegpt -> messages -> sharegpt is exact
    assert [r["id"] for r in got] == [1, 2, 3, 5]


def test_convert_strict_stops_with_file_line_and_writes_nothing(tmp_path, capsys):
    src = write_input(tmp_path)
    out = tmp_path / "out.jsonl"
    assert main(["data", "convert", src, "--to", "alpaca", "-o", str(out), "--strict"]) == 2
    err = capsys.readouterr().err
    assert f"{src}:4: not_chat" in err and "--strict" in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["chats.jsonl"]


def test_convert_stdin_to_stdout(tmp_path, monkeypatch, capsysbinary):
    data = b"".join(json.dumps(r).encode() + b"\n" for r in CHATS[:2])
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(gzip.compress(data))))
    assert main(["data", "convert", "-", "--to", "sharegpt", "-o", "-"]) == 0
    captured = capsysbinary.readouterr()
    lines = [json.loads(x) for x in captured.out.decode().splitlines()]
    assert lines[0] == CHATS[0] and lines[1]["conversations"][1] == {"from": "gpt", "value": "4"}
    assert b"read 2 records" in captured.err  # the summary goes to stderr when stdout is the data


def test_convert_missing_input(tmp_path, capsys):
    assert main(["data", "convert", str(tmp_path / "none*.jsonl"), "--to", "alpaca", "-o", str(tmp_path / "o")]) == 2
    assert "matches no file" in capsys.readouterr().err


def test_stats_json_matches_reference(tmp_path, capsys):
    import pydoc_data.topics

    texts = list(pydoc_data.topics.topics.values())
    src = tmp_path / "d.jsonl"
    lines = [json.dumps({"text": t}) for t in texts[:20]] + ["not json", '{"text": 1}']
    src.write_text("\n".join(lines) + "\n")
    assert main(["data", "stats", str(src), "builtin:pydoc", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    ref = texts[:20] + [pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)]
    assert s["documents"] == len(ref) and s["chars"] == sum(map(len, ref))
    assert s["bytes"] == sum(len(t.encode()) for t in ref) and s["words"] == sum(len(t.split()) for t in ref)
    lengths = np.array([len(t) for t in ref])
    assert s["chars_per_doc"]["mean"] == pytest.approx(lengths.mean())
    assert s["chars_per_doc"]["p90"] == pytest.approx(np.percentile(lengths, 90))
    assert s["chars_per_doc"]["max"] == lengths.max()
    assert s["formats"] == {"jsonl": 20, "builtin": len(ref) - 20} and s["files"] == 2
    assert s["malformed"]["by_reason"] == {"bad_json": 1, "wrong_type": 1}
    assert [x["line"] for x in s["malformed"]["samples"]] == [21, 22]


def test_stats_table_with_chat_and_text(tmp_path, capsys):
    write_input(tmp_path)
    (tmp_path / "notes.txt").write_text("para one here\n\npara two\n")
    assert main(["data", "stats", str(tmp_path), "--text-mode", "paragraphs"]) == 0
    out = capsys.readouterr().out
    assert "documents 7" in out and "malformed 0" in out
    assert "jsonl 5" in out and "text 2" in out
    assert "alpaca 1, messages 2, sharegpt 1, text 3" in out


def test_output_piped_into_a_reader_that_stops_early_is_quiet(tmp_path):
    # `fastlm data convert ... -o - | head` used to end with "fastlm: error: [Errno 32] Broken pipe"
    import os
    import subprocess

    src = tmp_path / "chat.jsonl"
    src.write_text("".join(json.dumps({"instruction": f"say {i} " + "word " * 50, "output": "ok"}) + "\n"
                           for i in range(20000)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-m", "fastlm.cli.main", "data", "convert", str(src), "--to",
                             "messages", "-o", "-"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert json.loads(proc.stdout.readline())["messages"][0]["role"] == "user"
    proc.stdout.close()  # the reader leaves, as `head` does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and err == ""
