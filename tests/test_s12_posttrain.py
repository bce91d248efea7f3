"""Post-training data edges: RL drops (and counts) prompts too long for the model instead of refusing the run,
reward/DPO data reports name each file, chat -> Alpaca counts records whose turn keys it leaves out, SFT keeps
a chat record whose unused "text" field is bad, a branched resume that fails at setup leaves no directory,
and token shards with an id past the vocabulary are refused when opened, naming the file."""
import json
import os

import numpy as np
import pytest
import torch

from test_pairs import TOK
from train_fixtures import TINY_GPT, make_shards, tiny_config

from fastlm.config import from_dict
from fastlm.models import GPT, GPTConfig, config_to_dict
from fastlm.posttrain.rl import _prompts, run_rl
from fastlm.posttrain.sft import SFTReport
from fastlm.train.checkpoint import CheckpointError, save_checkpoint
from fastlm.train.config import TrainConfig, load_train_config

torch.set_num_threads(1)

GOOD = {"prompt": "Repeat: one two", "task": "copy", "answer": "one two"}
LONG = {"prompt": "Repeat: " + "one two " * 20, "task": "copy", "answer": "one two"}  # > 64 tokens alone


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


# ------------------------------------------------------------------------------------------------ RL prompts

@pytest.fixture(scope="module")
def policy_ckpt(tmp_path_factory):
    """An untrained tiny GPT (max_seq_len 64) with the byte-level chat tokenizer, saved as an sft checkpoint."""
    d = tmp_path_factory.mktemp("policy")
    torch.manual_seed(0)
    cfg = GPTConfig.named("tiny", vocab_size=TOK.n_vocab, n_layer=1, d_model=32, n_head=2, max_seq_len=64)
    tp = str(d / "tok.fastlm")
    TOK.save(tp)
    return save_checkpoint(str(d / "sft" / "checkpoints"), 1, model_state=GPT(cfg).state_dict(),
                           optimizer_state=None, tokenizer_path=tp,
                           meta={"model_config": config_to_dict(cfg), "train_config": {"task": "sft"}})


def _rl_cfg(out, ckpt, *extra):
    return load_train_config(None, [
        "task=grpo", f"out={out}", "run_name=rl", f"post.init_from={ckpt}", "post.reward_model=task",
        "post.max_new_tokens=8", "max_steps=1", "eval_every=0", "log_every=1", "post.prompts_per_step=2",
        "post.samples_per_prompt=2", "post.eval_examples=4", "plot=false", *extra])


def _metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_rl_drops_too_long_prompts_and_counts_them(policy_ckpt, tmp_path, capsys):
    """A prompt that left no room for max_new_tokens refused the whole run (a ValueError at the first such
    record), where SFT and the pairs reader drop and count such records: now it is dropped, counted in the
    report (SFT's wording) and in metrics.jsonl, the first ones named with file:line."""
    data = _jsonl(tmp_path / "prompts.jsonl", [GOOD, LONG, {**GOOD, "prompt": "Repeat: three"}, LONG])
    val = _jsonl(tmp_path / "val.jsonl", [LONG, {**GOOD, "prompt": "Repeat: four five"}])
    res = run_rl(_rl_cfg(tmp_path, policy_ckpt, f"post.data=[{data}]", f"post.val_data=[{val}]"))
    out = capsys.readouterr().out
    assert "grpo prompts: 6 records -> 3 prompts; dropped 3 too_long" in out, out
    assert f"e.g. {data}:2: too_long" in out and f"e.g. {data}:4: too_long" in out and f"e.g. {val}:1: too_long" in out
    assert "post.max_new_tokens 8 > the model's max_seq_len 64" in out and "2 train / 1 held-out prompts" in out
    first = _metrics(res.run_dir)[0]
    assert (first["step"], first["data/prompts"], first["data/val_prompts"], first["data/dropped"]) == (0, 2, 1, 3)
    assert res.step == 1 and res.val["n"] == 1


def test_rl_refuses_only_when_no_prompt_is_left(policy_ckpt, tmp_path):
    data = _jsonl(tmp_path / "prompts.jsonl", [LONG, LONG])
    with pytest.raises(ValueError) as e:
        run_rl(_rl_cfg(tmp_path, policy_ckpt, f"post.data=[{data}]"), console=False)
    msg = str(e.value)
    assert msg.startswith(f"no RL training prompts in post.data ['{data}']: 2 records -> 0 prompts; "
                          f"dropped 2 too_long; e.g. {data}:1: too_long"), msg
    assert "post.max_new_tokens 8 > the model's max_seq_len 64" in msg and "\n" not in msg
    assert not os.path.exists(tmp_path / "rl")  # refused at setup: no run directory left


@pytest.mark.parametrize("rows, val_fraction, n_train, n_val", [
    ([GOOD, LONG, {**GOOD, "prompt": "Repeat: a b"}, LONG, LONG], 1.0, 1, 1),   # one of the 2 that fit trains
    ([LONG, GOOD, {"prompt": "say hi"}, LONG], 1.0, 1, 1),                     # the unscorable one trains
    ([GOOD, {**GOOD, "prompt": "Repeat: a b"}, {**GOOD, "prompt": "Repeat: c"}, LONG], 0.5, 1, 2),
])
def test_rl_hold_out_takes_only_prompts_that_fit_and_leaves_one_to_train(tmp_path, rows, val_fraction, n_train,
                                                                          n_val):
    path = _jsonl(tmp_path / "prompts.jsonl", rows)
    cfg = from_dict(TrainConfig, {"task": "grpo", "post": {"data": [path], "max_new_tokens": 8},
                                  "data": {"val_fraction": val_fraction}})
    train, val = _prompts(cfg, TOK, max_seq_len=64)  # was a ValueError at the first record too long
    assert (len(train), len(val)) == (n_train, n_val)
    report = SFTReport()
    assert _prompts(cfg, TOK, max_seq_len=64, report=report) == (train, val)
    assert report.read == len(rows) and report.dropped == {"too_long": rows.count(LONG)}
    assert all(len(ids) + 8 <= 64 for ids, _ in train) and all(ex.prompt != LONG["prompt"] for ex in val)


def test_rl_built_in_task_prompts_that_do_not_fit_are_dropped(tmp_path):
    from fastlm.posttrain.rl import _user_prompt
    from fastlm.posttrain.tasks import examples_for
    cfg = from_dict(TrainConfig, {"task": "grpo", "post": {"tasks": ["copy"], "task_examples": 40,
                                                           "eval_examples": 20, "max_new_tokens": 8}})
    lengths = sorted(len(_user_prompt(TOK, ex.prompt)) for ex in examples_for(["copy"], "train", 40, cfg.seed))
    limit = lengths[len(lengths) // 2] + 8  # about half of them fit
    train, val = _prompts(cfg, TOK, max_seq_len=limit)  # was a ValueError: the longest did not fit
    report = SFTReport()
    assert _prompts(cfg, TOK, max_seq_len=limit, report=report) == (train, val)
    assert 0 < len(train) < 40 and report.dropped["too_long"] >= 40 - len(train)
    assert all(len(ids) + 8 <= limit for ids, _ in train)
    assert all(len(_user_prompt(TOK, ex.prompt)) + 8 <= limit for ex in val)
    assert report.where[0].startswith("task:copy:")
    with pytest.raises(ValueError, match=r"no RL training prompts in the built-in tasks post\.tasks=\['copy'\]: "
                                         r"60 records -> 0 prompts; dropped 60 too_long"):
        _prompts(cfg, TOK, max_seq_len=lengths[0] + 7)


def test_rl_holds_out_eval_examples_per_built_in_task():
    # post.eval_examples is per task (as SFT and the config's help say); the first version of the drop
    # above cut the tasks' val split to eval_examples in all (200 of 600 with three tasks)
    cfg = from_dict(TrainConfig, {"task": "grpo", "post": {"tasks": ["copy", "reverse"], "task_examples": 6,
                                                           "eval_examples": 5, "max_new_tokens": 8}})
    train, val = _prompts(cfg, TOK, max_seq_len=4096)
    assert len(train) == 12 and sorted(ex.meta["task"] for ex in val) == ["copy"] * 5 + ["reverse"] * 5


def test_rl_branched_resume_failing_at_setup_leaves_no_directory(policy_ckpt, tmp_path):
    data = "post.data=[" + _jsonl(tmp_path / "prompts.jsonl", [GOOD, {**GOOD, "prompt": "Repeat: three"}]) + "]"
    first = run_rl(_rl_cfg(tmp_path, policy_ckpt, "ckpt_every=1", data), console=False)
    with pytest.raises(CheckpointError, match="post.reward_model"):
        run_rl(_rl_cfg(tmp_path, policy_ckpt, "run_name=branch", "max_steps=2", data,
                       f"post.reward_model={tmp_path}/nothing"), resume=first.checkpoint, console=False)
    assert not os.path.exists(tmp_path / "branch")
    ok = run_rl(_rl_cfg(tmp_path, policy_ckpt, "run_name=branch", "max_steps=2", data), resume=first.checkpoint,
                console=False)
    assert [r["step"] for r in _metrics(ok.run_dir) if "reward/mean" in r] == [1, 2]  # history, then the branch


# ----------------------------------------------------------------------------------------- reward / DPO data

PAIR = {"prompt": "2+2?", "chosen": "4", "rejected": "five"}


def test_preference_report_names_each_file(tmp_path):
    """The malformed counts of post.data and post.val_data were one dict ("skipped 2 malformed record(s)
    {'bad_json': 1, 'missing_field': 1}"): now each file has its own line with its counts."""
    from fastlm.posttrain.pairs import load_preference_data
    train = _jsonl(tmp_path / "train.jsonl", [PAIR, "{bad", PAIR, "{bad"])
    val = _jsonl(tmp_path / "val.jsonl", [PAIR, {"prompt": "x", "chosen": "y"},
                                          {"prompt": "x" * 80, "chosen": "y", "rejected": "z"}])
    cfg = load_train_config(None, ["task=dpo", f"post.data=[{train}]", f"post.val_data=[{val}]"])
    lines = []
    tr, va, summary = load_preference_data(cfg, TOK, seq_len=64, log=lines.append)
    assert (len(tr), len(va), summary["data/malformed"], summary["data/too_long"]) == (2, 1, 3, 1)
    assert lines[0].startswith(f"preference data: {train}: skipped 2 malformed record(s) (bad_json 2); "
                               "e.g. line 2 bad_json: "), lines
    assert lines[1].startswith(f"preference data: {val}: skipped 1 malformed record(s) (missing_field 1), "
                               "1 pair(s) dropped (prompt alone >= seq_len); e.g. line 2 missing_field: "), lines


def test_no_usable_val_pairs_counts_only_the_val_files(tmp_path):
    from fastlm.posttrain.pairs import load_preference_data
    train = _jsonl(tmp_path / "train.jsonl", [PAIR, "{bad", "{bad"])
    val = _jsonl(tmp_path / "val.jsonl", ["{bad"])
    cfg = load_train_config(None, ["task=dpo", f"post.data=[{train}]", f"post.val_data=[{val}]"])
    with pytest.raises(ValueError, match=r"no usable preference pairs in \[.*val\.jsonl'\] \(parsed 0, malformed 1, "
                                         r"1 bad_json,"):
        load_preference_data(cfg, TOK, seq_len=64, log=lambda s: None)


# ------------------------------------------------------------------------------------------- chat conversion

def test_convert_to_alpaca_counts_records_whose_turn_keys_are_dropped(tmp_path, capsys):
    from fastlm.cli.main import main
    src = _jsonl(tmp_path / "chats.jsonl", [
        {"id": 1, "messages": [{"role": "user", "content": "Hi", "name": "bob"},
                               {"role": "assistant", "content": "Hello", "weight": 1}]},
        {"id": 2, "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}])
    out, report = tmp_path / "out.jsonl", tmp_path / "report.json"  # (weight 0 would make no record: test_chat)
    assert main(["data", "convert", src, "--to", "alpaca", "-o", str(out), "--report", str(report)]) == 0
    text = capsys.readouterr().out
    assert "converted 2 (1 with turn keys dropped), failed 0; wrote 2 alpaca records" in text, text
    assert f"e.g. {src}:1: turn_keys_dropped: turn 0: name; turn 1: weight (an Alpaca record has no per-turn " \
           "fields; --to messages or sharegpt keeps them)" in text
    rep = json.loads(report.read_text())
    assert rep["turn_keys_dropped"]["by_reason"] == {"turn_keys_dropped": 1}
    assert [s["line"] for s in rep["turn_keys_dropped"]["samples"]] == [1]
    assert main(["data", "convert", src, "--to", "sharegpt", "-o", str(out), "--report", str(report)]) == 0
    assert "keys dropped" not in capsys.readouterr().out  # kept on their turns
    assert json.loads(report.read_text())["turn_keys_dropped"]["total"] == 0


# ----------------------------------------------------------------------------------------------- SFT records

def test_sft_keeps_a_chat_record_whose_unused_text_field_is_bad(tmp_path):
    """{"text": 5, "messages": [...]} was dropped as malformed:wrong_type for its "text" field, which SFT never
    reads; the messages decide now. Records that are no chat, or bad chats, are dropped as before."""
    from fastlm.posttrain.sft import read_chat_records
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    path = _jsonl(tmp_path / "d.jsonl", [{"text": 5, "messages": chat}, {"text": 5},
                                         {"text": ["x"], "messages": [{"role": "wizard", "content": "x"}]}])
    report = SFTReport()
    kept = read_chat_records([path], report)
    assert [w for _, w in kept] == [f"{path}:1"]
    assert report.dropped == {"not_chat:not_chat": 1, "malformed:unknown_role": 1}


# ----------------------------------------------------------------------------------- branched resume, shards

def test_branched_resume_failing_at_setup_removes_only_what_it_created(tmp_path):
    """The branch got its directory (config.yaml and a copy of the run's metrics.jsonl) before the checkpoint
    was checked against the config: a refused resume left it behind, and its log made it look started."""
    import dataclasses
    from fastlm.train.trainer import run
    make_shards(str(tmp_path / "data"))
    cfg = tiny_config(str(tmp_path / "data"), str(tmp_path / "out"), max_steps=2, ckpt_every=1)
    a = run(cfg, console=False)
    bad = tiny_config(str(tmp_path / "data"), str(tmp_path / "out"), max_steps=3, run_name="branch",
                      model={"overrides": {**TINY_GPT, "d_model": 64}})
    with pytest.raises(CheckpointError, match=r"differs from this run's config in \['d_model'\]"):
        run(bad, resume=a.run_dir, console=False)
    assert not os.path.exists(tmp_path / "out" / "branch")
    os.makedirs(tmp_path / "out" / "mine")  # a directory the run did not make stays
    with pytest.raises(CheckpointError):
        run(dataclasses.replace(bad, run_name="mine"), resume=a.run_dir, console=False)
    assert os.path.isdir(tmp_path / "out" / "mine")
    b = run(dataclasses.replace(cfg, run_name="branch", max_steps=3), resume=a.run_dir, console=False)
    with open(os.path.join(b.run_dir, "metrics.jsonl")) as f:
        steps = [json.loads(line)["step"] for line in f if "train/loss" in line]
    assert steps == [1, 2, 3]  # the branch's log still starts with the run's history


def _shards(tmp_path, vocab=300):
    from fastlm.tokenizer.shards import TokenShardWriter
    w = TokenShardWriter(str(tmp_path), vocab_size=vocab, tokenizer_sha256="x")
    for d in range(4):
        w.add(list(range(d, d + 50)))
    return w.close()


def test_token_id_past_the_vocabulary_is_refused_when_the_shard_is_opened(tmp_path):
    """Nothing read the ids when shards were opened: an id >= vocab_size reached the embedding whenever a batch
    held it (on a GPU a device-side assert that kills the process; on the CPU an error naming no file)."""
    from fastlm.train.data import TokenDataset
    (header,) = _shards(tmp_path)
    with open(header) as f:
        meta = json.load(f)
    tokens = np.memmap(os.path.join(tmp_path, meta["bin"]), dtype=meta["dtype"], mode="r+")
    tokens[123] = 65000
    tokens.flush()
    del tokens
    with pytest.raises(ValueError, match=rf"^{header}: token id 65000 \(token 123 of tokens-00000\.bin\) is outside "
                                         r"the shard's vocabulary \[0, 300\)"):
        TokenDataset(header)
    meta["vocab_size"] = None
    with open(header, "w") as f:
        json.dump(meta, f)
    with pytest.raises(ValueError, match="header field 'vocab_size' is missing or not a positive integer"):
        TokenDataset(header)


def test_a_shard_is_checked_again_once_its_bin_changes(tmp_path):
    """The check runs once per process per unchanged .bin (a run opens its shards 2-3 times): a .bin
    rewritten since is checked again."""
    from fastlm.train import data
    (header,) = _shards(tmp_path)
    data.TokenDataset(header)
    data.TokenDataset(header)  # from the cache
    with open(header) as f:
        meta = json.load(f)
    bin_path = os.path.join(tmp_path, meta["bin"])
    before = os.stat(bin_path).st_mtime_ns
    tokens = np.memmap(bin_path, dtype=meta["dtype"], mode="r+")
    tokens[5] = 65000
    tokens.flush()
    del tokens
    os.utime(bin_path, ns=(before + 10**9, before + 10**9))  # a rewrite within the clock's resolution
    with pytest.raises(ValueError, match="token id 65000"):
        data.TokenDataset(header)


def test_training_on_a_shard_with_an_id_past_the_vocabulary_stops_before_the_first_step(tmp_path):
    from fastlm.train.trainer import run
    root = str(tmp_path / "data")
    _, shard_dir = make_shards(root)
    with open(os.path.join(shard_dir, "tokens-00000.json")) as f:
        meta = json.load(f)
    tokens = np.memmap(os.path.join(shard_dir, meta["bin"]), dtype=meta["dtype"], mode="r+")
    tokens[-7] = meta["vocab_size"]  # near the end: a short run would not reach it
    tokens.flush()
    del tokens
    with pytest.raises(ValueError, match=rf"tokens-00000\.json: token id {meta['vocab_size']} .* outside the shard's "
                                         rf"vocabulary \[0, {meta['vocab_size']}\)"):
        run(tiny_config(root, str(tmp_path / "out"), max_steps=2), console=False)
    assert not os.path.exists(tmp_path / "out" / "run")
