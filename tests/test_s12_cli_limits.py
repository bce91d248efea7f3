"""Options of dedup, tokenizer, eval and export at their limits: huge numbers refused naming the option
and its range, --examples bounded by the task's distinct problems, outputs under a regular file
refused naming the path, and the staged dedup pipeline never reading its own outputs as documents."""
import json
import os
import random
import time

import numpy as np
import pytest

from fastlm.cli.main import main
from fastlm.data.dedup_files import is_dedup_file
from fastlm.posttrain import tasks as T
from fastlm.posttrain.tasks import get_task

HUGE = [str(10**12), str(10**30)]  # 10**30 does not fit a C++ size_t: was a pybind11 TypeError traceback


@pytest.fixture()
def docs(tmp_path):
    p = tmp_path / "docs.jsonl"
    p.write_text("".join(json.dumps({"text": f"the quick brown fox number {i % 5} jumps over the lazy dog"}) + "\n"
                         for i in range(20)))
    return str(p)


def _refused(capsys, argv, needle):
    assert main(argv) == 2
    cap = capsys.readouterr()
    assert needle in cap.err and "Traceback" not in cap.err, cap.err
    assert cap.out == ""  # refused before any work or output
    return cap.err


# ------------------------------------------------------------------------------ huge numbers

@pytest.mark.parametrize("value", HUGE)
@pytest.mark.parametrize("cmd,needle", [
    (["data", "dedup", "{docs}", "-o", "{out}", "--quiet", "--ngram"], "--ngram must be in [1, 1024]"),
    (["data", "dedup", "{docs}", "-o", "{out}", "--quiet", "--method", "simhash", "--ngram"], "--ngram must be in [1, 1024]"),
    (["data", "dedup", "{docs}", "-o", "{out}/s.npz", "--stage", "signatures", "--shard", "0", "--ngram"],
     "--ngram must be in [1, 1024]"),
    (["tokenizer", "encode", "{docs}", "--tokenizer", "{out}/none", "-o", "{out}", "--shard-tokens"],
     "--shard-tokens must be in [1, 4294967296]"),
    (["tokenizer", "encode", "{docs}", "--tokenizer", "{out}/none", "-o", "{out}", "--batch-docs"],
     "--batch-docs must be in [1, 1048576]"),
    (["tokenizer", "train", "{docs}", "-o", "{out}", "--quiet", "--vocab-size"], "--vocab-size must be in [256, "),
    (["eval", "--ckpt", "{out}/none", "--device", "cpu", "{docs}", "--batch"], "--batch must be in [0, 4096]"),
    (["eval", "--ckpt", "{out}/none", "--device", "cpu", "--task", "add", "--batch"], "--batch must be in [0, 4096]"),
    (["eval", "--ckpt", "{out}/none", "--device", "cpu", "{docs}", "--seed"], "--seed must be in [0, 4294967295]"),
])
def test_huge_numbers_refused(capsys, tmp_path, docs, cmd, needle, value):
    # was: --ngram/--vocab-size/--min-frequency 10**30 a pybind11 TypeError traceback (after reading every
    # record), 10**12 taken (--vocab-size: refused by the trainer after counting the whole corpus);
    # --shard-tokens/--batch-docs/--batch taken (one shard / batch / forward holding all the data);
    # an MLM --seed past ~1.8e13 "Overflow when unpacking long long" after loading the model
    argv = [a.format(docs=docs, out=tmp_path / "out") for a in cmd] + [value]
    _refused(capsys, argv, needle)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv,needle", [
    (["tokenizer", "encode", "{docs}", "--tokenizer", "{out}/none", "-o", "{out}", "--batch-docs", "0"],
     "--batch-docs must be in [1, "),
    (["eval", "--ckpt", "{out}/none", "--device", "cpu", "{docs}", "--batch", "-1"], "--batch must be in [0, 4096]"),
    (["eval", "--ckpt", "{out}/none", "--device", "cpu", "--task", "add", "--seed", "-1"], "--seed must be in [0, "),
    (["tokenizer", "train", "{docs}", "-o", "{out}", "--vocab-size", "0"], "--vocab-size must be in [256, "),
    (["tokenizer", "train", "{docs}", "-o", "{out}", "--quiet", "--vocab-size", "300", "--min-frequency", HUGE[1]],
     "--min-frequency must be in [1, "),  # past int64: was a pybind11 TypeError traceback
])
def test_other_limits_refused(capsys, tmp_path, docs, argv, needle):
    _refused(capsys, [a.format(docs=docs, out=tmp_path / "out") for a in argv], needle)


def test_ngram_at_the_limit_runs(capsys, tmp_path, docs):
    assert main(["data", "dedup", docs, "-o", str(tmp_path / "out"), "--ngram", "1024", "--quiet"]) == 0
    report = json.load(open(tmp_path / "out" / "report.json"))
    assert report["kept"] == 5  # a whole document is one shingle: only exact copies are near-duplicates


# ------------------------------------------------------------------------------ eval --task --examples

def test_task_sizes_count_every_problem_once():
    for name, task in T.TASKS.items():
        inputs = list(task._inputs())
        assert len(set(inputs)) == len(inputs) == task.size("val") + task.size("train")
        rng = random.Random(0)
        assert {task._draw(rng) for _ in range(3000)} <= set(inputs)  # every draw is one of them
    assert (get_task("add").size("val"), get_task("add").size("train")) == (993, 9007)
    assert get_task("copy").size("val") + get_task("copy").size("train") == 14 * 13 * (1 + 12 * (1 + 11 * (1 + 10)))


def _old_examples(task, split, n, seed):
    """The draw loop as it was: these results must not change for n up to half the split."""
    rng = random.Random(f"{task.name}:{split}:{seed}")
    seen, out = set(), []
    while len(out) < n:
        ex = task.make(task._draw(rng))
        if ex.prompt not in seen and T._is_val(task.name, ex.prompt) == (split == "val"):
            seen.add(ex.prompt)
            out.append(ex)
    return out


@pytest.mark.parametrize("name,split,n,seed", [("add", "val", 496, 3), ("copy", "val", 300, 0),
                                               ("sort", "train", 200, 1)])
def test_examples_unchanged_below_half(name, split, n, seed):
    task = get_task(name)
    assert [e.prompt for e in task.examples(split, n, seed)] == [e.prompt for e in _old_examples(task, split, n, seed)]


def test_examples_past_half_and_all(monkeypatch):
    task = get_task("add")
    every = task.examples("val", 993, seed=0)
    assert len({e.prompt for e in every}) == 993 and all(T._is_val("add", e.prompt) for e in every)
    some = task.examples("val", 700, seed=1)
    assert len({e.prompt for e in some}) == 700 and [e.prompt for e in some] == [e.prompt for e in task.examples("val", 700, seed=1)]

    def no_draws(rng):
        raise AssertionError("drew a problem")

    monkeypatch.setattr(task, "_draw", no_draws)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="has only 993 distinct val problems, asked for n=994"):
        task.examples("val", 994)  # was: 200 * 994 draws before saying so
    assert time.perf_counter() - t0 < 0.5


@pytest.mark.parametrize("examples,needle", [
    ("994", "--examples must be <= 993 with --task add"),
    ("1000", "--examples must be <= 993 with --task add"),
    (str(10**12), "--examples must be <= 26"),
])
def test_eval_examples_bounded_by_the_task(capsys, tmp_path, examples, needle):
    t0 = time.perf_counter()
    task = "copy" if examples == str(10**12) else "copy,add"
    _refused(capsys, ["eval", "--ckpt", str(tmp_path / "none"), "--device", "cpu", "--task", task,
                      "--examples", examples], needle)
    assert time.perf_counter() - t0 < 3


# ------------------------------------------------------------------------------ outputs under a file

@pytest.mark.parametrize("argv,flag", [
    (["export", "--ckpt", "{tmp}", "{bad}"], "OUT"),
    (["data", "dedup", "{docs}", "-o", "{bad}", "--quiet"], "-o"),
    (["data", "dedup", "{docs}", "-o", "{bad}/s.npz", "--stage", "signatures", "--shard", "0"], "-o"),
    (["data", "dedup", "{tmp}/k", "-o", "{bad}", "--stage", "bands"], "-o"),
    (["data", "dedup", "{tmp}/k", "-o", "{bad}/c.npz", "--stage", "cluster"], "-o"),
    (["data", "dedup", "{docs}", "-o", "{bad}", "--stage", "filter", "--shard", "0", "--clusters", "{tmp}/c.npz"], "-o"),
    (["tokenizer", "train", "{docs}", "-o", "{bad}", "--vocab-size", "300", "--quiet"], "-o"),
    (["tokenizer", "encode", "{docs}", "--tokenizer", "{tmp}/none", "-o", "{bad}", "--quiet"], "-o"),
])
def test_output_under_a_file_refused(capsys, tmp_path, docs, argv, flag):
    # was: "[Errno 20] Not a directory" (tokenizer train: after the whole training) or "[Errno 17] File exists"
    (tmp_path / "afile").write_text("x")
    bad = str(tmp_path / "afile" / "sub")
    argv = [a.format(docs=docs, tmp=tmp_path, bad=bad) for a in argv]
    err = _refused(capsys, argv, f"{tmp_path / 'afile'} is a file, not a directory")
    assert f"error: {flag} {bad}" in err  # names the option and the path given
    assert (tmp_path / "afile").read_text() == "x"


@pytest.mark.parametrize("argv,needle", [
    (["data", "dedup", "{docs}", "-o", "{file}", "--quiet"], "-o {file}: is a file; name a folder"),
    (["tokenizer", "train", "{docs}", "-o", "{file}", "--vocab-size", "300", "--quiet"], "-o {file}: is a file"),
    (["data", "dedup", "{docs}", "-o", "{tmp}", "--stage", "signatures", "--shard", "0"], "-o {tmp}: is a directory"),
])
def test_output_of_the_wrong_kind_refused(capsys, tmp_path, docs, argv, needle):
    (tmp_path / "afile").write_text("x")
    fill = {"docs": docs, "tmp": str(tmp_path), "file": str(tmp_path / "afile")}
    _refused(capsys, [a.format(**fill) for a in argv], needle.format(**fill))


# ------------------------------------------------------------------------------ staged dedup: own outputs

def _dedup(*argv):
    assert main(["data", "dedup", *map(str, argv)]) == 0


def test_staged_dedup_never_reads_its_outputs(capsys, tmp_path, docs):
    d = tmp_path / "in"
    d.mkdir()
    os.replace(docs, d / "a.jsonl")
    inp = f"{d}{os.sep}"

    def pipeline():
        _dedup(inp, "--stage", "signatures", "--shard", "0", "-o", d / "sigs" / "part-0.npz")
        _dedup(d / "sigs", "--stage", "bands", "-o", d / "keys")
        _dedup(d / "keys", "--stage", "cluster", "-o", d / "clusters.npz")
        _dedup(inp, "--stage", "filter", "--clusters", d / "clusters.npz", "--shard", "0", "-o", d / "out", "--quiet")
        return json.load(open(d / "out" / "part-00000.report.json"))

    for run in range(2):  # the second run finds the first's signatures, keys, clusters and kept shards in in/
        report = pipeline()
        out = capsys.readouterr().out
        # was: the filter counted the .npz files as 3 malformed records, and the re-run's signatures
        # read the kept shard back: "25 documents (2 malformed skipped)"
        assert "shard 0: 20 documents (0 malformed skipped)" in out, (run, out)
        assert report["documents_in"] == 20 and report["malformed"] == {} and report["kept"] == 5
    for named in (d / "out", d / "out" / "*.jsonl"):  # an input that names the filter's folder is read
        _dedup(named, "--stage", "signatures", "--shard", "0", "-o", tmp_path / "again.npz")
        assert "shard 0: 5 documents (0 malformed skipped)" in capsys.readouterr().out


def test_is_dedup_file(tmp_path, docs):
    from fastlm.data.dedup_files import write_signatures

    write_signatures(str(tmp_path / "s.bin"), ["a b c"], shard=0)  # any name
    np.savez(tmp_path / "other.npz", header=np.zeros(3, np.uint8))
    (tmp_path / "cut.npz").write_bytes((tmp_path / "s.bin").read_bytes()[:40])
    assert is_dedup_file(str(tmp_path / "s.bin"))
    assert not any(is_dedup_file(str(p)) for p in (tmp_path / "other.npz", tmp_path / "cut.npz", docs))


def test_stage_output_replacing_an_input_refused(capsys, tmp_path, docs):
    # was: the signatures replaced the input shard itself; bands -o the signatures' folder replaced each
    # signature file by its keys; the clusters replaced a band-key file
    original = open(docs).read()
    _refused(capsys, ["data", "dedup", docs, "--stage", "signatures", "--shard", "0", "-o", docs],
             "is also an input")
    assert open(docs).read() == original
    sigs, keys = tmp_path / "sigs", tmp_path / "keys"
    _dedup(docs, "--stage", "signatures", "--shard", "0", "-o", sigs / "part-0.npz", "--quiet")
    before = (sigs / "part-0.npz").read_bytes()
    _refused(capsys, ["data", "dedup", str(sigs), "--stage", "bands", "-o", str(sigs)],
             "holds the signature file")
    assert (sigs / "part-0.npz").read_bytes() == before
    _dedup(sigs, "--stage", "bands", "-o", keys, "--quiet")
    before = (keys / "part-0.npz").read_bytes()
    _refused(capsys, ["data", "dedup", str(keys / "part-0.npz"), "--stage", "cluster", "-o", str(keys / "part-0.npz")],
             "is also an input")
    assert (keys / "part-0.npz").read_bytes() == before
