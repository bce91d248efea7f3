"""Numeric command-line options at their edges: a clear `fastlm: error:` naming the option (exit 2)
before any work, never a traceback, a hang or a silently wrapped value."""
import json

import pytest

from fastlm.cli.main import main

HUGE = str(10**12)


@pytest.fixture()
def docs(tmp_path):
    p = tmp_path / "docs.jsonl"
    p.write_text("".join(json.dumps({"text": f"hello world number {i % 5} the quick brown fox",
                                     "label": "a" if i % 2 else "b"}) + "\n" for i in range(20)))
    return str(p)


def _refused(capsys, argv, needle):
    assert main(argv) == 2
    cap = capsys.readouterr()
    assert needle in cap.err and "Traceback" not in cap.err
    assert cap.out == ""  # refused before any work or output
    return cap.err


@pytest.mark.parametrize("cmd", [
    ["data", "dedup", "{docs}", "-o", "{out}", "--quiet"],
    ["data", "clean", "{docs}", "-o", "{out}", "--quiet"],
    ["data", "train-classifier", "{docs}", "-o", "{out}/m.cls"],
    ["tokenizer", "train", "{docs}", "-o", "{out}", "--vocab-size", "300", "--quiet"],
])
@pytest.mark.parametrize("threads", [HUGE, "5000"])
def test_huge_threads_refused(capsys, tmp_path, docs, cmd, threads):
    # was: a pybind TypeError traceback (10**12 does not fit a C int), or thousands of threads
    argv = [a.format(docs=docs, out=tmp_path / "out") for a in cmd] + ["--threads", threads]
    _refused(capsys, argv, "threads must be")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("threads", ["-1", HUGE])
def test_classify_threads_refused(capsys, tmp_path, docs, threads):
    # was: -1 silently meant "all cores" (train-classifier refuses it); 10**12 a traceback
    assert main(["data", "train-classifier", docs, "-o", str(tmp_path / "m.cls")]) == 0
    capsys.readouterr()
    _refused(capsys, ["data", "classify", docs, "-m", str(tmp_path / "m.cls"), "-o", str(tmp_path / "o.jsonl"),
                      "--threads", threads], "--threads must be")
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("flags", [["--epochs", "-1"], ["--lr", "nan"], ["--buckets", "0"], ["--seed", "-1"],
                                   ["--char-ngrams", "5,3"]])
def test_train_classifier_options_checked_before_reading(capsys, tmp_path, docs, flags):
    # was: the records were read and "read 20 labeled records ..." printed before the refusal
    _refused(capsys, ["data", "train-classifier", docs, "-o", str(tmp_path / "m.cls"), *flags], "must")


@pytest.mark.parametrize("seed", ["-1", str(2**64 + 1)])
def test_dedup_seed_out_of_range(capsys, tmp_path, docs, seed):
    # was: silently taken modulo 2**64 (--seed 2**64+1 gave --seed 1's signatures)
    _refused(capsys, ["data", "dedup", docs, "-o", str(tmp_path / "out"), "--seed", seed, "--quiet"],
             "--seed must be in [0, 2**64)")


def test_clean_set_num_threads_huge(capsys, tmp_path, docs):
    _refused(capsys, ["data", "clean", docs, "-o", str(tmp_path / "out"), "--set", f"num_threads={HUGE}",
                      "--quiet"], "num_threads must be")


@pytest.mark.parametrize("flags,needle", [
    (["--seed", str(10**23)], "--seed must be in [0, 2**64)"),  # was: "Overflow when unpacking long long"
    (["--seed", "-1"], "--seed must be in [0, 2**64)"),
    (["--temperature", "inf"], "--temperature must be a finite number"),  # was: sampled anyway
])
def test_generate_seed_and_temperature(capsys, tmp_path, flags, needle):
    _refused(capsys, ["generate", "--ckpt", str(tmp_path / "none"), "--device", "cpu", *flags], needle)


def test_eval_task_examples_huge(capsys, tmp_path):
    # was: a hang (200 * n draws looking for n distinct problems)
    _refused(capsys, ["eval", "--ckpt", str(tmp_path / "none"), "--device", "cpu", "--task", "add",
                      "--examples", HUGE], "--examples must be <=")
