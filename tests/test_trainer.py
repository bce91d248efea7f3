"""fastlm.train.trainer.run: short runs learn, exact resume after SIGKILL, corrupt/mismatched checkpoints
refused, spike/NaN steps skipped, gradient accumulation equals one big batch, MLM runs."""
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from train_fixtures import TINY_GPT, edit_state, make_shards, tiny_config

from fastlm.models import GPT, Encoder, EncoderConfig, GPTConfig
from fastlm.train import trainer as trainer_mod
from fastlm.train.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from fastlm.train.trainer import _optimizer, resume_config, run

torch.set_num_threads(1)
HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("shards"))
    make_shards(root)
    return root


def weights(path):
    return load_checkpoint(path).model_state


def metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_short_run_lowers_val_loss(data_root, tmp_path):
    cfg = tiny_config(data_root, str(tmp_path), max_steps=40, eval_every=20, log_every=10,
                      optim={"lr": 1e-2, "warmup_steps": 5})
    r = run(cfg, console=False)
    assert r.step == 40 and r.stopped == "max_steps" and r.skipped == 0
    vals = [m["val/loss"] for m in metrics(r.run_dir) if "val/loss" in m]
    assert len(vals) == 3 and vals[-1] < vals[0] - 0.3, vals
    assert r.val["loss"] == vals[-1] and 0 < r.val["bpb"] < vals[-1] / math.log(2)  # > 1 byte per token
    assert isinstance(r.sample, str) and r.sample.startswith(cfg.sample_prompt)
    assert os.path.isfile(os.path.join(r.run_dir, "config.yaml"))
    assert r.checkpoint == latest_checkpoint(r.run_dir) and r.checkpoint.endswith("step-00000040")
    train = [m for m in metrics(r.run_dir) if "train/loss" in m]
    assert [m["step"] for m in train] == [10, 20, 30, 40]
    assert all(k in train[0] for k in ("lr", "grad_norm", "tokens_per_s", "tokens"))


def _overfit(model, x, y, steps=150):
    from fastlm.train.config import TrainConfig
    torch.manual_seed(0)
    cfg = TrainConfig()
    cfg.optim.lr, cfg.optim.weight_decay = 1e-2, 0.0
    opt = _optimizer(model, cfg, torch.device("cpu"))
    for _ in range(steps):
        loss = model(x, y, kernels="torch")
        loss.backward()
        opt.step()
        opt.zero_grad()
    return float(loss.detach())


def test_overfit_one_batch_clm():
    torch.manual_seed(0)
    model = GPT(GPTConfig.named("tiny", vocab_size=64, **TINY_GPT))
    x = torch.randint(0, 64, (2, 16))
    assert _overfit(model, x[:, :-1], x[:, 1:]) < 0.05


def test_overfit_one_batch_mlm():
    torch.manual_seed(0)
    model = Encoder(EncoderConfig.named("tiny", vocab_size=64, **TINY_GPT))
    x = torch.randint(1, 64, (2, 16))
    y = torch.full_like(x, -100)
    y[:, ::3] = x[:, ::3]
    masked = x.masked_fill(y != -100, 0)
    assert _overfit(model, masked, y) < 0.05


CHILD = """
import json, sys, time, torch
sys.path.insert(0, {tests!r})
torch.set_num_threads(1)
from fastlm.config import from_dict
from fastlm.train import data as D
from fastlm.train.config import TrainConfig
from fastlm.train.trainer import run
take = D.GlobalRows.take
def slow(self, *a, **k):
    time.sleep({delay})
    return take(self, *a, **k)
D.GlobalRows.take = slow
run(from_dict(TrainConfig, json.loads({cfg!r})), console=False)
"""


def test_exact_resume_after_sigkill(data_root, tmp_path):
    over = dict(max_steps=10, ckpt_every=4, eval_every=5, keep_last=5,
                optim={"weight_decay": 0.1, "warmup_steps": 3})
    a = run(tiny_config(data_root, str(tmp_path / "a"), **over), console=False)
    cfg_b = tiny_config(data_root, str(tmp_path / "b"), **over)
    code = CHILD.format(tests=HERE, delay=0.3, cfg=json.dumps(cfg_b.to_dict()))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE)
    run_b = os.path.join(str(tmp_path / "b"), "run")
    deadline = time.time() + 120
    try:
        while latest_checkpoint(run_b) is None if os.path.isdir(run_b) else True:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    first = latest_checkpoint(run_b)
    assert first.endswith("step-00000004")
    assert not os.path.exists(os.path.join(run_b, "checkpoints", "step-00000010"))
    assert resume_config(run_b).to_dict() == cfg_b.to_dict()  # the CLI's --resume: config from the checkpoint
    assert resume_config(first, ["max_steps=12"]).max_steps == 12
    b = run(cfg_b, resume=run_b, console=False)
    assert b.step == 10 and b.run_dir == a.run_dir.replace(str(tmp_path / "a"), str(tmp_path / "b"))
    wa, wb = weights(a.checkpoint), weights(b.checkpoint)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    oa, ob = load_checkpoint(a.checkpoint).optimizer_state, load_checkpoint(b.checkpoint).optimizer_state
    for name, st in oa["state"].items():
        for key, v in st.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(ob["state"][name][key])), (name, key)
    # the resumed metrics continue the curve: same train losses as the uninterrupted run
    la = {m["step"]: m["train/loss"] for m in metrics(a.run_dir) if "train/loss" in m}
    lb = {m["step"]: m["train/loss"] for m in metrics(b.run_dir) if "train/loss" in m}
    assert la == lb
    assert b.val["loss"] == a.val["loss"] and b.sample == a.sample


def test_resume_an_older_checkpoint_branches_under_a_new_run_name(data_root, tmp_path):
    """Continuing an older checkpoint in place (later ones exist) is refused: pruning would mix two histories;
    with another run_name (--run-name) the run branches into a new directory, its log starting with the run's
    history, exactly as the run went on; the original run is left as it was."""
    import dataclasses
    from fastlm.train.checkpoint import list_checkpoints
    cfg = tiny_config(data_root, str(tmp_path), max_steps=6, ckpt_every=2, keep_last=5, log_every=1)
    a = run(cfg, console=False)
    names = [os.path.basename(c) for c in list_checkpoints(a.run_dir)]
    assert names == ["step-00000002", "step-00000004", "step-00000006"]
    before = {n: weights(os.path.join(a.run_dir, "checkpoints", n)) for n in names}
    older = os.path.join(a.run_dir, "checkpoints", "step-00000004")
    with pytest.raises(CheckpointError, match=r"later checkpoints \(step-00000006\).*--run-name"):
        run(cfg, resume=older, console=False)
    b = run(dataclasses.replace(cfg, run_name="branch"), resume=older, console=False)
    assert b.run_dir == os.path.join(str(tmp_path), "branch") and b.step == 6
    assert [os.path.basename(c) for c in list_checkpoints(b.run_dir)] == ["step-00000006"]
    assert all(torch.equal(v, weights(a.checkpoint)[k]) for k, v in weights(b.checkpoint).items())
    la = [(m["step"], m["train/loss"]) for m in metrics(a.run_dir) if "train/loss" in m]
    lb = [(m["step"], m["train/loss"]) for m in metrics(b.run_dir) if "train/loss" in m]
    assert [s for s, _ in lb] == [1, 2, 3, 4, 5, 6] and la == lb
    assert [os.path.basename(c) for c in list_checkpoints(a.run_dir)] == names  # the original run is untouched
    for n in names:
        assert all(torch.equal(v, before[n][k]) for k, v in weights(os.path.join(a.run_dir, "checkpoints", n)).items())
    with pytest.raises(CheckpointError, match="already holds checkpoints"):
        run(dataclasses.replace(cfg, run_name="branch"), resume=older, console=False)
    c = run(dataclasses.replace(cfg, run_name="other", max_steps=8), resume=a.run_dir, console=False)
    assert c.step == 8 and c.run_dir == os.path.join(str(tmp_path), "other")  # the latest one may branch too


def test_resume_refuses_corrupt_and_mismatched(data_root, tmp_path):
    cfg = tiny_config(data_root, str(tmp_path), max_steps=2, ckpt_every=1, keep_last=3)
    r = run(cfg, console=False)
    ckpt = r.checkpoint
    # another model shape: refused, naming what differs
    other = tiny_config(data_root, str(tmp_path), max_steps=3, model={"overrides": {**TINY_GPT, "d_model": 64}})
    with pytest.raises(CheckpointError, match="d_model"):
        run(other, resume=ckpt, console=False)
    # truncated safetensors
    st = os.path.join(ckpt, "model.safetensors")
    with open(st, "r+b") as f:
        f.truncate(os.path.getsize(st) // 2)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        run(cfg, resume=ckpt, console=False)
    # edited JSON in the earlier checkpoint
    prev = os.path.join(r.run_dir, "checkpoints", "step-00000001", "state.json")
    with open(prev) as f:
        text = f.read()
    with open(prev, "w") as f:
        f.write(text[: len(text) // 2])
    with pytest.raises(CheckpointError, match="state.json"):
        run(cfg, resume=os.path.dirname(prev), console=False)
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        run(cfg, resume=str(tmp_path / "nothing"), console=False)


def test_resume_logs_the_same_interval_means(data_root, tmp_path):
    """A checkpoint inside a log interval: the resumed run's logged mean covers the whole interval too."""
    import shutil
    over = dict(max_steps=8, ckpt_every=3, log_every=4, keep_last=5)
    a = run(tiny_config(data_root, str(tmp_path / "a"), **over), console=False)
    run_b = str(tmp_path / "b" / "run")
    shutil.copytree(a.run_dir, run_b)
    for name in ("step-00000006", "step-00000008"):  # as if killed after the step-3 checkpoint
        shutil.rmtree(os.path.join(run_b, "checkpoints", name))
    b = run(tiny_config(data_root, str(tmp_path / "b"), **over), resume=run_b, console=False)
    assert b.step == 8 and all(torch.equal(weights(a.checkpoint)[k], v) for k, v in weights(b.checkpoint).items())
    la = [(m["step"], m["train/loss"]) for m in metrics(a.run_dir) if "train/loss" in m]
    lb = [(m["step"], m["train/loss"]) for m in metrics(run_b) if "train/loss" in m]
    assert [s for s, _ in la] == [4, 8] and la == lb  # step 4 was the mean of step 4 alone


@pytest.mark.parametrize("edit, match", [
    (lambda s: s.pop("loop"), "'loop' is missing"),  # KeyError tracebacks before
    (lambda s: s.pop("data_state"), "'data_state' is missing"),
    (lambda s: s.update(data_state=3), "'data_state' is missing or malformed"),
    (lambda s: s.update(loop=[1]), "'loop' is missing or malformed"),  # TypeError
    (lambda s: s["loop"].update(step="x"), "'loop' .* does not hold the numbers of step 2"),
    (lambda s: s.update(tokens_per_step="x"), "'tokens_per_step' is missing or malformed"),
    (lambda s: s.update(init_from=5), "'init_from' is missing or malformed"),
    (lambda s: s.update(optimizer=None), "no optimizer state"),  # silently resumed with fresh AdamW moments
])
def test_resume_refuses_a_checkpoint_without_its_training_state(data_root, tmp_path, edit, match):
    cfg = tiny_config(data_root, str(tmp_path), max_steps=2)
    ckpt = run(cfg, console=False).checkpoint
    edit_state(ckpt, edit)
    with pytest.raises(CheckpointError, match="state.json: " + match):
        run(tiny_config(data_root, str(tmp_path), max_steps=3), resume=ckpt, console=False)


def test_grad_accumulation_equals_big_batch(data_root, tmp_path):
    big = run(tiny_config(data_root, str(tmp_path / "big"), micro_batch=8, max_steps=3, eval_every=0),
              console=False)
    acc = run(tiny_config(data_root, str(tmp_path / "acc"), micro_batch=2, tokens_per_step=8 * 32, max_steps=3,
                          eval_every=0), console=False)
    wa, wb = weights(big.checkpoint), weights(acc.checkpoint)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="tokens_per_step"):
        run(tiny_config(data_root, str(tmp_path / "bad"), micro_batch=3, tokens_per_step=100), console=False)


def _poison(monkeypatch, bad_steps):
    """Make the forward of the given (1-based) optimizer steps return NaN."""
    calls = {"n": 0}
    orig = GPT.forward

    def forward(self, idx, targets=None, **kw):
        out = orig(self, idx, targets, **kw)
        if targets is not None and self.training:
            calls["n"] += 1
            if calls["n"] in bad_steps:
                return out * float("nan")
        return out
    monkeypatch.setattr(GPT, "forward", forward)


def test_nan_step_skipped(data_root, tmp_path, monkeypatch):
    _poison(monkeypatch, {3})
    r = run(tiny_config(data_root, str(tmp_path), max_steps=6), console=False)
    assert r.step == 6 and r.skipped == 1
    skipped = [m for m in metrics(r.run_dir) if m.get("skipped")]
    assert [m["step"] for m in skipped] == [3]
    for t in weights(r.checkpoint).values():
        assert torch.isfinite(t).all()


def test_repeated_bad_steps_stop(data_root, tmp_path, monkeypatch):
    _poison(monkeypatch, set(range(2, 100)))
    with pytest.raises(RuntimeError, match="3 bad steps in a row"):
        run(tiny_config(data_root, str(tmp_path), max_steps=10, max_bad_steps=3), console=False)


def test_loss_spike_skipped(data_root, tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_mod, "SPIKE_WARMUP", 2)
    calls = {"n": 0}
    orig = GPT.forward

    def forward(self, idx, targets=None, **kw):
        out = orig(self, idx, targets, **kw)
        if targets is not None and self.training:
            calls["n"] += 1
            if calls["n"] == 4:
                return out * 10.0
        return out
    monkeypatch.setattr(GPT, "forward", forward)
    r = run(tiny_config(data_root, str(tmp_path), max_steps=6), console=False)
    assert r.skipped == 1
    assert [m["step"] for m in metrics(r.run_dir) if m.get("skipped")] == [4]


def test_mlm_run(tmp_path):
    root = str(tmp_path / "data")
    cfg = tiny_config(root, str(tmp_path), task="mlm", max_steps=30, eval_every=15, log_every=10,
                      optim={"lr": 1e-2, "warmup_steps": 3}, whole_word_mask=True)
    r = run(cfg, console=False)
    vals = [m for m in metrics(r.run_dir) if "val/loss" in m]
    assert len(vals) == 3 and vals[-1]["val/loss"] < vals[0]["val/loss"]
    assert 0.0 <= vals[-1]["val/accuracy"] <= 1.0
    assert load_checkpoint(r.checkpoint).meta["model_config"]["kind"] == "encoder"


def test_mlm_needs_mask_token(tmp_path):
    root = str(tmp_path / "data")
    make_shards(root, specials=["<|bos|>"])
    with pytest.raises(ValueError, match="<\\|mask\\|>"):
        run(tiny_config(root, str(tmp_path), task="mlm"), console=False)


def test_random_windows_and_max_time(data_root, tmp_path):
    cfg = tiny_config(data_root, str(tmp_path), max_steps=100000, max_time=1.0,
                      data={"sampling": "random"})
    r = run(cfg, console=False)
    assert r.stopped == "max_time" and 0 < r.step < 100000
    assert r.checkpoint.endswith(f"step-{r.step:08d}")


def test_val_documents_never_trained(data_root):
    from fastlm.train.data import PackedBatches, TokenDataset, holdout_split
    ds = TokenDataset(os.path.join(data_root, "tokens"))
    train, val = holdout_split(ds.n_docs, 0.1)
    assert set(train.tolist()).isdisjoint(val.tolist()) and len(train) + len(val) == ds.n_docs
    assert val.tolist() == list(range(9, ds.n_docs, 10))
    it = PackedBatches(ds, batch=4, seq_len=32, docs=train, return_doc_ids=True)
    seen = set()
    for _ in range(300):
        seen |= set((next(it)[2] % ds.n_docs).flatten().tolist())
    assert seen <= set(train.tolist()) and len(seen) > 5


def test_bf16_autocast_on_cpu(data_root, tmp_path):
    r = run(tiny_config(data_root, str(tmp_path), precision="bf16", max_steps=3), console=False)
    assert r.step == 3 and r.skipped == 0 and math.isfinite(r.val["loss"])


@pytest.mark.slow
def test_compile_matches_eager(data_root, tmp_path):
    eager = run(tiny_config(data_root, str(tmp_path / "e"), max_steps=3), console=False)
    comp = run(tiny_config(data_root, str(tmp_path / "c"), max_steps=3, compile=True), console=False)
    assert comp.val["loss"] == pytest.approx(eager.val["loss"], rel=1e-4)
