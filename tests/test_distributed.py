"""Multi-process training on CPU (gloo, 2 processes under torch.distributed.run): DDP and FSDP give the loss
curve of one process with the same global batch; a 2-process checkpoint resumes in 1 process."""
import dataclasses
import json
import os

import pytest
import torch

from train_fixtures import make_shards, tiny_config
from train_fixtures import train_in_torchrun as torchrun

from fastlm.train.checkpoint import load_checkpoint
from fastlm.train.data import GlobalRows, RandomRows, TokenDataset
from fastlm.train.distributed import DistInfo, all_reduce_sum, init_distributed, wrap_model
from fastlm.train.trainer import run

torch.set_num_threads(1)

@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("shards"))
    make_shards(root)
    return root


def losses(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {m["step"]: m["train/loss"] for m in rows if "train/loss" in m}, \
        {m["step"]: m["val/loss"] for m in rows if "val/loss" in m}


def assert_close_curves(a, b, rel=1e-5):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=rel), (k, a[k], b[k])


def test_global_rows_split_is_world_size_free(data_root):
    ds = TokenDataset(os.path.join(data_root, "tokens"))
    one = GlobalRows(RandomRows(ds, seq_len=8, seed=3))
    x1, _, r1 = one.take(4)
    parts = []
    for rank in range(2):
        g = GlobalRows(RandomRows(ds, seq_len=8, seed=3))
        parts.append(g.take(4, rank, 2))
    assert torch.equal(torch.cat([p[0] for p in parts]), x1)
    assert torch.equal(torch.cat([p[2] for p in parts]), r1)


def test_single_process_helpers():
    info = init_distributed("cpu")
    assert info.world_size == 1 and info.is_main and not info.distributed
    assert all_reduce_sum([2.5], info) == [2.5]
    m = torch.nn.Linear(2, 2)
    assert wrap_model(m, DistInfo()) is m


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_match_one(data_root, tmp_path, mode):
    over = dict(max_steps=6, eval_every=3, log_every=1, ckpt_every=3, keep_last=5)
    one = run(tiny_config(data_root, str(tmp_path / "one"), micro_batch=4, **over), console=False)
    cfg2 = tiny_config(data_root, str(tmp_path / "two"), micro_batch=2, distributed=mode, **over)
    torchrun(tmp_path, cfg2)
    two_dir = os.path.join(str(tmp_path / "two"), "run")
    t1, v1 = losses(one.run_dir)
    t2, v2 = losses(two_dir)
    assert_close_curves(t1, t2)
    assert_close_curves(v1, v2)
    w1 = load_checkpoint(one.checkpoint).model_state
    w2 = load_checkpoint(os.path.join(two_dir, "checkpoints", "step-00000006")).model_state
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=1e-4, atol=1e-5)

    # the 2-process checkpoint of step 3 resumes in 1 process (a branch: the run has step 6 already) and
    # lands where the 1-process run did
    resumed = run(dataclasses.replace(cfg2, run_name="branch"),
                  resume=os.path.join(two_dir, "checkpoints", "step-00000003"), console=False)
    assert resumed.step == 6
    w3 = load_checkpoint(resumed.checkpoint).model_state
    for k in w1:
        torch.testing.assert_close(w1[k], w3[k], rtol=1e-4, atol=1e-5)
    t3, _ = losses(resumed.run_dir)
    assert_close_curves(t1, t3)


@pytest.mark.slow
def test_one_process_checkpoint_resumes_in_two(data_root, tmp_path):
    over = dict(max_steps=4, ckpt_every=2, keep_last=5, log_every=1)
    one = run(tiny_config(data_root, str(tmp_path / "one"), micro_batch=4, **over), console=False)
    cfg = tiny_config(data_root, str(tmp_path / "b"), micro_batch=4, **{**over, "max_steps": 2})
    first = run(cfg, console=False)
    cfg2 = tiny_config(data_root, str(tmp_path / "b"), micro_batch=2, **over)
    torchrun(tmp_path, cfg2, resume=first.checkpoint)
    t1, _ = losses(one.run_dir)
    t2, _ = losses(first.run_dir)
    assert_close_curves(t1, t2)


@pytest.mark.slow
def test_two_processes_match_one_mlm(data_root, tmp_path):
    # MLM masks are drawn per global row: the same masks under any world size
    over = dict(task="mlm", max_steps=4, eval_every=2, log_every=1)
    one = run(tiny_config(data_root, str(tmp_path / "one"), micro_batch=4, **over), console=False)
    torchrun(tmp_path, tiny_config(data_root, str(tmp_path / "two"), micro_batch=2, **over))
    t1, v1 = losses(one.run_dir)
    t2, v2 = losses(os.path.join(str(tmp_path / "two"), "run"))
    assert_close_curves(t1, t2)
    assert_close_curves(v1, v2)
