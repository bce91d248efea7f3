"""Odd inputs to the model-side commands (`fastlm generate`, `fastlm eval`, `fastlm export`) and to the
post-training data paths: each test is a case that lost data, crashed with a traceback or misled, and now
gets a clear refusal naming the file/line/argument, or is read as the data stage reads it."""
import json
import os

import pytest

torch = pytest.importorskip("torch")

from fastlm.cli.main import main  # noqa: E402
from test_cli_generate_eval import DOCS, _text_files, clm_run, tok_path  # noqa: E402,F401  (fixtures)

torch.set_num_threads(1)


def _tree(path) -> dict:
    """{relative path: bytes} of every file under ``path``."""
    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, path)] = open(p, "rb").read()
    return out


# ---------------------------------------------------------------------------------------------- export

@pytest.mark.parametrize("where", ["run", "checkpoints", "checkpoint", "parent"])
def test_export_force_into_the_checkpoint_itself_is_refused_and_the_run_kept(clm_run, tmp_path, capsys, where):
    # `fastlm export --ckpt RUN --force RUN` (or OUT = its checkpoints/ folder, the checkpoint, or the folder
    # holding the run) replaced OUT with the export: the checkpoint it was exported from was deleted
    import shutil
    run = tmp_path / "runs" / "clm"
    shutil.copytree(clm_run, run)
    ckpt = run / "checkpoints" / "step-00000003"
    out = {"run": run, "checkpoints": run / "checkpoints", "checkpoint": ckpt, "parent": tmp_path / "runs"}[where]
    before = _tree(tmp_path / "runs")
    for force in ([], ["--force"]):
        assert main(["export", "--ckpt", str(run), "--to", "hf", str(out), *force]) == 2
        err = capsys.readouterr().err
        assert err.startswith("fastlm: error: ") and "Traceback" not in err, err
        assert f"OUT {out} holds the checkpoint {ckpt}" in err and "choose another output directory" in err, err
        assert _tree(tmp_path / "runs") == before
    assert main(["export", "--ckpt", str(ckpt), str(tmp_path / "hf")]) == 0  # elsewhere: fine
    assert os.path.isfile(tmp_path / "hf" / "model.safetensors")


# ------------------------------------------------------------------------------------------------ eval

def test_eval_json_that_is_a_data_file_is_refused_and_the_data_kept(clm_run, tmp_path, capsys):
    # `fastlm eval --ckpt C held-out.jsonl --json held-out.jsonl` replaced the held-out data with the figures
    data = tmp_path / "held-out.jsonl"
    data.write_text(json.dumps({"text": DOCS[0]}) + "\n", encoding="utf-8")
    original = data.read_bytes()
    for spelling in (str(data), os.path.join(str(tmp_path), ".", "held-out.jsonl")):
        assert main(["eval", "--ckpt", clm_run, str(data), "--json", spelling]) == 2
        err = capsys.readouterr().err
        assert err.startswith("fastlm: error: --json ") and "is also an input" in err, err
        assert data.read_bytes() == original


@pytest.mark.parametrize("bad", ["dir", "under_file"])
def test_eval_json_that_cannot_be_written_is_refused_before_evaluating(clm_run, tmp_path, capsys, monkeypatch, bad):
    # `--json DIR` (or a path under a file) evaluated everything, then failed with
    # "[Errno 21] Is a directory: '/tmp/.odd.swx9leck.tmp' -> '/tmp/odd'": the figures were lost
    import fastlm.cli.generate as g
    files = _text_files(tmp_path, DOCS[:1])
    (tmp_path / "f").write_text("x")
    out = {"dir": str(tmp_path), "under_file": str(tmp_path / "f" / "r.json")}[bad]

    def no_loading(*a, **k):
        raise AssertionError("checkpoint loaded before the refusal")
    monkeypatch.setattr(g, "load_checkpoint_model", no_loading)
    import fastlm.cli.evaluate as ev
    monkeypatch.setattr(ev, "load_checkpoint_model", no_loading)
    for argv in ([files[0]], ["--task", "copy"]):
        assert main(["eval", "--ckpt", clm_run, *argv, "--json", out]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"fastlm: error: --json {out}: ") and "Traceback" not in err, err


def test_eval_malformed_records_are_all_counted_and_the_hint_fits_eval(clm_run, tmp_path, capsys):
    # the first malformed record stopped eval with "(run without --strict to skip and count such records)":
    # `fastlm eval` has no --strict, and the other malformed records went uncounted
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "fine"}\nnot json\n{"title": "no text"}\n{"text": 3}\n{"text": "fine too"}\n')
    assert main(["eval", "--ckpt", clm_run, str(data)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--strict" not in err and "Traceback" not in err, err
    assert err.startswith("fastlm: error: DATA: 3 malformed record(s) (bad_json 1, missing_field 1, wrong_type 1)")
    assert f"e.g. {data}:2: bad_json" in err and f"e.g. {data}:3: missing_field" in err and "--text-field" in err


# ------------------------------------------------------------------------- preference data (reward, dpo)

PAIR = {"prompt": "2+2?", "chosen": "4", "rejected": "five"}


def _pairs(path, **kw):
    from fastlm.data.records import ErrorLog
    from fastlm.posttrain.pairs import read_pairs
    from test_pairs import TOK
    errors, counts = ErrorLog(), {}
    pairs = read_pairs([str(path)], TOK, seq_len=kw.get("seq_len", 64), errors=errors, counts=counts)
    return pairs, errors, counts


def test_preference_lines_that_crashed_the_reader_are_counted_with_file_and_line(tmp_path):
    # a line nested 100,000 deep ended `fastlm-train --task dpo|reward` with a RecursionError traceback; an
    # integer of 5,000 digits with "Exceeds the limit (4300 digits) ..." naming no file, losing the good lines
    ok = json.dumps(PAIR).encode()
    path = tmp_path / "prefs.jsonl"
    path.write_bytes(ok + b"\n" + b"[" * 100_000 + b"]" * 100_000 + b"\n"
                     + b'{"prompt": "p", "chosen": "a", "rejected": "b", "n": ' + b"9" * 5000 + b"}\n" + ok + b"\n")
    pairs, errors, counts = _pairs(path)
    assert len(pairs) == 2 and counts["read"] == 2 and errors.total == 2
    assert [(b.line, b.reason) for b in errors.samples] == [(2, "bad_json"), (3, "bad_json")]
    assert "nested deeper than" in errors.samples[0].detail and "4300" in errors.samples[1].detail


def test_preference_data_is_read_as_the_data_stage_reads_json(tmp_path):
    # the pairs reader had its own JSON reading: a BOM at the start of a later line (BOM-prefixed files
    # concatenated) made that record bad_json, a pretty-printed single-object .json file counted one
    # bad_json per line, and a lone surrogate escape or NaN was kept (the data readers refuse both)
    ok = json.dumps(PAIR).encode()
    (tmp_path / "cat.jsonl").write_bytes(b"\xef\xbb\xbf" + ok + b"\n\xef\xbb\xbf" + ok + b"\r\n")
    pairs, errors, _ = _pairs(tmp_path / "cat.jsonl")
    assert len(pairs) == 2 and errors.total == 0
    (tmp_path / "one.json").write_text(json.dumps(PAIR, indent=2))
    pairs, errors, _ = _pairs(tmp_path / "one.json")
    assert len(pairs) == 1 and errors.total == 0 and pairs[0].where.endswith("one.json:1")
    (tmp_path / "odd.jsonl").write_bytes(ok + b'\n{"prompt": "hi \\ud800", "chosen": "a", "rejected": "b"}\n'
                                         + b'{"prompt": "hi", "chosen": "a", "rejected": "b", "score": NaN}\n')
    pairs, errors, _ = _pairs(tmp_path / "odd.jsonl")
    assert len(pairs) == 1
    assert [(b.line, b.reason) for b in errors.samples] == [(2, "invalid_utf8"), (3, "bad_json")]


def test_pairs_that_differ_only_past_seq_len_are_dropped_and_counted(tmp_path):
    # chosen == rejected is refused (identical_responses), but responses differing only after seq_len were
    # cut to the same rows and trained on as a preference: a pair with no preference left in it
    from fastlm.posttrain.pairs import fit_pair, render_pair
    from test_pairs import TOK
    same_start = {"prompt": "p", "chosen": "x" * 80 + "yes", "rejected": "x" * 80 + "no"}
    p = render_pair(TOK, same_start)
    assert fit_pair(p, 40) == (None, "identical_when_cut")
    assert fit_pair(p, 200) == (p, "")
    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps(same_start) + "\n" + json.dumps(PAIR) + "\n")
    pairs, errors, counts = _pairs(path, seq_len=40)
    assert len(pairs) == 1 and counts == {"read": 2, "identical_when_cut": 1}
    path.write_text(json.dumps(same_start) + "\n")
    with pytest.raises(ValueError, match="the same within seq_len: 1"):
        _pairs(path, seq_len=40)


# ---------------------------------------------------------------------------------------------- RL prompts

@pytest.mark.parametrize("val_fraction, train, held_out", [(1.0, 5, 3), (0.5, 6, 2)])
def test_rl_hold_out_never_takes_every_prompt_nor_unscorable_ones(tmp_path, val_fraction, train, held_out):
    # data.val_fraction=1 held out every post.data record, and the run stopped with "no RL prompts: post.data
    # gave no records"; and held-out records without task/answer (which the exact match cannot score) were
    # neither trained on nor evaluated: silently unused
    from fastlm.config import from_dict
    from fastlm.posttrain.rl import _prompts
    from fastlm.train.config import TrainConfig
    from test_pairs import TOK
    records = ([{"prompt": f"Repeat: w{i}", "task": "copy", "answer": f"w{i}"} for i in range(3)]
               + [{"prompt": f"say {i}"} for i in range(5)])
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = from_dict(TrainConfig, {"task": "grpo", "post": {"data": [str(path)]}, "data": {"val_fraction": val_fraction}})
    items, val = _prompts(cfg, TOK)
    assert (len(items), len(val)) == (train, held_out) and len(items) + len(val) == len(records)
    one = from_dict(TrainConfig, {"task": "grpo", "post": {"data": [str(path)]}, "data": {"val_fraction": 1.0}})
    path.write_text("".join(json.dumps(r) + "\n" for r in records[:3]))  # every record scorable: one trains
    items, val = _prompts(one, TOK)
    assert (len(items), len(val)) == (1, 2)


# -------------------------------------------------------------------------------------------- generate

@pytest.mark.parametrize("prompt, what", [("ab\udcffc", "character 3 is the byte 0xff, not UTF-8"),
                                          ("\ud800", "character 1 is a lone surrogate U+D800")])
def test_generate_refuses_a_prompt_that_is_not_utf8(clm_run, capsys, prompt, what):
    # `fastlm generate --prompt $'\xff bad'`: Python keeps the byte as U+DCFF, the tokenizer encoded it as
    # U+FFFD and the model continued a prompt other than the one given, while the echo printed the raw byte
    assert main(["generate", "--ckpt", clm_run, "--prompt", prompt, "--max-tokens", "2"]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err == f"fastlm: error: --prompt: {what}: pass the prompt as UTF-8 text\n"


def test_generate_refuses_nan_temperature_before_any_output(clm_run, capsys):
    # --temperature nan passed the CLI's `< 0` check: the prompt was echoed, then the sampler refused it as
    # "temperature must be >= 0, got nan" (not naming the flag)
    assert main(["generate", "--ckpt", clm_run, "--prompt", "x", "--temperature", "nan"]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err == "fastlm: error: --temperature must be a finite number >= 0, got nan\n"


def test_rl_malformed_prompt_lines_are_all_counted_and_the_hint_fits_fastlm_train(tmp_path):
    # the first malformed line stopped the run with "(run without --strict to skip and count such records)":
    # fastlm-train has no --strict, and the other malformed lines went uncounted
    from fastlm.posttrain.rl import _read_prompts
    from test_pairs import TOK
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "ok"}\nnot json\n{"oops": 1}\n{"prompt": "ok too"}\n{"prompt": 5}\n')
    with pytest.raises(ValueError) as e:
        _read_prompts([str(path)], TOK)
    msg = str(e.value)
    assert "--strict" not in msg and "\n" not in msg, msg
    assert msg.startswith(f"['{path}']: 3 malformed RL prompt record(s) (bad_json 1, missing_field 1, wrong_type 1)")
    assert f"e.g. {path}:2: bad_json" in msg and f"e.g. {path}:3: missing_field" in msg
