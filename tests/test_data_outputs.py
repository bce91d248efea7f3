"""Data-stage outputs: a rerun never reads its own earlier outputs back as input, and every JSONL
output is strict JSON (no NaN/Infinity, which orjson, jq and JavaScript refuse)."""

import contextlib
import io
import json
import os
import random

import pytest

from fastlm.cli.main import main
from fastlm.data import io as data_io
from fastlm.data.io import ShardWriter, expand_inputs
from fastlm.data.readers import read_records
from fastlm.data.records import DataError, ErrorLog


def cli(*args) -> str:
    """Run `fastlm data ARGS...`; assert it succeeds and return what it printed."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["data", *map(str, args)])
    assert rc == 0, err.getvalue()
    return out.getvalue() + err.getvalue()


def report(path) -> dict:
    return json.loads(open(path, encoding="utf-8").read())


def strict_loads(line: str):
    """json.loads that refuses NaN/Infinity/-Infinity, as strict JSON readers do."""
    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(line, parse_constant=refuse)


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def train_model(path, texts, labels):
    from fastlm.data.classifier import TextClassifier

    TextClassifier.train(texts, labels, buckets=2**10, epochs=1).save(path)
    return str(path)


# ---- a rerun with -o inside a globbed input --------------------------------------------------------

N = 12  # input records: in/a.jsonl and in/sub/b.jsonl


@pytest.fixture
def tree(tmp_path):
    """in/a.jsonl + in/sub/b.jsonl: distinct instruction records (readable by every command,
    convertible, labeled) and a classifier model outside in/."""
    rng = random.Random(0)
    words = [f"w{i}" for i in range(500)]
    rows = [{"id": i, "instruction": " ".join(rng.choice(words) for _ in range(30)),
             "output": " ".join(rng.choice(words) for _ in range(30)), "label": "ab"[i % 2]} for i in range(N)]
    write_jsonl(tmp_path / "in" / "a.jsonl", rows[:7])
    write_jsonl(tmp_path / "in" / "sub" / "b.jsonl", rows[7:])
    train_model(tmp_path / "model.cls", [r["instruction"] for r in rows], [r["label"] for r in rows])
    return tmp_path


def _clean(d):
    cli("clean", d / "in/**/*.jsonl", "-o", d / "in/out", "--no-quality", "--quiet")
    rep = report(d / "in/out/report.json")
    assert rep["kept"] == rep["documents_in"]  # shards in in/out for the rerun's glob to match
    return rep["documents_in"]


def _dedup(d):
    cli("dedup", d / "in/**/*.jsonl", "-o", d / "in/out", "--quiet")
    rep = report(d / "in/out/report.json")
    assert rep["kept"] == rep["documents_in"]
    return rep["documents_in"]


def _signatures(d):
    """The staged dedup's signature file of the input (shard 0), made once, outside in/."""
    sigs = d / "sigs" / "part-0.npz"
    if not sigs.exists():
        cli("dedup", "--stage", "signatures", d / "in/**/*.jsonl", "-o", sigs, "--shard", 0, "--quiet")
    return sigs


def _dedup_filter(d):
    clusters = d / "clusters.npz"
    if not clusters.exists():
        _signatures(d)
        cli("dedup", "--stage", "bands", d / "sigs/*.npz", "-o", d / "keys", "--quiet")
        cli("dedup", "--stage", "cluster", d / "keys/*.npz", "-o", clusters, "--quiet")
    # reading in/out/part-00000-*.jsonl too used to fail: "the inputs hold 24 documents, shard 0 ... has 12"
    cli("dedup", "--stage", "filter", d / "in/**/*.jsonl", "--clusters", clusters, "--shard", 0,
        "-o", d / "in/out", "--quiet")
    rep = report(d / "in/out/part-00000.report.json")
    return rep["kept"] + rep["removed_total"]


def _dedup_bands(d):
    _signatures(d)  # then sigs/keys/part-0.npz, of the first run, used to be read as a signature file
    line = cli("dedup", "--stage", "bands", d / "sigs/**/*.npz", "-o", d / "sigs/keys")
    return int(line.split(" band-key file")[0])  # one per signature file read


def _dedup_cluster(d):
    if not (d / "keys").exists():
        cli("dedup", "--stage", "bands", _signatures(d), "-o", d / "keys", "--quiet")
    line = cli("dedup", "--stage", "cluster", d / "keys/**/*.npz", "-o", d / "keys/clusters.npz")
    return int(line.split(" documents")[0].replace(",", ""))


def _convert(d):
    cli("convert", d / "in/**/*.jsonl", "--to", "messages", "-o", d / "in/converted.jsonl",
        "--report", d / "convert-report.json")
    return report(d / "convert-report.json")["read"]


def _classify(d):
    cli("classify", d / "in/**/*.jsonl", "-m", d / "model.cls", "-o", d / "in/scored.jsonl")
    return len((d / "in/scored.jsonl").read_text().splitlines())


def _train_classifier(d):
    # in/**/* also matches the model the first run wrote: read as text, it was one more (malformed) record
    printed = cli("train-classifier", d / "in/**/*", "-o", d / "in/model.cls", "--valid-fraction", "0",
                  "--buckets", "1024", "--epochs", "1")
    labeled = int(printed.split("read ")[1].split(" labeled")[0])
    skipped = int(printed.split("skipped ")[1].split(" malformed")[0]) if "skipped " in printed else 0
    return labeled + skipped


# command -> (run it once and return how many records or files it read, how many the input holds)
RERUN = {"clean": (_clean, N), "dedup": (_dedup, N), "dedup --stage filter": (_dedup_filter, N),
         "dedup --stage bands": (_dedup_bands, 1), "dedup --stage cluster": (_dedup_cluster, N),
         "convert": (_convert, N), "classify": (_classify, N), "train-classifier": (_train_classifier, N)}


@pytest.mark.parametrize("command", RERUN)
def test_rerun_with_output_inside_a_globbed_input_reads_only_the_input(tree, command):
    # A glob input used to match the command's own outputs of a previous run (directory inputs
    # already skipped them), so the second run read them as input: doubled counts, or an error.
    run, inputs = RERUN[command]
    assert [run(tree) for _ in range(2)] == [inputs, inputs]


def test_glob_and_directory_expansion_leave_out_outputs_below_the_named_folder(tmp_path):
    for rel in ["in/a.jsonl", "in/sub/b.jsonl", "in/out/shard-00000.jsonl", "in/out/deeper/x.jsonl",
                "in/converted.jsonl", "in/outer.jsonl"]:
        write_jsonl(tmp_path / rel, [{"text": "x"}])
    inputs = [str(tmp_path / r) for r in ["in/a.jsonl", "in/outer.jsonl", "in/sub/b.jsonl"]]
    outputs = [str(tmp_path / "in" / "out"), str(tmp_path / "in" / "converted.jsonl")]

    def expand(pattern):
        return expand_inputs([str(tmp_path / pattern)], exclude=outputs)

    assert expand("in") == expand("in/**/*.jsonl") == expand("in/**") == expand("in/**/*") == inputs
    assert expand("in/*.jsonl") == inputs[:2]
    assert expand("in/*/*.jsonl") == inputs[2:]
    assert expand("in/o*") == [inputs[1]]  # the output folder itself is not matched either
    # an input that names an output, or a folder inside one, is read (as a directory input is)
    shard, deeper = str(tmp_path / "in/out/shard-00000.jsonl"), str(tmp_path / "in/out/deeper/x.jsonl")
    assert expand("in/out") == expand("in/out/**/*.jsonl") == [deeper, shard]
    assert expand("in/out/*.jsonl") == [shard] and expand("in/out/deeper/*") == [deeper]
    assert expand("in/converted.jsonl") == [str(tmp_path / "in/converted.jsonl")]
    with pytest.raises(FileNotFoundError, match="matches no file"):
        expand("in/conv*.jsonl")
    # relative patterns and output paths, and a symlinked input folder, resolve to the same folders
    os.symlink(tmp_path / "in", tmp_path / "link")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert expand_inputs(["link/**/*.jsonl"], exclude=["in/out", "in/converted.jsonl"]) == [
            "link/a.jsonl", "link/outer.jsonl", "link/sub/b.jsonl"]
    finally:
        os.chdir(cwd)


# ---- strict JSON: NaN / Infinity ---------------------------------------------------------------------

def test_nan_and_infinity_in_json_input_are_bad_json_with_file_and_line(tmp_path):
    # Python's json.loads accepts NaN/Infinity/-Infinity and reads 1e400 as inf; such records were
    # kept and written back as bare NaN/Infinity, which is not JSON.
    lines = ['{"text": "ok 1", "score": 0.5}',
             '{"text": "a", "score": NaN}',
             '{"text": "b", "meta": {"scores": [1, -Infinity]}}',
             '{"text": "NaN and Infinity in a string are text", "e": "e100"}',
             '{"text": "c", "score": Infinity}',
             '',
             '{"text": "d", "score": 1e400}',
             '{"text": "ok 2", "tiny": 1e-300, "big": 1.5e308, "n": ' + "9" * 400 + '}']
    path = tmp_path / "n.jsonl"
    path.write_text("\n".join(lines) + "\n")
    log = ErrorLog()
    recs = list(read_records(str(path), errors=log))
    assert [r.line for r in recs] == [1, 4, 8]
    assert [(s.source, s.line, s.reason) for s in log.samples] == [
        (str(path), n, "bad_json") for n in (2, 3, 5, 7)]
    assert [s.detail.split()[0] for s in log.samples[:3]] == ["NaN", "-Infinity", "Infinity"]
    assert "1e400" in log.samples[3].detail
    assert len(recs) + log.total == sum(1 for line in lines if line)  # nothing dropped uncounted
    for r in recs:
        strict_loads(json.dumps(r.data))

    arr = tmp_path / "a.json"
    arr.write_text('[{"text": "x"}, {"text": "y", "v": [NaN]}, {"text": "z"}]')
    log = ErrorLog()
    assert [r.data["text"] for r in read_records(str(arr), errors=log)] == ["x", "z"]
    assert [(s.line, s.reason) for s in log.samples] == [(2, "bad_json")] and "NaN" in log.samples[0].detail

    with pytest.raises(DataError, match=r"n\.jsonl:2: bad_json: NaN"):
        list(read_records(str(path), errors=ErrorLog(strict=True)))


def test_integer_past_the_digit_limit_is_bad_json(tmp_path):
    # json raises a plain ValueError (not JSONDecodeError) for an integer over Python's 4300-digit
    # string conversion limit: it escaped the readers and ended the run.
    huge = "9" * 5000
    path = tmp_path / "big.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b", "n": ' + huge + '}\n{"text": "c"}\n')
    log = ErrorLog()
    assert [r.data["text"] for r in read_records(str(path), errors=log)] == ["a", "c"]
    assert [(s.line, s.reason) for s in log.samples] == [(2, "bad_json")]
    arr = tmp_path / "big.json"
    arr.write_text('[{"text": "a", "n": ' + huge + '}]')
    log = ErrorLog()
    assert list(read_records(str(arr), errors=log)) == []
    assert [(s.line, s.reason) for s in log.samples] == [(1, "bad_json")]


def test_nan_in_jsonl_input_is_counted_in_the_report(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [{"text": f"document number {i}"} for i in range(3)])
    with open(path, "a") as f:
        f.write('{"text": "nan score", "score": NaN}\n')
    out = tmp_path / "out"
    cli("dedup", path, "-o", out, "--quiet")
    rep = report(out / "report.json")
    assert (rep["documents_in"], rep["kept"], rep["malformed"]) == (4, 3, {"bad_json": 1})
    assert (rep["malformed_samples"][0]["line"], rep["malformed_samples"][0]["reason"]) == (4, "bad_json")
    for line in (out / "shard-00000.jsonl").read_text().splitlines():
        strict_loads(line)


@pytest.mark.parametrize("command", ["dedup", "classify"])
def test_parquet_nan_and_infinity_are_written_as_null(tmp_path, command):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    nan, inf = float("nan"), float("inf")
    path = str(tmp_path / "f.parquet")
    pq.write_table(pa.table({
        "text": ["alpha beta", "gamma delta", "epsilon zeta"],
        "score": [nan, inf, 1.5],
        "half": pa.array([-inf, 0.25, None], pa.float32()),
        "vec": [[nan, 1.0], [], [-inf]],
        "meta": [{"x": inf, "n": 1}, {"x": 2.0, "n": 2}, {"x": nan, "n": 3}]}), path)
    if command == "dedup":
        cli("dedup", path, "-o", tmp_path / "out", "--quiet")
        out = tmp_path / "out" / "shard-00000.jsonl"
    else:
        model = train_model(tmp_path / "m.cls", ["alpha beta", "gamma delta"], ["a", "b"])
        out = tmp_path / "scored.jsonl"
        cli("classify", path, "-m", model, "-o", out)
    rows = [strict_loads(line) for line in out.read_text().splitlines()]
    assert [{k: r[k] for k in ("text", "score", "half", "vec", "meta")} for r in rows] == [
        {"text": "alpha beta", "score": None, "half": None, "vec": [None, 1.0], "meta": {"x": None, "n": 1}},
        {"text": "gamma delta", "score": None, "half": 0.25, "vec": [], "meta": {"x": 2.0, "n": 2}},
        {"text": "epsilon zeta", "score": 1.5, "half": None, "vec": [None], "meta": {"x": None, "n": 3}}]


def test_writers_refuse_nan_and_infinity(tmp_path):
    # the JSONL writers (ShardWriter; convert and classify through json_line) wrote bare NaN/Infinity
    for value in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match="cannot be written as strict JSON"):
            with ShardWriter(str(tmp_path / "shards")) as w:
                w.write({"text": "t", "nested": [value]})
        with pytest.raises(ValueError, match="cannot be written as strict JSON"):
            data_io.json_line({"text": "t", "score": value})
    assert not os.path.exists(tmp_path / "shards" / "shard-00000.jsonl")
    assert data_io.json_line({"text": "caf\u00e9", "x": 1.5}) == '{"text": "café", "x": 1.5}'
