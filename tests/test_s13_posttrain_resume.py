"""Post-training resume (sft packed/padded, dpo, reward) across world sizes, on CPU with 2 gloo ranks: the
reference is the run that never stopped. A run stopped at a checkpoint and resumed under the same world size
ends with its weights exactly; resumed under 2 -> 1 or 1 -> 2 processes it keeps the batch and trains on
exactly the rows the uninterrupted run trains on next (each objective's `next_micro` is recorded on every
rank); other post-training data (another file, another record count, seed, hold-out, packing, masks) is
refused naming the setting, not resumed at a position of other data."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from train_fixtures import tiny_config, torchrun

from fastlm.posttrain.pairs import Pair, PairStream
from fastlm.posttrain.sft import SFTRows
from fastlm.train.checkpoint import CheckpointError, load_checkpoint
from fastlm.train.trainer import run

torch.set_num_threads(1)
pytestmark = pytest.mark.slow

# the code that records, per call of an objective's next_micro, the rows it returned on this rank: real
# tokens of each row (SFT: packed or padded rows; pairs: the chosen row), one JSON line per call
RECORDER = '''
import json, os

def signature(batch):
    ids = batch["input_ids"]
    if "lengths" in batch:  # a pair batch: chosen rows first
        return [ids[i, :int(batch["lengths"][i])].tolist() for i in range(ids.shape[0] // 2)]
    real = batch["doc_ids"] >= 0 if "doc_ids" in batch else batch["attention_mask"] > 0
    return [ids[i][real[i]].tolist() for i in range(ids.shape[0])]

def recording(make, where):
    """make_objective, whose objectives log their rows to where["path"] + ".rank<r>"."""
    def make_recording(cfg, info, **kw):
        obj = make(cfg, info, **kw)
        take, path = obj.next_micro, f"{where['path']}.rank{info.rank}"
        def next_micro(n):
            batch = take(n)
            with open(path, "a") as f:
                f.write(json.dumps(signature(batch)) + "\\n")
            return batch
        obj.next_micro = next_micro
        return obj
    return make_recording
'''

# jobs [{cfg, resume, log}] in one process group; each job's result (or error) in log + ".result"
WORKER = RECORDER + '''
import sys, torch
torch.set_num_threads(1)
import torch.distributed as dist
dist.init_process_group("gloo")
import fastlm.posttrain.objective as O
from fastlm.config import from_dict
from fastlm.train.config import TrainConfig
from fastlm.train.trainer import run
where = {}
O.make_objective = recording(O.make_objective, where)
for job in json.loads(open(sys.argv[1]).read()):
    where["path"] = job["log"]
    try:
        r = run(from_dict(TrainConfig, job["cfg"]), resume=job["resume"] or None, console=False)
        out = {"checkpoint": r.checkpoint, "step": r.step}
    except Exception as e:  # a refusal: every rank raises it before any collective of the loop
        out = {"error": f"{type(e).__name__}: {e}"}
    if dist.get_rank() == 0:
        with open(job["log"] + ".result", "w") as f:
            json.dump(out, f)
    dist.barrier()
dist.destroy_process_group()
'''

TASKS = {"sft": {"packing": True}, "sft_padded": {"packing": False}, "dpo": {}, "reward": {}}
STEPS, STOP = 4, 2  # runs of 4 steps, checkpointed at 2 (4 rows a step: 16 rows cross an epoch)


def _jsonl(path, rows):
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A 2-step tiny CLM run to start from, 20 chat records (18 train) and 12 preference records (11 train)."""
    root = str(tmp_path_factory.mktemp("s13post"))
    clm = run(tiny_config(root, os.path.join(root, "runs"), max_steps=2, run_name="clm"), console=False).run_dir
    chats = _jsonl(os.path.join(root, "chats.jsonl"),
                   [{"instruction": f"name {i}", "output": f"item {i % 7} " + "x" * (i % 5)} for i in range(20)])
    prefs = _jsonl(os.path.join(root, "prefs.jsonl"),
                   [{"prompt": f"q {i}", "chosen": f"good {i}", "rejected": f"bad {i % 5}"} for i in range(12)])
    return {"root": root, "clm": clm, "chats": chats, "prefs": prefs}


def config(base, name, out, *, data=None, **over):
    """``name`` (a TASKS key) from the clm run on the chats/prefs, 2 rows per rank: 4 rows (128 tokens) a step
    on 2 ranks; ``micro_batch=4`` on 1."""
    task = name.split("_")[0]
    post = {"init_from": base["clm"], "data": [data or (base["chats"] if task == "sft" else base["prefs"])],
            **TASKS[name], **over.pop("post", {})}
    kw = {"task": task, "run_name": "r", "max_steps": STEPS, "ckpt_every": STOP, "keep_last": 5, "micro_batch": 2,
          "post": post, **over}
    return tiny_config(base["root"], out, **kw)


def stopped_copy(run_dir, dst):
    """``run_dir`` as a run stopped at step STOP: a copy without its later checkpoints."""
    shutil.copytree(run_dir, dst)
    shutil.rmtree(os.path.join(dst, "checkpoints", f"step-{STEPS:08d}"))
    return dst


def launch(tmp_path, jobs):
    """The jobs on 2 gloo ranks, one torchrun launch."""
    (tmp_path / "worker.py").write_text(WORKER)
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    torchrun([str(tmp_path / "worker.py"), str(tmp_path / "jobs.json")])


def in_process(monkeypatch, log, cfg, resume=None):
    """`run` in this process (world 1), its objective's rows recorded under ``log``."""
    import fastlm.posttrain.objective as O
    ns = {}
    exec(RECORDER, ns)
    with monkeypatch.context() as m:
        m.setattr(O, "make_objective", ns["recording"](O.make_objective, {"path": log}))
        return run(cfg, resume=resume, console=False)


def rows(log):
    """The global row sequence of a run: call after call, rank 0's rows then rank 1's."""
    ranks = sorted(p for p in os.listdir(os.path.dirname(log)) if p.startswith(os.path.basename(log) + ".rank"))
    calls = [[json.loads(line) for line in open(os.path.join(os.path.dirname(log), r))] for r in ranks]
    assert len({len(c) for c in calls}) == 1, "the ranks made different numbers of next_micro calls"
    return [row for parts in zip(*calls) for part in parts for row in part]


def result(log):
    with open(log + ".result") as f:
        out = json.load(f)
    assert "error" not in out, out["error"]
    return out["checkpoint"]


def weights(ckpt):
    return load_checkpoint(ckpt, optimizer=False).model_state


@pytest.fixture(scope="module")
def one_process(base, tmp_path_factory):
    """Each task run to STEPS in one process at micro_batch 4 (the 2-rank batch), checkpointed at STOP."""
    out = tmp_path_factory.mktemp("w1")
    mp = pytest.MonkeyPatch()
    try:
        runs = {name: in_process(mp, str(out / f"{name}.w1"), config(base, name, str(out / name), micro_batch=4))
                for name in TASKS}
    finally:
        mp.undo()
    return {name: {"run": r.run_dir, "ckpt": r.checkpoint, "log": str(out / f"{name}.w1")} for name, r in runs.items()}


def test_resume_under_any_world_size_continues_the_uninterrupted_run(base, one_process, tmp_path, monkeypatch):
    logs = tmp_path / "logs"
    logs.mkdir()
    # 2 ranks, uninterrupted (with a checkpoint at STOP: the state a run stopped there leaves)
    launch(tmp_path, [{"cfg": config(base, n, str(tmp_path / n / "two")).to_dict(), "resume": "",
                       "log": str(logs / f"{n}.two")} for n in TASKS])
    jobs = []
    for n in TASKS:
        two = os.path.join(str(tmp_path / n / "two"), "r")
        one = one_process[n]["run"]
        jobs += [  # 2 -> 2 (exact), 1 -> 2 (the checkpoint's batch: 2 rows x 2 ranks), 1 -> 2 at micro_batch 4
            {"cfg": config(base, n, str(tmp_path / n / "22")).to_dict(), "log": str(logs / f"{n}.22"),
             "resume": stopped_copy(two, str(tmp_path / n / "22" / "r"))},
            {"cfg": config(base, n, str(tmp_path / n / "12")).to_dict(), "log": str(logs / f"{n}.12"),
             "resume": stopped_copy(one, str(tmp_path / n / "12" / "r"))},
            {"cfg": config(base, n, str(tmp_path / n / "12big"), micro_batch=4).to_dict(),
             "log": str(logs / f"{n}.12big"), "resume": stopped_copy(one, str(tmp_path / n / "12big" / "r"))}]
    launch(tmp_path, jobs)
    for n in TASKS:
        full_two, full_one = rows(str(logs / f"{n}.two")), rows(one_process[n]["log"])
        assert len(full_two) == 4 * STEPS and full_two == full_one  # one stream, whatever the world size
        later = full_one[4 * STOP:]
        ref_two = weights(result(str(logs / f"{n}.two")))
        # 2 -> 2: the uninterrupted run's rows and weights, exactly
        got = weights(result(str(logs / f"{n}.22")))
        assert rows(str(logs / f"{n}.22")) == later, n
        assert all(torch.equal(ref_two[k], got[k]) for k in ref_two), n
        # 1 -> 2: the next rows, 4 a step (the batch kept), weights equal up to the order of the sums
        ckpt = result(str(logs / f"{n}.12"))
        assert rows(str(logs / f"{n}.12")) == later, n
        meta = load_checkpoint(ckpt, optimizer=False).meta
        assert meta["tokens_per_step"] == 128 and meta["world_size"] == 2 and meta["step"] == STEPS
        ref_one, got = weights(one_process[n]["ckpt"]), weights(ckpt)
        assert all(torch.allclose(ref_one[k], got[k], rtol=0, atol=1e-3) for k in ref_one), n
        # 1 -> 2 with micro_batch 4: 8 rows a micro-step cannot make the checkpoint's 4-row batch: refused
        with open(str(logs / f"{n}.12big") + ".result") as f:
            err = json.load(f)["error"]
        assert "its batch of 128 tokens/step (kept when tokens_per_step=0)" in err and "micro_batch" in err, err
        # 2 -> 1 at micro_batch 2 (2 micro-steps a step): the next rows; here even the same weights
        log, two = str(logs / f"{n}.21"), os.path.join(str(tmp_path / n / "two"), "r")
        r = in_process(monkeypatch, log, config(base, n, str(tmp_path / n / "21")),
                       resume=stopped_copy(two, str(tmp_path / n / "21" / "r")))
        assert rows(log) == later, n
        got = weights(r.checkpoint)
        assert load_checkpoint(r.checkpoint, optimizer=False).meta["tokens_per_step"] == 128
        assert all(torch.allclose(ref_two[k], got[k], rtol=0, atol=1e-3) for k in ref_two), n


def _other_records(path, out, change):
    with open(path) as f:
        return _jsonl(out, change([json.loads(line) for line in f]))


@pytest.mark.parametrize("name", list(TASKS))
def test_other_post_training_data_is_refused_naming_the_setting(base, one_process, tmp_path, name):
    # before: each of these resumed silently at the checkpoint's position in other data
    sft = name.startswith("sft")
    data = base["chats"] if sft else base["prefs"]
    field = "output" if sft else "chosen"
    other = _other_records(data, str(tmp_path / "other.jsonl"), lambda rs: [{**r, field: r[field] + "!"} for r in rs])
    fewer = _other_records(data, str(tmp_path / "fewer.jsonl"), lambda rs: rs[:-2])
    what = "SFT training examples" if sft else "preference training pairs"
    count = "examples" if sft else "pairs"
    n, n_fewer, total = (18, 17, 20) if sft else (11, 9, 12)  # train examples (the rest held out), records
    cases = [({"data": other}, rf"{count}_sha256='\w+' does not match this run's '\w+' \(set by the records of "
                               r"post\.data"),
             ({"data": fewer}, rf"state {count}={n} does not match this run's {n_fewer} \(set by post\.data"),
             ({"seed": 7}, r"state seed=1337 does not match this run's 7 \(set by seed\)"),
             ({"data": None, "post": {"val_data": [fewer]}}, rf"state {count}={n} does not match this run's "
                                                             rf"{total} \(set by post\.data, post\.val_data")]
    if sft:
        cases += [({"post": {"packing": not TASKS[name]["packing"]}},
                   rf"state packing={TASKS[name]['packing']} does not match this run's "
                   rf"{not TASKS[name]['packing']} \(set by post\.packing\)"),
                  ({"post": {"train_on_prompt": True}}, r"examples_sha256=.* post\.train_on_prompt")]
    ckpt = one_process[name]["ckpt"].replace(f"step-{STEPS:08d}", f"step-{STOP:08d}")
    for i, (over, match) in enumerate(cases):
        cfg = config(base, name, str(tmp_path / "runs"), run_name=f"b{i}", micro_batch=4, **dict(over))
        with pytest.raises(CheckpointError, match=rf"--resume .*step-{STOP:08d}: its data position does not fit "
                                                  rf"this run's training data \({what}: .*{match}"):
            run(cfg, resume=ckpt, console=False)
    # the same data resumes (a branch of the run)
    assert run(config(base, name, str(tmp_path / "runs"), run_name="same", micro_batch=4, max_steps=STOP + 1),
               resume=ckpt, console=False).step == STOP + 1


def test_a_position_saved_before_the_data_checks_still_loads():
    ex = [([i + 1] * (2 + i % 3), [0] + [1] * (1 + i % 3)) for i in range(9)]
    a = SFTRows(ex, seq_len=8, pad_id=0, packing=True, seed=1)
    a.take(5)
    b = SFTRows(ex, seq_len=8, pad_id=0, packing=True, seed=1)
    b.load_state_dict({"epoch": a.epoch, "pos": a.pos})  # checkpoints written before: epoch and pos only
    assert torch.equal(a.take(3)["input_ids"], b.take(3)["input_ids"])
    pairs = [Pair([i, i], [i, 0], [0, 1], [0, 1], 1) for i in range(5)]
    s, t = PairStream(pairs, seed=0, rank=0, world=1), PairStream(pairs, seed=0, rank=0, world=1)
    s.next_micro(3)
    t.load_state_dict({"epoch": 0, "pos": 3})
    assert [p.chosen for p in s.next_micro(4)] == [p.chosen for p in t.next_micro(4)]
