"""RL post-training resume and prompt data (audit): a stopped and resumed grpo / ppo / rloo run ends with the
uninterrupted run's weights, value head and metrics (also across a prompt epoch boundary and from a position
saved before the data checks); another prompts_per_step / samples_per_prompt continues with the next prompt;
a resume over other training prompts is refused naming the setting, evaluation-only changes are allowed;
an "auto" reward model and a fixed KL coefficient on resume; the held-out split of a prompts file with copies;
chat vs plain prompt records."""
import json
import os
import shutil

import pytest
import torch

from test_pairs import TOK
from test_rl import _cfg, _metrics, sft_model  # noqa: F401  (sft_model: the module-scoped fixture)

import fastlm.posttrain.rl as rl
from fastlm.config import from_dict
from fastlm.posttrain.rl import PromptSource, _prompts, _read_prompts, _user_prompt, run_rl
from fastlm.train.checkpoint import CheckpointError, load_checkpoint
from fastlm.train.config import TrainConfig

torch.set_num_threads(1)

TIMING = ("time", "rollout_s", "step_s", "tokens_per_s")  # wall-clock: the only numbers a resume may change


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _records(d, n, start=0):
    with open(os.path.join(d, "train.jsonl")) as f:
        return [json.loads(line) for line in f][start:start + n]


def _small(d, tmp_path, n=7):
    """post.data of ``n`` copy problems and post.val_data of 8: with 4 prompts a step, 4 steps cross epochs."""
    data = _write(tmp_path / "prompts.jsonl", _records(d, n))
    val = _write(tmp_path / "val.jsonl", _records(d, 8, start=100))
    return [f"post.data=[{data}]", f"post.val_data=[{val}]"]


EXTRA = ("post.prompts_per_step=4", "post.samples_per_prompt=2", "post.eval_examples=8", "ckpt_every=2",
         "keep_last=5")


def _same_run(full, resumed, ppo):
    """Weights, value head and every logged number but wall-clock times equal the uninterrupted run's."""
    a, b = load_checkpoint(full.checkpoint), load_checkpoint(resumed.checkpoint)
    assert a.model_state.keys() == b.model_state.keys()
    for k, v in a.model_state.items():
        assert torch.equal(v, b.model_state[k]), k
    if ppo:
        assert a.meta["value_head"] == b.meta["value_head"] and any(x != 0 for x in a.meta["value_head"]["bias"])
    assert a.meta["data_state"] == b.meta["data_state"] and a.meta["kl_coef"] == b.meta["kl_coef"]
    ra = [{k: v for k, v in r.items() if k not in TIMING} for r in _metrics(full.run_dir) if "reward/mean" in r]
    rb = [{k: v for k, v in r.items() if k not in TIMING} for r in _metrics(resumed.run_dir) if "reward/mean" in r]
    assert len(ra) == 4 and ra == rb
    assert full.val == resumed.val and full.val["n"] == 8


@pytest.mark.parametrize("task, n_prompts", [("grpo", 7), ("ppo", 8), ("rloo", 7)])
def test_resume_across_an_epoch_boundary_equals_the_uninterrupted_run(sft_model, tmp_path, task, n_prompts):
    """7 prompts: the second step wraps into epoch 1 (cut at epoch 1, pos 1); 8: the cut is at the epoch's end."""
    d, ckpt, _ = sft_model
    data = _small(d, tmp_path, n_prompts)
    kl = ("post.kl_target=0.01",) if task == "ppo" else ()  # ppo: the adaptive coefficient comes back too
    full = run_rl(_cfg(str(tmp_path), ckpt, task, 4, *EXTRA, *data, *kl, "run_name=full"), console=False)
    cut = run_rl(_cfg(str(tmp_path), ckpt, task, 2, *EXTRA, *data, *kl, "run_name=cut"), console=False)
    state = load_checkpoint(cut.checkpoint).meta["data_state"]
    assert (state["epoch"], state["pos"]) == ((1, 1) if n_prompts == 7 else (0, 8))
    resumed = run_rl(_cfg(str(tmp_path), ckpt, task, 4, *EXTRA, *data, *kl, "run_name=cut"), resume=cut.checkpoint,
                     console=False)
    assert resumed.step == 4 and resumed.run_dir == cut.run_dir
    _same_run(full, resumed, task == "ppo")


def test_a_position_saved_before_the_data_checks_still_loads(sft_model, tmp_path):
    d, ckpt, _ = sft_model
    data = _small(d, tmp_path)
    full = run_rl(_cfg(str(tmp_path), ckpt, "grpo", 4, *EXTRA, *data, "run_name=full"), console=False)
    cut = run_rl(_cfg(str(tmp_path), ckpt, "grpo", 2, *EXTRA, *data, "run_name=cut"), console=False)
    path = os.path.join(cut.checkpoint, "state.json")
    with open(path) as f:
        meta = json.load(f)
    assert set(meta["data_state"]) == {"epoch", "pos", "seed", "prompts", "prompts_sha256"}
    meta["data_state"] = {k: meta["data_state"][k] for k in ("epoch", "pos")}  # as written before the checks
    with open(path, "w") as f:
        json.dump(meta, f)
    resumed = run_rl(_cfg(str(tmp_path), ckpt, "grpo", 4, *EXTRA, *data, "run_name=cut"), resume=cut.checkpoint,
                     console=False)
    _same_run(full, resumed, False)
    src = PromptSource([([i], {"answer": str(i)}) for i in range(5)], seed=3)  # and at the unit level
    src.next(7)
    again = PromptSource([([i], {"answer": str(i)}) for i in range(5)], seed=3)
    again.load_state_dict({"epoch": src.epoch, "pos": src.pos})
    assert again.next(6) == src.next(6)


def _seen_prompts(monkeypatch):
    """Record every rollout batch's prompts (a group's samples are adjacent: one entry per group)."""
    seen, sample = [], rl.sample_responses

    def recording(model, prompts, **k):
        seen.append([list(p) for p in prompts])
        return sample(model, prompts, **k)
    monkeypatch.setattr(rl, "sample_responses", recording)
    return seen


def _groups(batches, g):
    return [b[i] for b in batches for i in range(0, len(b), g)]


def test_another_batch_on_resume_continues_with_the_next_prompt(sft_model, tmp_path, monkeypatch, capsys):
    """The position counts prompts: resumed with 2 prompts x 3 samples a step instead of 4 x 2, the run visits
    the uninterrupted run's prompt sequence (epoch boundary included), and says the batch changed."""
    d, ckpt, _ = sft_model
    data = _small(d, tmp_path)
    seen = _seen_prompts(monkeypatch)
    run_rl(_cfg(str(tmp_path), ckpt, "grpo", 4, *EXTRA, *data, "run_name=full"), console=False)
    want = _groups(seen, 2)
    assert len(want) == 16 and len({tuple(p) for p in want}) == 7
    seen.clear()
    cut = run_rl(_cfg(str(tmp_path), ckpt, "grpo", 2, *EXTRA, *data, "run_name=cut"), console=False)
    first = _groups(seen, 2)
    seen.clear()
    capsys.readouterr()
    resumed = run_rl(_cfg(str(tmp_path), ckpt, "grpo", 6, *EXTRA, *data, "run_name=cut", "post.prompts_per_step=2",
                          "post.samples_per_prompt=3"), resume=cut.checkpoint)
    out = capsys.readouterr().out
    assert "note: post.prompts_per_step 4 -> 2, post.samples_per_prompt 2 -> 3: the prompts continue where " \
           "they stopped" in out, out
    assert [len(b) for b in seen] == [6] * 4 and all(b[i] == b[i + 1] == b[i + 2] for b in seen for i in (0, 3))
    assert first + _groups(seen, 3) == want
    assert load_checkpoint(resumed.checkpoint).meta["data_state"]["pos"] == 2  # 16 prompts: epoch 2, pos 2


@pytest.fixture(scope="module")
def cuts(sft_model, tmp_path_factory):
    """Two stopped grpo runs (2 steps, ckpt at 2): one on post.data (+ post.val_data), one on the built-in copy
    task, and the files the changed-data cases use."""
    d, ckpt, tok = sft_model
    tmp = tmp_path_factory.mktemp("cuts")
    rows = _records(d, 7)
    files = {"data": _write(tmp / "prompts.jsonl", rows),
             "val": _write(tmp / "val.jsonl", _records(d, 8, start=100)),
             "val2": _write(tmp / "val2.jsonl", _records(d, 6, start=200)),
             "other": _write(tmp / "other.jsonl", _records(d, 7, start=50)),  # as many, other prompts
             "answers": _write(tmp / "answers.jsonl", [{**r, "answer": r["answer"] + " end"} for r in rows]),
             "fewer": _write(tmp / "fewer.jsonl", rows[:6])}
    out = str(tmp / "runs")
    base = ("post.task_examples=12", f"post.val_data=[{files['val']}]")
    data = run_rl(_cfg(out, ckpt, "grpo", 2, *EXTRA, *base, f"post.data=[{files['data']}]", "run_name=data"),
                  console=False)
    tasks = run_rl(_cfg(out, ckpt, "grpo", 2, *EXTRA, *base, "run_name=tasks"), console=False)
    lengths = sorted(len(_user_prompt(tok, r["prompt"])) for r in rows)
    return {"out": out, "ckpt": ckpt, "files": files, "base": base, "data": data.checkpoint,
            "tasks": tasks.checkpoint, "lengths": lengths}


def _resume(c, which, i, *over, steps=2):
    data = (f"post.data=[{c['files']['data']}]",) if which == "data" else ()
    cfg = _cfg(c["out"], c["ckpt"], "grpo", steps, *EXTRA, *c["base"], *data, f"run_name={which}-b{i}", *over)
    return run_rl(cfg, resume=c[which], console=False)


CHANGED = [  # (which cut, settings, what the refusal says)
    ("data", lambda f, n: [f"post.data=[{f['other']}]"],
     r"prompts_sha256='\w+' does not match this run's '\w+' \(set by the records of post\.data .*\); changed since "
     r"the checkpoint: post\.data: \['.*prompts\.jsonl'\] -> \['.*other\.jsonl'\]"),
    ("data", lambda f, n: [f"post.data=[{f['answers']}]"],  # same prompts, other answers: other rewards
     r"prompts_sha256=.*post\.data: \['.*prompts\.jsonl'\] -> \['.*answers\.jsonl'\]"),
    ("data", lambda f, n: [f"post.data=[{f['fewer']}]"],
     r"state prompts=7 does not match this run's 6 \(set by post\.data, .*\); changed since the checkpoint: "
     r"post\.data: "),
    ("data", lambda f, n: ["seed=7"], r"state seed=1337 does not match this run's 7 \(set by seed\)\); changed since "
                                      r"the checkpoint: seed: 1337 -> 7"),
    ("data", lambda f, n: ["post.val_data=[]", "data.val_fraction=0.3"],  # held out of post.data now
     r"state prompts=7 does not match this run's 4 .*changed since the checkpoint: post\.val_data: "
     r"\['.*val\.jsonl'\] -> \[\]; data\.val_fraction: "),
    ("data", lambda f, n: [f"post.max_new_tokens={96 - n[3]}"],  # drops the longer prompts
     r"state prompts=7 does not match this run's [1-4] .*changed since the checkpoint: post\.max_new_tokens: 16 -> "),
    ("tasks", lambda f, n: ["post.tasks=[copy,reverse]"],
     r"state prompts=12 does not match this run's 24 .*changed since the checkpoint: post\.tasks: \['copy'\] -> "
     r"\['copy', 'reverse'\]"),
    ("tasks", lambda f, n: ["post.tasks=[reverse]"], r"prompts_sha256=.*post\.tasks: \['copy'\] -> \['reverse'\]"),
    ("tasks", lambda f, n: ["post.task_examples=10"], r"state prompts=12 does not match this run's 10 .*"
                                                      r"post\.task_examples: 12 -> 10"),
    ("tasks", lambda f, n: ["seed=3"], r"state seed=1337 does not match this run's 3 \(set by seed\)"),
]


@pytest.mark.parametrize("i", range(len(CHANGED)))
def test_a_resume_over_other_prompts_is_refused_naming_the_setting(cuts, i):
    """Before: each of these resumed silently at the checkpoint's position in other prompts."""
    which, over, match = CHANGED[i]
    with pytest.raises(CheckpointError, match=r"--resume .*step-00000002: its data position does not fit this "
                                              rf"run's training data \(RL training prompts: .*{match}"):
        _resume(cuts, which, i, *over(cuts["files"], cuts["lengths"]))
    assert not os.path.exists(os.path.join(cuts["out"], f"{which}-b{i}"))  # refused at setup: no branch left


def test_a_file_changed_in_place_is_refused_and_evaluation_changes_are_allowed(cuts, tmp_path):
    c = cuts
    keep = tmp_path / "keep.jsonl"
    shutil.copyfile(c["files"]["data"], keep)
    try:  # the same post.data path, one record edited: no setting changed, the digest differs
        rows = [json.loads(line) for line in open(keep)]
        rows[3] = {**rows[3], "prompt": rows[3]["prompt"] + " two"}
        _write(type(keep)(c["files"]["data"]), rows)
        with pytest.raises(CheckpointError, match=r"prompts_sha256=.*\(set by the records of post\.data .*\): "
                                                  r"resume with the data settings"):
            _resume(c, "data", "edit")
    finally:
        shutil.copyfile(keep, c["files"]["data"])
    # evaluation only: another post.val_data, other eval_examples; a max_new_tokens that drops nothing more;
    # post.tasks beside post.data (unused)
    ok = _resume(c, "data", "eval", f"post.val_data=[{c['files']['val2']}]", "post.eval_examples=5",
                 "post.max_new_tokens=20", "post.tasks=[add]", steps=3)
    assert ok.step == 3 and ok.val["n"] == 5
    assert _resume(c, "tasks", "eval", "post.eval_examples=3", steps=3).val["n"] == 3


COMMON = ("post.prompts_per_step=2", "post.samples_per_prompt=2", "post.eval_examples=4", "ckpt_every=1")


def test_an_auto_reward_model_stays_the_checkpoints_on_resume(sft_model, tmp_path):
    """post.reward_model=auto resolved to "task" when the run started; a reward run written to ``out`` since
    was picked up by the resume (the reward changed mid-run); now the run keeps its reward, as its reference."""
    from fastlm.models import config_to_dict
    from fastlm.models.reward import RewardModel
    from fastlm.train.checkpoint import load_model, save_checkpoint
    d, ckpt, _ = sft_model
    out = str(tmp_path)
    full = run_rl(_cfg(out, ckpt, "grpo", 2, *COMMON, "post.reward_model=auto", "run_name=full"), console=False)
    cut = run_rl(_cfg(out, ckpt, "grpo", 1, *COMMON, "post.reward_model=auto", "run_name=cut"), console=False)
    policy, _, _ = load_model(ckpt)
    torch.manual_seed(3)
    rm = RewardModel.from_gpt(policy)
    save_checkpoint(os.path.join(out, "reward-x", "checkpoints"), 1, model_state=rm.state_dict(), optimizer_state=None,
                    tokenizer_path=os.path.join(ckpt, "tokenizer.fastlm"),
                    meta={"model_config": config_to_dict(rm.config), "train_config": {"task": "reward"}})
    resumed = run_rl(_cfg(out, ckpt, "grpo", 2, *COMMON, "post.reward_model=auto", "run_name=cut"),
                     resume=cut.checkpoint, console=False)
    a, b = load_checkpoint(full.checkpoint), load_checkpoint(resumed.checkpoint)
    assert b.meta["reward_model"] == "task"
    assert all(torch.equal(v, b.model_state[k]) for k, v in a.model_state.items())
    new = run_rl(_cfg(out, ckpt, "grpo", 1, *COMMON, "post.reward_model=auto", "run_name=new"), console=False)
    assert load_checkpoint(new.checkpoint).meta["reward_model"].startswith(os.path.join(out, "reward-x"))


@pytest.mark.parametrize("task", ["ppo", "grpo"])
def test_a_fixed_kl_coefficient_changed_on_resume_is_used_and_logged(sft_model, tmp_path, task):
    """The checkpoint's kl_coef overrode the new post.kl_coef: ppo kept rewarding with the old one, grpo's loss
    used the new one but logged (and saved) the old one. An adaptive one (kl_target) is state: test above."""
    d, ckpt, _ = sft_model
    out = str(tmp_path)
    cut = run_rl(_cfg(out, ckpt, task, 1, *COMMON, f"run_name={task}"), console=False)
    res = run_rl(_cfg(out, ckpt, task, 2, *COMMON, f"run_name={task}", "post.kl_coef=0.05"), resume=cut.checkpoint,
                 console=False)
    coefs = [r["kl_coef"] for r in _metrics(res.run_dir) if "reward/mean" in r]
    assert coefs == [0.01, 0.05] and load_checkpoint(res.checkpoint).meta["kl_coef"] == 0.05
    if task == "ppo":  # and the rewards used it: the weights are not those of a resume with the old one
        other = run_rl(_cfg(out, ckpt, task, 2, *COMMON, "run_name=other"), resume=cut.checkpoint, console=False)
        a, b = load_checkpoint(res.checkpoint).model_state, load_checkpoint(other.checkpoint).model_state
        assert any(not torch.equal(v, b[k]) for k, v in a.items())


# ------------------------------------------------------------------------------------------- prompt data

G = {"prompt": "Repeat: one two", "task": "copy", "answer": "one two"}


def _old_split(n_items, scorable, val_fraction, seed):
    """The hold-out as it was (index by index): a reference for data without copies."""
    import math
    import random
    order = list(scorable)
    random.Random(seed).shuffle(order)
    n_val = min(math.ceil(val_fraction * len(order)), n_items - 1) if n_items > 1 else 0
    return set(order[:n_val])


@pytest.mark.parametrize("seed", [0, 1, 5])
def test_held_out_prompts_leave_training_with_their_copies(tmp_path, seed):
    """A prompts file with copies: a held-out prompt's copies stayed in training (the held-out exact match then
    scored trained prompts) and it was scored once per copy. Without copies the split is the one it was."""
    rows = [{**G, "prompt": f"Repeat: {w}", "answer": w} for w in ("one", "two", "three", "four", "five", "six")]
    dup = rows + rows[:3] + rows[:1] + [{"prompt": "Repeat: one"}]  # copies, one of them unscorable
    for data, val_fraction in ((dup, 0.5), (dup, 0.2), (rows, 0.5), (rows, 1.0)):
        path = _write(tmp_path / "p.jsonl", data)
        cfg = from_dict(TrainConfig, {"task": "grpo", "seed": seed, "post": {"data": [path], "max_new_tokens": 8},
                                      "data": {"val_fraction": val_fraction}})
        train, val = _prompts(cfg, TOK, max_seq_len=64)
        val_ids = [tuple(_user_prompt(TOK, ex.prompt)) for ex in val]
        assert len(set(val_ids)) == len(val_ids) and val  # each held-out prompt once
        assert not set(val_ids) & {tuple(ids) for ids, _ in train}  # none of them trained on
        held = sum(sum(tuple(_user_prompt(TOK, r["prompt"])) == v for r in data) for v in val_ids)
        assert len(train) + held == len(data) and train
        if data is rows:
            old = _old_split(len(rows), range(len(rows)), val_fraction, seed)
            assert [ex.prompt for ex in val] == [rows[i]["prompt"] for i in range(len(rows)) if i in old]
    val_path = _write(tmp_path / "val.jsonl", dup)  # post.val_data with copies: each prompt scored once
    cfg = from_dict(TrainConfig, {"task": "grpo", "seed": seed, "post": {"data": [path], "val_data": [val_path],
                                                                         "max_new_tokens": 8}})
    train, val = _prompts(cfg, TOK, max_seq_len=64)
    assert [ex.prompt for ex in val] == [r["prompt"] for r in rows] and len(train) == len(rows)


@pytest.mark.parametrize("record, kept", [
    ({"messages": [{"role": "user", "content": "Repeat: one two"}], "task": "copy", "answer": "one two"},
     "scorable, not held out"),
    ({"messages": [{"role": "user", "content": "Repeat: one two"}, {"role": "assistant", "content": "x"}],
      "task": "copy", "answer": "one two"}, "scorable, not held out"),
    ({"instruction": "Repeat: one two", "output": "x", "task": "copy", "answer": "one two"}, "scorable, not held out"),
    ({"prompt": "Repeat: one two", "completion": "x"}, "needs task"),
    ({"messages": [{"role": "user", "content": "Repeat: one two"}], "task": "copy"}, "needs task"),
    ({**G, "answer": 2.0}, "float"), ({**G, "answer": True}, "bool"), ({**G, "answer": None}, "NoneType"),
    ({**G, "answer": {"a": 1}}, "dict"), ({**G, "task": None}, "unknown task None"),
    ({**G, "task": "Copy"}, "unknown task 'Copy'"),
])
def test_chat_and_plain_prompt_records(tmp_path, record, kept):
    """Chat records (messages, Alpaca) render the user turn(s) and train, scored by the task reward when they
    have task + answer, but only plain {"prompt", "task", "answer"} records are held out; every bad record is
    refused naming file:line (test_rl.py covers a list answer and an unknown task name)."""
    path = _write(tmp_path / "p.jsonl", [G, record])
    if kept.startswith("scorable"):
        (_, m0, e0), (ids, meta, ex) = _read_prompts([path], TOK, max_seq_len=64, max_new_tokens=8, need_task=True)
        assert ids == _user_prompt(TOK, "Repeat: one two") and meta == {"task": "copy", "answer": "one two"}
        assert ex is None and e0 is not None
        return
    with pytest.raises(ValueError, match=rf"p\.jsonl:2: .*{kept if kept != 'needs task' else 'needs prompts'}"):
        _read_prompts([path], TOK, max_seq_len=64, max_new_tokens=8, need_task=True)
