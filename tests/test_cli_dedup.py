"""`fastlm data dedup` end to end through fastlm.cli.main.main: one shot, staged == one shot, errors."""

import glob
import json
import os
import random

import pytest

import reference_dedup as ref
from fastlm.cli.main import main
from fastlm.data import dedup
from fastlm.data.readers import read_records
from fastlm.data.records import ErrorLog


def dedup_cli(*args):
    return main(["data", "dedup", *map(str, args)])


def write_jsonl(path, rows, bad_after=None, bad=b""):
    with open(path, "wb") as f:
        for i, r in enumerate(rows):
            f.write(json.dumps(r).encode() + b"\n")
            if i == bad_after:
                f.write(bad)
    return path


def kept_records(paths):
    return [r.data for r in read_records(sorted(paths), errors=ErrorLog(strict=True))]


@pytest.fixture(scope="module")
def docs():
    return ref.real_documents(60)


@pytest.fixture
def corpus(tmp_path, docs):
    """40 documents + an exact copy (case/punctuation differ), a near copy, an empty one and 3 bad lines."""
    rng = random.Random(0)
    rows = [{"id": f"d{i}", "text": t, "meta": {"n": i}} for i, t in enumerate(docs[:40])]
    rows.append({"id": "exact", "text": docs[0].upper() + "!!", "meta": {"n": -1}})
    rows.append({"id": "near", "text": ref.perturb(docs[1], 0.01, rng), "meta": {"n": -2}})
    rows.append({"id": "empty", "text": "", "meta": {}})
    path = write_jsonl(tmp_path / "in.jsonl", rows, bad_after=3, bad=b'{not json\n{"id": "notext"}\n')
    with open(path, "ab") as f:
        f.write(b'{"text": "bad \xff utf8"}\n')
    return path, rows


def test_one_shot_removes_copies_keeps_fields_and_counts_add_up(corpus, tmp_path, capsys, docs):
    path, rows = corpus
    out = tmp_path / "out"
    assert dedup_cli(path, "-o", out) == 0
    rep = json.loads((out / "report.json").read_text())
    kept = kept_records(glob.glob(str(out / "shard-*.jsonl")))
    assert [r["id"] for r in kept] == [r["id"] for r in rows if r["id"] not in ("exact", "near")]
    assert kept == [r for r in rows if r["id"] not in ("exact", "near")]  # every field, in input order
    assert rep["removed"] == {"exact_dup": 1, "near_dup": 1}
    assert rep["malformed"] == {"bad_json": 1, "invalid_utf8": 1, "missing_field": 1}
    assert rep["documents_in"] == len(rows) + 3 == rep["kept"] + rep["malformed_total"] + rep["removed_total"]
    assert [(s["source"], s["line"], s["reason"]) for s in rep["malformed_samples"]] == [
        (str(path), 5, "bad_json"), (str(path), 6, "missing_field"), (str(path), len(rows) + 3, "invalid_utf8")]
    assert rep["clusters"] == 2
    members = sorted(m for c in rep["largest_clusters"] for m in c["members"])
    assert members == sorted([f"{path}:1", f"{path}:{len(rows)}", f"{path}:2", f"{path}:{len(rows) + 1}"])
    assert {c["sample"] for c in rep["largest_clusters"]} == {docs[0][:300], docs[1][:300]}
    assert rep["params"]["dedup"]["near"] == "minhash"
    assert sorted(os.listdir(out)) == ["report.json", "shard-00000.jsonl"]  # no staging left
    text = capsys.readouterr().out
    assert "removed: exact_dup" in text and "removed: near_dup" in text and "kept" in text


def test_output_folder_inside_the_input_folder_is_not_read_back(corpus, tmp_path):
    # `dedup data/ -o data/out` run twice used to read the first run's shards as input the second time
    path, rows = corpus
    data = tmp_path / "data"
    data.mkdir()
    os.replace(path, data / "in.jsonl")
    out = data / "out"
    reports = []
    for _ in range(2):
        assert dedup_cli(data, "-o", out) == 0
        reports.append(json.loads((out / "report.json").read_text()))
    assert reports[0]["documents_in"] == reports[1]["documents_in"] == len(rows) + 3
    assert reports[1]["kept"] == reports[0]["kept"] and reports[1]["removed"] == reports[0]["removed"]
    assert len(kept_records(glob.glob(str(out / "shard-*.jsonl")))) == reports[0]["kept"]
    assert dedup_cli(out, "-o", out) == 0  # the output folder given as the input is read
    assert json.loads((out / "report.json").read_text())["documents_in"] == reports[0]["kept"]


def test_one_shot_strict_stops_at_file_line_and_writes_nothing(corpus, tmp_path, capsys):
    path, _ = corpus
    out = tmp_path / "out"
    assert dedup_cli(path, "-o", out, "--strict", "--quiet") == 2
    err = capsys.readouterr().err
    assert f"{path}:5: bad_json" in err and "Traceback" not in err
    assert os.listdir(out) == []


def test_exact_and_simhash_methods(corpus, tmp_path, docs):
    path, rows = corpus
    assert dedup_cli(path, "-o", tmp_path / "exact", "--method", "exact", "--quiet") == 0
    rep = json.loads((tmp_path / "exact" / "report.json").read_text())
    assert rep["removed"] == {"exact_dup": 1} and rep["params"]["dedup"]["near"] == "none"
    ids = [r["id"] for r in kept_records(glob.glob(str(tmp_path / "exact" / "shard-*")))]
    assert "near" in ids and "exact" not in ids

    # SimHash: the expected removals are the library's (its own tests check it against a reference).
    rng = random.Random(1)
    rows = rows + [{"id": "one-word", "text": docs[5].replace(" ", " one ", 1)},
                   {"id": "far", "text": ref.perturb(docs[6], 0.3, rng)}]
    src = write_jsonl(tmp_path / "sim.jsonl", rows)
    texts = [r["text"] for r in rows]
    e = dedup.exact_dedup(texts)
    live = [i for i in range(len(texts)) if e.keep[i]]
    s = dedup.simhash_dedup([texts[i] for i in live], k=5)
    removed = {rows[i]["id"] for i in range(len(rows)) if not e.keep[i]}
    removed |= {rows[live[j]]["id"] for j in range(len(live)) if not s.keep[j]}
    assert {"exact", "one-word"} <= removed and "far" not in removed
    assert dedup_cli(src, "-o", tmp_path / "sim", "--method", "simhash", "--simhash-k", "5", "--quiet") == 0
    rep = json.loads((tmp_path / "sim" / "report.json").read_text())
    got = {r["id"] for r in kept_records(glob.glob(str(tmp_path / "sim" / "shard-*")))}
    assert got == {r["id"] for r in rows} - removed
    assert rep["removed"] == {"exact_dup": 1, "near_dup": len(removed) - 1}
    assert rep["params"]["dedup"]["simhash_k"] == 5


def test_parquet_output_and_rerun_replaces_earlier_shards(corpus, tmp_path):
    path, rows = corpus
    out = tmp_path / "out"
    out.mkdir()
    (out / "shard-00007.jsonl").write_text('{"text": "stale"}\n')
    (out / "notes.txt").write_text("not ours")
    assert dedup_cli(path, "-o", out, "--output-format", "parquet", "--quiet") == 0
    assert sorted(os.listdir(out)) == ["notes.txt", "report.json", "shard-00000.parquet"]
    assert len(kept_records([str(out / "shard-00000.parquet")])) == len(rows) - 2
    small = write_jsonl(tmp_path / "small.jsonl", rows[:3])
    assert dedup_cli(small, "-o", out, "--quiet") == 0
    assert sorted(os.listdir(out)) == ["notes.txt", "report.json", "shard-00000.jsonl"]
    assert [r["id"] for r in kept_records([str(out / "shard-00000.jsonl")])] == ["d0", "d1", "d2"]


# ------------------------------------------------------------------------------ staged


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """3 JSONL shards of real text with near copies (1-5% edits) and exact copies across shards."""
    d = tmp_path_factory.mktemp("shards")
    texts = ref.with_near_duplicates(ref.real_documents(240), frac=0.4, seed=3)
    texts += [texts[5], texts[100].lower(), texts[7], "", "tiny"]
    random.Random(4).shuffle(texts)
    rows = [{"id": i, "text": t, "meta": {"len": len(t)}} for i, t in enumerate(texts)]
    cuts = [0, 90, 91, len(rows)]  # uneven, one shard with a single document
    paths = [write_jsonl(d / f"s{k}.jsonl", rows[a:b], bad_after=0 if k == 0 else None, bad=b"[1]\n")
             for k, (a, b) in enumerate(zip(cuts, cuts[1:]))]
    return paths


def run_staged(tmp_path, shards, flags=(), sig_flags=None, cluster_flags=(), filter_flags=()):
    sig_flags = sig_flags or [[] for _ in shards]
    for k, p in enumerate(shards):
        assert dedup_cli("--stage", "signatures", p, "-o", tmp_path / f"sigs/part-{k}.npz", "--shard", k,
                         "--quiet", *sig_flags[k]) == 0
    assert dedup_cli("--stage", "bands", *sorted(glob.glob(str(tmp_path / "sigs/*.npz"))),
                     "-o", tmp_path / "keys", "--quiet", *flags) == 0
    rc = dedup_cli("--stage", "cluster", *glob.glob(str(tmp_path / "keys/*.npz")), "-o", tmp_path / "clusters.npz",
                   "--quiet", *cluster_flags)
    if rc:
        return rc
    for k in reversed(range(len(shards))):  # any order: each worker writes only its part-K files
        assert dedup_cli("--stage", "filter", shards[k], "--clusters", tmp_path / "clusters.npz", "--shard", k,
                         "-o", tmp_path / "staged", "--quiet", *filter_flags) == 0
    return 0



@pytest.mark.parametrize("sig, band, cluster", [
    ([], [], []),
    ([], [], ["--keep", "longest"]),
    ([], [], ["--no-exact"]),
    (["--hash", "datasketch", "--num-perm", "64", "--ngram", "3"], ["--threshold", "0.7"], []),
    (["--num-perm", "64"], ["--bands", "16", "--rows", "4"], []),
])
def test_staged_equals_one_shot(tmp_path, shards, sig, band, cluster):
    assert run_staged(tmp_path, shards, flags=band, sig_flags=[sig] * len(shards), cluster_flags=cluster) == 0
    flags = sig + band + cluster
    assert dedup_cli(*shards, "-o", tmp_path / "one", "--verify", "signature", "--quiet", *flags) == 0

    one = json.loads((tmp_path / "one" / "report.json").read_text())
    parts = [json.loads((tmp_path / "staged" / f"part-{k:05d}.report.json").read_text()) for k in range(3)]
    staged_rows = kept_records(glob.glob(str(tmp_path / "staged" / "part-*.jsonl")))
    assert staged_rows == kept_records(glob.glob(str(tmp_path / "one" / "shard-*.jsonl")))
    for key in ("documents_in", "kept", "clusters", "bytes_in", "bytes_out"):
        assert sum(p[key] for p in parts) == one[key], key
    for key in ("removed", "malformed"):
        total = {}
        for p in parts:
            for reason, n in p[key].items():
                total[reason] = total.get(reason, 0) + n
        assert total == one[key], key
    assert one["malformed"] == {"not_object": 1}
    assert one["removed"].get("near_dup", 0) > 10
    assert ("exact_dup" in one["removed"]) == ("--no-exact" not in flags)
    assert one["params"]["dedup"]["threshold"] == parts[0]["params"]["dedup"]["threshold"]
    for p in parts:
        assert p["documents_in"] == p["kept"] + p["malformed_total"] + p["removed_total"]
    # The largest cluster of the one-shot report is one shard's largest, with its sample.
    best = one["largest_clusters"][0]
    assert any(c["size"] == best["size"] and c["sample"] == best["sample"] for p in parts for c in p["largest_clusters"])


def test_staged_mixed_parameters_refused(tmp_path, shards, capsys):
    rc = run_staged(tmp_path, shards, sig_flags=[[], ["--ngram", "3"], []])
    err = capsys.readouterr().err
    assert rc == 2 and "fastlm: error: cannot combine" in err and "part-0.npz (ngram=5)" in err
    assert "part-1.npz (ngram=3)" in err and "same parameters" in err and "Traceback" not in err

    assert dedup_cli("--stage", "signatures", shards[1], "-o", tmp_path / "sigs/part-1.npz", "--shard", 1, "--quiet") == 0
    assert dedup_cli("--stage", "bands", tmp_path / "sigs/part-1.npz", "-o", tmp_path / "keys",
                     "--threshold", "0.7", "--bands", "21", "--rows", "6", "--quiet") == 0  # 0.8's banding
    assert dedup_cli("--stage", "cluster", *glob.glob(str(tmp_path / "keys/*.npz")), "-o", tmp_path / "c.npz") == 2
    err = capsys.readouterr().err
    assert "part-0.npz (threshold=0.8)" in err and "part-1.npz (threshold=0.7)" in err
    assert dedup_cli("--stage", "bands", *glob.glob(str(tmp_path / "sigs/*.npz")), "-o", tmp_path / "keys", "--quiet") == 0
    assert dedup_cli("--stage", "cluster", *glob.glob(str(tmp_path / "keys/*.npz")), "-o", tmp_path / "c.npz",
                     "--threshold", "0.9") == 2
    assert "differs from threshold=0.8" in capsys.readouterr().err
    assert dedup_cli("--stage", "cluster", *glob.glob(str(tmp_path / "keys/*.npz")), "-o", tmp_path / "c.npz") == 0
    # The filter stage checks that it reads the documents its signature stage hashed.
    assert dedup_cli("--stage", "filter", shards[2], "--clusters", tmp_path / "c.npz", "--shard", 0,
                     "-o", tmp_path / "out", "--quiet") == 2
    assert "not the inputs of its signature stage" in capsys.readouterr().err
    assert dedup_cli("--stage", "filter", shards[0], "--clusters", tmp_path / "c.npz", "--shard", 0,
                     "-o", tmp_path / "out", "--text-field", "meta", "--quiet") == 2
    assert "not the inputs of its signature stage" in capsys.readouterr().err
    edited = tmp_path / "s1-edited.jsonl"
    edited.write_text(shards[1].read_text().replace('"text": "', '"text": "edited ', 1))
    assert dedup_cli("--stage", "filter", edited, "--clusters", tmp_path / "c.npz", "--shard", 1,
                     "-o", tmp_path / "out", "--quiet") == 2
    assert "document 0 of the inputs differs from shard 1's document" in capsys.readouterr().err
    assert dedup_cli("--stage", "filter", shards[0], "--clusters", tmp_path / "c.npz", "--shard", 5,
                     "-o", tmp_path / "out", "--quiet") == 2
    assert "no shard 5" in capsys.readouterr().err
    assert not glob.glob(str(tmp_path / "out" / "part-*"))


def test_staged_filter_rerun_replaces_only_its_part(tmp_path, shards):
    assert run_staged(tmp_path, shards) == 0
    out = tmp_path / "staged"
    before = sorted(os.listdir(out))
    (out / "part-00001-00009.jsonl").write_text('{"text": "stale"}\n')
    assert dedup_cli("--stage", "filter", shards[1], "--clusters", tmp_path / "clusters.npz", "--shard", 1,
                     "-o", out, "--quiet") == 0
    assert sorted(os.listdir(out)) == before


@pytest.mark.parametrize("argv, message", [
    (["--threshold", "1.5"], "--threshold must be in (0, 1]"),
    (["--threshold", "0"], "--threshold must be in (0, 1]"),
    (["--bands", "20", "--rows", "7"], "exceeds --num-perm 128"),
    (["--bands", "20"], "--bands and --rows go together"),
    (["--num-perm", "0"], "--num-perm must be in"),
    (["--ngram", "0"], "--ngram must be in [1, 1024]"),
    (["--method", "simhash", "--simhash-k", "64"], "--simhash-k must be in [0, 63]"),
    (["--method", "simhash", "--threshold", "0.7"], "--threshold applies to --method minhash only"),
    (["--simhash-k", "2"], "--simhash-k applies to --method simhash only"),
    (["--method", "exact", "--no-exact"], "removes nothing"),
    (["--shard", "0"], "--shard does not apply to one-shot dedup"),
    (["--hash", "datasketch", "--seed", "-1"], "datasketch seeds"),
    (["--stage", "signatures"], "needs --shard K"),
    (["--stage", "signatures", "--shard", "0", "--method", "simhash"], "SimHash and exact-only staging are not implemented"),
    (["--stage", "signatures", "--shard", "0", "--threshold", "0.7"], "--threshold does not apply to --stage signatures"),
    (["--stage", "filter", "--shard", "0"], "needs --clusters"),
    (["--stage", "filter", "--shard", "0", "--clusters", "c.npz", "--num-perm", "64"],
     "--num-perm does not apply to --stage filter (parameters come from the input files)"),
    (["--stage", "cluster", "--verify", "jaccard"], "signature estimate only"),
    (["--stage", "cluster", "--no-exact", "--format", "jsonl"], "--format does not apply to --stage cluster"),
])
def test_bad_flags_exit_2_with_a_message(corpus, tmp_path, capsys, argv, message):
    path, _ = corpus
    assert dedup_cli(path, "-o", tmp_path / "out", "--quiet", *argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def test_stage_bands_refuses_too_many_rows(tmp_path, shards, capsys):
    assert dedup_cli("--stage", "signatures", shards[1], "-o", tmp_path / "s.npz", "--shard", 1,
                     "--num-perm", "32", "--quiet") == 0
    assert dedup_cli("--stage", "bands", tmp_path / "s.npz", "-o", tmp_path / "k", "--bands", "8", "--rows", "5") == 2
    assert "use at most num_perm=32" in capsys.readouterr().err


def test_one_shot_odd_inputs_counted_never_a_traceback(tmp_path, capsys):
    # A lone surrogate escape and a Parquet timestamp column each used to end the run with a bare
    # UnicodeEncodeError / TypeError when the kept records were written; a truncated .gz input with
    # an EOFError traceback.
    import gzip
    import datetime

    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "s.jsonl"
    src.write_bytes(b'{"text": "lone \\ud800 surrogate"}\n{"text": "fine text one"}\n{"text": "Fine  text ONE"}\n')
    pq.write_table(pa.table({"text": ["parquet row"], "ts": [datetime.datetime(2020, 1, 1)]}), str(tmp_path / "t.parquet"))
    out = tmp_path / "out"
    assert dedup_cli(src, tmp_path / "t.parquet", "-o", out, "--quiet") == 0
    rep = json.loads((out / "report.json").read_text())
    assert (rep["documents_in"], rep["kept"], rep["removed"], rep["malformed"]) == (
        4, 2, {"exact_dup": 1}, {"invalid_utf8": 1})
    assert kept_records(glob.glob(str(out / "shard-*.jsonl"))) == [
        {"text": "fine text one"}, {"text": "parquet row", "ts": "2020-01-01T00:00:00"}]
    (tmp_path / "cut.jsonl.gz").write_bytes(gzip.compress(src.read_bytes())[:-12])
    assert dedup_cli(tmp_path / "cut.jsonl.gz", "-o", tmp_path / "out2", "--quiet") == 2
    assert "cut.jsonl.gz: corrupt or truncated gzip data" in capsys.readouterr().err
    assert not glob.glob(str(tmp_path / "out2" / "*"))  # nothing written
