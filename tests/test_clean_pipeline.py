"""End-to-end tests of `fastlm data clean` (library and CLI): counts add up, nothing is lost."""

import glob
import json
import os
import random

import pytest

from fastlm.cli.main import main
from fastlm.data.pipeline import CleanConfig, clean
from fastlm.data.readers import read_records
from fastlm.data.records import ErrorLog


def _paragraphs(n):
    """Real prose: Shakespeare-free pydoc topics long enough to pass the quality filters."""
    import pydoc_data.topics

    texts = [t for t in pydoc_data.topics.topics.values() if 400 < len(t.split()) < 3000]
    return texts[:n]


def _perturb(text, frac, rng):
    words = text.split()
    for _ in range(max(1, int(len(words) * frac))):
        i = rng.randrange(len(words))
        op = rng.choice("rid")
        if op == "r":
            words[i] = rng.choice(["alpha", "beta", "gamma", "delta"])
        elif op == "i":
            words.insert(i, "epsilon")
        elif len(words) > 1:
            del words[i]
    return " ".join(words)


@pytest.fixture
def corpus(tmp_path):
    rng = random.Random(0)
    docs = _paragraphs(30)
    rows = [{"id": f"d{i}", "text": t, "meta": {"n": i}} for i, t in enumerate(docs)]
    rows.append({"id": "exact", "text": docs[0], "meta": {"n": -1}})  # exact copy of d0
    rows.append({"id": "near", "text": _perturb(docs[1], 0.01, rng), "meta": {"n": -2}})  # near copy of d1
    rows.append({"id": "empty", "text": "   \n ", "meta": {}})
    rows.append({"id": "short", "text": "too short to be a document", "meta": {}})
    path = tmp_path / "in.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i, r in enumerate(rows):
            f.write(json.dumps(r) + "\n")
            if i == 3:
                f.write("{not json\n")  # line 5
        f.write('{"id": "notext"}\n')
    with open(path, "ab") as f:
        f.write(b'{"text": "bad \xff utf8"}\n')
    return path, rows


def test_clean_counts_add_up_and_fields_kept(corpus, tmp_path):
    path, rows = corpus
    out = tmp_path / "out"
    rep = clean([str(path)], str(out))
    assert rep.documents_in == len(rows) + 3
    assert rep.malformed == {"bad_json": 1, "missing_field": 1, "invalid_utf8": 1}
    assert rep.removed["exact_dup"] == 1
    assert rep.removed["near_dup"] == 1
    assert rep.removed["empty"] == 1
    assert any(r.startswith("gopher_quality:") for r in rep.removed)
    assert rep.kept + sum(rep.removed.values()) + sum(rep.malformed.values()) == rep.documents_in
    assert rep.clusters == 2

    kept = list(read_records(glob.glob(str(out / "shard-*.jsonl")), errors=ErrorLog(strict=True)))
    assert len(kept) == rep.kept
    ids = [r.data["id"] for r in kept]
    assert "d0" in ids and "exact" not in ids and "d1" in ids and "near" not in ids
    assert all(set(r.data) == {"id", "text", "meta"} for r in kept)
    by_id = {r["id"]: r for r in rows}
    assert all(r.data["meta"] == by_id[r.data["id"]]["meta"] for r in kept)

    report = json.loads((out / "report.json").read_text())
    assert report["documents_in"] == rep.documents_in and report["kept"] == rep.kept
    assert report["malformed_samples"][0]["line"] == 5
    members = {m for c in report["largest_clusters"] for m in c["members"]}
    assert members == {f"{path}:1", f"{path}:{len(rows) - 2}", f"{path}:2", f"{path}:{len(rows) - 1}"}  # +1: the bad line 5
    assert sorted(os.listdir(out)) == sorted(["report.json"] + [os.path.basename(p) for p in rep.outputs])


def test_clean_strict_names_file_and_line_and_writes_nothing(corpus, tmp_path, capsys):
    path, _ = corpus
    out = tmp_path / "out"
    rc = main(["data", "clean", str(path), "-o", str(out), "--strict", "--quiet"])
    assert rc == 2
    assert f"{path}:5: bad_json" in capsys.readouterr().err
    assert not glob.glob(str(out / "shard-*")) and not glob.glob(str(out / ".staging-*"))


def test_clean_interrupted_leaves_no_partial_output(corpus, tmp_path, monkeypatch):
    path, _ = corpus
    out = tmp_path / "out"
    clean([str(path)], str(out))
    before = {p: open(p, "rb").read() for p in glob.glob(str(out / "*"))}

    from fastlm.data import pipeline

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline.json, "dumps", boom)
    with pytest.raises(KeyboardInterrupt):
        clean([str(path)], str(out))
    after = {p: open(p, "rb").read() for p in glob.glob(str(out / "*"))}
    assert after == before  # earlier complete output untouched, no staging left
    assert not glob.glob(str(out / ".staging-*"))


def test_clean_cli_config_file_and_overrides(corpus, tmp_path, capsys):
    path, _ = corpus
    cfg = tmp_path / "c.yaml"
    cfg.write_text("dedup:\n  near: none\n  exact: false\nfilters:\n  gopher_quality: false\n  gopher_repetition: false\n")
    out = tmp_path / "out"
    assert main(["data", "clean", str(path), "-o", str(out), "--config", str(cfg), "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["removed"] == {"empty": 1}

    toml = tmp_path / "c.toml"
    toml.write_text("[dedup]\nthreshold = 0.7\n[output]\nformat = \"jsonl\"\ncompression = \"zst\"\n")
    assert main(["data", "clean", str(path), "-o", str(out), "--config", str(toml), "--set", "dedup.num_perm=64", "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["params"]["dedup"]["threshold"] == 0.7 and report["params"]["dedup"]["num_perm"] == 64
    assert all(p.endswith(".jsonl.zst") for p in report["outputs"])
    assert not glob.glob(str(out / "*.jsonl"))  # the earlier run's plain shards were replaced

    bad = tmp_path / "bad.yaml"
    bad.write_text("dedup:\n  treshold: 0.7\n")
    assert main(["data", "clean", str(path), "-o", str(out), "--config", str(bad), "--quiet"]) == 2
    assert "treshold" in capsys.readouterr().err


def test_clean_chat_records_keep_their_layout(tmp_path):
    rows = [
        {"id": 1, "messages": [{"role": "user", "content": "Caf\u0065\u0301  au lait?\r\n"}, {"role": "assistant", "content": "Yes,   please."}]},
        {"id": 2, "instruction": "Say hi", "input": "", "output": "   "},
        {"id": 3, "conversations": [{"from": "human", "value": "Name a color."}, {"from": "gpt", "value": "Blue."}]},
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = CleanConfig()
    cfg.filters.gopher_quality = cfg.filters.gopher_repetition = False
    rep = clean([str(path)], str(tmp_path / "out"), cfg)
    assert rep.removed == {"instruct:empty_response": 1}
    kept = [json.loads(l) for p in rep.outputs for l in open(p, encoding="utf-8")]
    assert [k["id"] for k in kept] == [1, 3]
    assert kept[0]["messages"][0]["content"] == "Caf\u00e9 au lait?"  # NFC + whitespace
    assert kept[0]["messages"][1]["content"] == "Yes, please."
    assert kept[1]["conversations"][1] == {"from": "gpt", "value": "Blue."}


def test_clean_parquet_output(corpus, tmp_path):
    pytest.importorskip("pyarrow")
    path, _ = corpus
    cfg = CleanConfig()
    cfg.output.format = "parquet"
    rep = clean([str(path)], str(tmp_path / "out"), cfg)
    assert rep.outputs and rep.outputs[0].endswith(".parquet")
    kept = list(read_records(rep.outputs, errors=ErrorLog(strict=True)))
    assert len(kept) == rep.kept


def test_clean_builtin_pydoc(tmp_path):
    rep = clean(["builtin:pydoc"], str(tmp_path / "out"))
    import pydoc_data.topics

    assert rep.documents_in == len(pydoc_data.topics.topics)
    assert 0 < rep.kept < rep.documents_in
    rep.check()


@pytest.mark.parametrize("override, message", [
    ("dedup.threshold=1.5", "dedup.threshold must be in (0, 1]"),
    ("dedup.num_perm=0", "num_perm must be in [1, 65536]"),
    ("dedup.bands=[3, 100]", "dedup.bands=3 x rows=100"),
    ("dedup.near=simhash", None),
    ("num_threads=-2", "num_threads must be >= 0"),  # was accepted (fastlm data dedup refuses --threads -2)
    ("batch_size=0", "batch_size must be >= 1"),  # was accepted
])
def test_clean_refuses_bad_dedup_parameters_before_reading(tmp_path, capsys, monkeypatch, override, message):
    def never(*a, **k):
        raise AssertionError("input read before the parameters were checked")

    if message is not None:
        monkeypatch.setattr("fastlm.data.readers.read_records", never)
    rc = main(["data", "clean", "builtin:pydoc", "-o", str(tmp_path / "o"), "--set", override, "--quiet"])
    err = capsys.readouterr().err
    if message is None:
        assert rc == 0 and json.loads((tmp_path / "o" / "report.json").read_text())["params"]["dedup"]["near"] == "simhash"
    else:
        assert rc == 2 and message in err, err
        assert not (tmp_path / "o" / "report.json").exists()


def test_clean_normalization_flags(tmp_path):
    path = tmp_path / "page.jsonl"
    page = "<html><head><style>p{}</style></head><body><p>Cafe\u0301 m\u00b2 &amp; $x^2$ \\textbf{bold}</p></body></html>"
    path.write_text(json.dumps({"id": 1, "text": page}) + "\n")

    def cleaned(*flags):
        out = tmp_path / ("o" + "".join(flags))
        args = ["data", "clean", str(path), "-o", str(out), "--no-quality", "--quiet", *flags]
        assert main(args) == 0
        (shard,) = glob.glob(str(out / "shard-*.jsonl"))
        return json.loads(open(shard, encoding="utf-8").read())["text"]

    assert cleaned() == page.replace("e\u0301", "\u00e9")  # NFC only: HTML and LaTeX are off by default
    text = cleaned("--html")
    assert "<" not in text and "p{}" not in text and "&" in text and "m\u00b2" in text
    text = cleaned("--html", "--unicode-form", "NFKC", "--latex", "drop-math")
    assert "m2" in text and "x^2" not in text and "bold" in text and "textbf" not in text
    assert "x^2" in cleaned("--html", "--latex", "keep-math")
    assert "Cafe\u0301 m\u00b2" in cleaned("--html", "--unicode-form", "none")


def test_output_folder_reads_back_without_its_report(tmp_path):
    out = tmp_path / "out"
    rep = clean(["builtin:pydoc"], str(out))
    assert (out / "report.json").exists()
    log = ErrorLog()
    again = list(read_records([str(out)], errors=log))
    assert len(again) == rep.kept and log.total == 0  # report.json is not read as a record
