"""Edges of multi-process training and resume (CPU): a resume under another batch layout or other training
data is refused naming the checkpoint and the setting (or noted when the batch changes on purpose), val rows
are at least one per rank, a rank that fails at setup ends the launch with its error instead of a hang, and
a run stopped by SIGTERM/SIGINT resumes to the weights of one that never stopped."""
import json
import os
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest
import torch

from test_trainer import data_root  # noqa: F401  (the shards fixture)
from train_fixtures import make_shards, tiny_config, torchrun, train_in_torchrun

from fastlm.tokenizer import Tokenizer
from fastlm.tokenizer.shards import TokenShardWriter, file_sha256
from fastlm.train.batches import load_batches
from fastlm.train.checkpoint import (CheckpointError, checkpoint_step, latest_checkpoint, list_checkpoints,
                                     load_checkpoint)
from fastlm.train.data import PackedBatches, RandomRows, TokenDataset
from fastlm.train.distributed import DistInfo
from fastlm.train.trainer import run

torch.set_num_threads(1)
HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def saved(data_root, tmp_path_factory):
    """A 1-process run (micro_batch 4: 128 tokens/step) checkpointed at step 2."""
    out = str(tmp_path_factory.mktemp("saved"))
    return run(tiny_config(data_root, out, max_steps=2, ckpt_every=2), console=False).checkpoint


def shards_like(root: str, out: str, texts_fn) -> str:
    """Shards of ``texts_fn(i)`` for as many documents as ``make_shards(root)`` wrote, same tokenizer."""
    tok_file = os.path.join(root, "tokenizer.fastlm")
    tok = Tokenizer.from_file(tok_file)
    n = TokenDataset(os.path.join(root, "tokens")).n_docs
    w = TokenShardWriter(out, vocab_size=tok.n_vocab, tokenizer_sha256=file_sha256(tok_file))
    for i in range(n):
        w.add([tok.special_tokens["<|bos|>"]] + tok.encode(texts_fn(i)))
    w.close()
    return out


# ---- 1, 4: the batch layout on resume ------------------------------------------------------------------

@pytest.mark.parametrize("over", [{"micro_batch": 8}, {"data": {"seq_len": 64}}])
def test_a_layout_that_cannot_hold_the_checkpoints_batch_names_it(data_root, saved, tmp_path, over):
    # before: "tokens_per_step 128 is not a multiple of ..." although tokens_per_step was never set
    cfg = tiny_config(data_root, str(tmp_path), max_steps=4, run_name="b", **over)
    with pytest.raises(ValueError, match=r"--resume .*step-00000002: its batch of 128 tokens/step \(kept when "
                                         r"tokens_per_step=0\) .* resume with a micro_batch that divides it"):
        run(cfg, resume=saved, console=False)


def test_a_changed_batch_is_noted_and_the_same_batch_is_not(data_root, saved, tmp_path, capsys):
    run(tiny_config(data_root, str(tmp_path), max_steps=3, run_name="same", micro_batch=2), resume=saved)
    assert "batch changes" not in capsys.readouterr().out  # 2 micro-steps of 2 rows: the checkpoint's batch
    r = run(tiny_config(data_root, str(tmp_path), max_steps=3, run_name="big", tokens_per_step=256), resume=saved)
    assert r.step == 3
    assert "note: the batch changes from the checkpoint's 128 to 256 tokens/step" in capsys.readouterr().out


# ---- 4: other training data on resume ------------------------------------------------------------------

def test_other_training_data_is_refused_naming_the_checkpoint(data_root, saved, tmp_path):
    for data, what in [({"val_fraction": 0.2}, "n_docs=54"), ({"shuffle": False}, "shuffle=True")]:
        cfg = tiny_config(data_root, str(tmp_path), max_steps=4, run_name="b", data=data)
        with pytest.raises(CheckpointError, match=rf"--resume .*step-00000002: its data position does not fit "
                                                  rf"this run's training data \(state {what} .*\(data\.\*, post\.\* data, seed\)"):
            run(cfg, resume=saved, console=False)


def test_other_shards_with_as_many_documents_are_refused(data_root, saved, tmp_path):
    # same tokenizer, same document count, other text: before, the run went on at a position of another corpus
    from corpora import PYDOC
    texts = [PYDOC[k] for k in sorted(PYDOC)]
    other = shards_like(data_root, str(tmp_path / "other"), lambda i: texts[i] + " " + texts[i][:50])
    cfg = tiny_config(data_root, str(tmp_path), max_steps=4, run_name="b",
                      data={"tokens": [other], "tokenizer": os.path.join(data_root, "tokenizer.fastlm")})
    with pytest.raises(CheckpointError, match=r"its data position does not fit .*\(state n_tokens=\d+ does not "
                                              r"match this loader's \d+\)"):
        run(cfg, resume=saved, console=False)


@pytest.mark.parametrize("make", [
    lambda ds: PackedBatches(ds, batch=2, seq_len=8, seed=1),
    lambda ds: RandomRows(ds, seq_len=8, seed=1),
])
def test_a_position_saved_before_n_tokens_still_loads(data_root, make):
    ds = TokenDataset(os.path.join(data_root, "tokens"))
    a = make(ds)
    a.next_rows(3)
    state = a.state_dict()
    assert state.pop("n_tokens") == a.n_tokens
    b = make(ds)
    b.load_state_dict(state)
    assert all(torch.equal(u, v) for u, v in zip(a.next_rows(2), b.next_rows(2)))


# ---- 2: val rows and ranks -----------------------------------------------------------------------------

def _prepared(data_root):
    return types.SimpleNamespace(tokenizer=os.path.join(data_root, "tokenizer.fastlm"),
                                 train=[os.path.join(data_root, "tokens")], val=[])


def test_val_budget_of_one_row_still_gives_every_rank_one(data_root, tmp_path):
    # eval_tokens = seq_len: one row, which 2 ranks cannot share; before: refused, blaming the data
    cfg = tiny_config(data_root, str(tmp_path), eval_tokens=32)
    parts = [load_batches(cfg, _prepared(data_root), DistInfo(rank=r, world_size=2)).val for r in range(2)]
    assert [sum(x.shape[0] for x, _ in v) for v in parts] == [1, 1]
    assert not torch.equal(parts[0][0][0], parts[1][0][0])
    one = load_batches(cfg, _prepared(data_root), DistInfo()).val  # one process keeps its one row
    assert sum(x.shape[0] for x, _ in one) == 1 and torch.equal(one[0][0], parts[0][0][0])


def test_val_data_smaller_than_the_world_is_refused(data_root, tmp_path):
    tok_file = os.path.join(data_root, "tokenizer.fastlm")
    w = TokenShardWriter(str(tmp_path / "val"), vocab_size=Tokenizer.from_file(tok_file).n_vocab,
                         tokenizer_sha256=file_sha256(tok_file))
    w.add(list(range(40)))  # one row of 32
    prepared = types.SimpleNamespace(**{**_prepared(data_root).__dict__, "val": w.close()})
    cfg = tiny_config(data_root, str(tmp_path))
    with pytest.raises(ValueError, match="1 validation row.s. cannot be split over 2 ranks"):
        load_batches(cfg, prepared, DistInfo(rank=1, world_size=2))


@pytest.mark.slow
def test_two_ranks_on_a_three_document_corpus(data_root, tmp_path):
    # 2 train documents, 1 val document (every 2nd), eval_tokens one row: trains, evaluates, checkpoints
    tok_file = os.path.join(data_root, "tokenizer.fastlm")
    w = TokenShardWriter(str(tmp_path / "c3"), vocab_size=Tokenizer.from_file(tok_file).n_vocab,
                         tokenizer_sha256=file_sha256(tok_file))
    rng = np.random.default_rng(0)
    for _ in range(3):
        w.add(rng.integers(0, 256, 200).tolist())
    cfg = tiny_config(data_root, str(tmp_path), max_steps=3, micro_batch=2, eval_every=3, ckpt_every=3,
                      eval_tokens=32, data={"tokens": w.close(), "tokenizer": tok_file, "val_fraction": 0.5})
    train_in_torchrun(tmp_path, cfg)
    run_dir = os.path.join(str(tmp_path), "run")
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert [m["step"] for m in rows if "val/loss" in m] == [0, 3]
    assert load_checkpoint(latest_checkpoint(run_dir)).meta["world_size"] == 2


# ---- 3: a rank failing at setup ------------------------------------------------------------------------

FAILING = """import sys
sys.path.insert(0, {tests!r})
import fastlm.posttrain.objective as o
make = o.make_objective
def fail_on_rank_1(cfg, info, **kw):
    if info.rank == 1:
        raise ValueError("rank 1 cannot read its data")
    return make(cfg, info, **kw)
o.make_objective = fail_on_rank_1
from fastlm.cli.train import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_rank_failing_at_setup_ends_the_launch_with_its_error(data_root, tmp_path):
    # rank 0 waits in the barrier after data preparation: the launcher must end it, not wait forever
    cfg = tiny_config(data_root, str(tmp_path), max_steps=3, micro_batch=2)
    (tmp_path / "cfg.yaml").write_text(json.dumps(cfg.to_dict()))
    (tmp_path / "worker.py").write_text(FAILING.format(tests=HERE))
    t0 = time.time()
    with pytest.raises(AssertionError) as failed:
        torchrun([str(tmp_path / "worker.py"), "--config", str(tmp_path / "cfg.yaml")], timeout=60)
    assert time.time() - t0 < 60
    assert "fastlm-train: error: rank 1 cannot read its data" in str(failed.value)
    assert not os.path.exists(os.path.join(str(tmp_path), "run"))  # rank 0 discarded the run it had started


# ---- 5: SIGTERM / SIGINT during training ---------------------------------------------------------------

SLOW_CLI = """import sys, time
sys.path.insert(0, {tests!r})
from fastlm.train import data as D
take = D.GlobalRows.take
def slow(self, *a, **k):
    time.sleep(0.5)
    return take(self, *a, **k)
D.GlobalRows.take = slow
from fastlm.cli.train import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("sig, rc", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["term", "int"])
def test_a_stopped_run_resumes_to_the_uninterrupted_weights(data_root, tmp_path, sig, rc):
    over = dict(max_steps=8, ckpt_every=3, keep_last=3)
    a = run(tiny_config(data_root, str(tmp_path / "a"), **over), console=False)
    cfg = tiny_config(data_root, str(tmp_path / "b"), **over)
    (tmp_path / "cfg.yaml").write_text(json.dumps(cfg.to_dict()))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", SLOW_CLI.format(tests=HERE), "--config",
                             str(tmp_path / "cfg.yaml"), "--quiet"], env=env, stderr=subprocess.PIPE)
    run_b = os.path.join(str(tmp_path / "b"), "run")
    deadline = time.time() + 60
    try:
        while not list_checkpoints(run_b):
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode() if proc.poll() else ""
            time.sleep(0.05)
        time.sleep(0.25)  # into the next step (0.5 s each)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == rc, err.decode()
    stopped_at = checkpoint_step(latest_checkpoint(run_b))
    if sig == signal.SIGINT:
        assert "interrupted (continue with --resume and the run directory)" in err.decode()
        assert stopped_at < 8 and stopped_at % 3 == 0  # the last periodic checkpoint: Ctrl-C stops at once
    else:  # SIGTERM: the step in progress, a checkpoint at it, exit 143 (fastlm.train.stop)
        assert f"stopped by SIGTERM at step {stopped_at} (continue with --resume {run_b})" in err.decode()
        assert 3 < stopped_at < 8 and stopped_at % 3, stopped_at  # not a ckpt_every step: written on the way out
        meta = load_checkpoint(latest_checkpoint(run_b)).meta
        assert meta["loop"]["step"] == stopped_at
    b = run(cfg, resume=run_b, console=False)
    wa, wb = load_checkpoint(a.checkpoint).model_state, load_checkpoint(b.checkpoint).model_state
    assert b.step == 8 and all(torch.equal(wa[k], wb[k]) for k in wa)


TERM_ONE_RANK = """import json, os, signal, sys, torch
torch.set_num_threads(1)
from fastlm.train import data as D
take, calls = D.GlobalRows.take, [0]
def term_rank_1(self, n, rank=0, world_size=1):
    calls[0] += 1
    if rank == 1 and calls[0] == 4:  # during step 4 (the first take is validation's)
        os.kill(os.getpid(), signal.SIGTERM)
    return take(self, n, rank, world_size)
D.GlobalRows.take = term_rank_1
from fastlm.config import from_dict
from fastlm.train.config import TrainConfig
from fastlm.train.trainer import run
r = run(from_dict(TrainConfig, json.loads(sys.argv[1])), resume=sys.argv[2] or None, console=False)
with open(sys.argv[3] + os.environ["RANK"], "w") as f:
    json.dump({"stopped": r.stopped, "step": r.step, "checkpoint": r.checkpoint}, f)
"""


@pytest.mark.slow
def test_sigterm_on_one_rank_stops_every_rank_at_one_step_with_a_checkpoint(data_root, tmp_path):
    # the flag travels in the step's all-reduce: rank 0, never signalled, stops at rank 1's step
    cfg = tiny_config(data_root, str(tmp_path), max_steps=10, ckpt_every=100, eval_every=0, micro_batch=2)
    (tmp_path / "worker.py").write_text(TERM_ONE_RANK)
    torchrun([str(tmp_path / "worker.py"), json.dumps(cfg.to_dict()), "", str(tmp_path / "rank")])
    ranks = [json.loads((tmp_path / f"rank{r}").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1] and ranks[0]["stopped"] == "sigterm", ranks
    step = ranks[0]["step"]
    assert 0 < step < 10
    run_dir = os.path.join(str(tmp_path), "run")
    assert checkpoint_step(latest_checkpoint(run_dir)) == step  # written on the way out (ckpt_every 100)
    assert ranks[0]["checkpoint"] == latest_checkpoint(run_dir)
    train_in_torchrun(tmp_path, cfg, resume=run_dir)  # and it goes on to the end
    assert checkpoint_step(latest_checkpoint(run_dir)) == 10

