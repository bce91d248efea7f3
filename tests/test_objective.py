"""The objective-driven loop: the loss/unit contract, accumulation, dispatch, init_from resolution."""

import json
import os
import sys

import pytest
import torch

from fastlm.posttrain import objective as O
from fastlm.train.trainer import run

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_fixtures import tiny_config  # noqa: E402

torch.set_num_threads(1)

# micro-batches of a 1-parameter regression with varying unit counts: (x, y) lists
MICRO = [([1.0, 2.0, 3.0], [1.0, 1.0, 1.0]), ([0.5], [2.0]), ([4.0, -1.0], [0.0, 3.0]), ([2.0], [2.0])]


class ToyObjective(O.Objective):
    """Loss sum (w x - y)^2 over units; a unit is 'accurate' when |w x - y| < 1."""

    def __init__(self, cfg, info, *, run_dir, log=print):
        torch.manual_seed(0)
        self.model = torch.nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            self.model.weight.fill_(0.5)
        self.model_config = {"kind": "toy"}
        self.tokenizer, self.tokenizer_path, self.seq_len = None, None, 1
        self.i, self.info = 0, info
        self.summary = {"data/toy": 1.0}

    def next_micro(self, n_global):
        x, y = MICRO[self.i % len(MICRO)]
        self.i += 1
        return torch.tensor(x)[:, None], torch.tensor(y)[:, None]

    def state_dict(self):
        return {"i": self.i}

    def load_state_dict(self, state):
        self.i = state["i"]

    def loss(self, model, batch, *, kernels):
        x, y = batch
        err = model(x) - y
        return (err ** 2).sum(), float(x.shape[0]), {"train/accuracy": float((err.abs() < 1).sum())}

    def evaluate(self, model):
        return {"val/w": float(model.weight.detach())}

    def tokens(self, batch):
        return int(batch[0].shape[0])


def test_loop_divides_sums_by_the_global_unit_count(tmp_path, monkeypatch):
    monkeypatch.setitem(O.OBJECTIVES, "dpo", f"{__name__}:ToyObjective")
    cfg = tiny_config(str(tmp_path), str(tmp_path / "runs"), task="dpo", max_steps=1, micro_batch=1,
                      tokens_per_step=2, data={"seq_len": 1}, log_every=1,
                      optim={"grad_clip": 0.0, "warmup_steps": 0, "lr": 0.1, "weight_decay": 0.0,
                             "schedule": "constant"})
    r = run(cfg, console=False)
    lines = [json.loads(x) for x in open(os.path.join(r.run_dir, "metrics.jsonl"))]
    assert lines[0]["data/toy"] == 1.0
    step = next(m for m in lines if "train/loss" in m)
    x = torch.tensor([1.0, 2.0, 3.0, 0.5])  # the two micro-steps: 4 units
    y = torch.tensor([1.0, 1.0, 1.0, 2.0])
    err = 0.5 * x - y
    assert step["train/loss"] == pytest.approx(float((err ** 2).mean()))
    assert step["train/accuracy"] == pytest.approx(float((err.abs() < 1).float().mean()))
    assert step["grad_norm"] == pytest.approx(abs(float((2 * err * x).mean())), rel=1e-5)  # d mean / dw
    assert step["tokens"] == 4
    assert r.val == {"w": pytest.approx(0.5 - 0.1 * (1 if float((2 * err * x).mean()) > 0 else -1), abs=1e-4)}


def test_sft_accumulation_equals_one_big_batch(tmp_path):
    """Padded SFT: 2 micro-steps of 2 rows = 1 micro-step of 4 rows (different padded lengths, unit counts)."""
    from fastlm.train.checkpoint import load_checkpoint
    from fastlm.tokenizer import DEFAULT_SPECIALS, Tokenizer
    specials = {s: 256 + i for i, s in enumerate(DEFAULT_SPECIALS)}
    tok = Tokenizer([bytes([b]) for b in range(256)], special_tokens=specials)
    tok.save(str(tmp_path / "tok.fastlm"))
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}" * (1 + i % 4), "completion": "a" * (1 + i % 5)}) + "\n"
                            for i in range(40)))
    out = []
    for mb, tps in ((4, 0), (2, 4 * 32)):
        cfg = tiny_config(str(tmp_path), str(tmp_path / f"r{mb}"), task="sft", max_steps=2, micro_batch=mb,
                          tokens_per_step=tps, data={"tokenizer": str(tmp_path / "tok.fastlm"), "seq_len": 32},
                          post={"init_from": "none", "data": [str(data)], "packing": False})
        out.append(load_checkpoint(run(cfg, console=False).checkpoint, optimizer=False).model_state)
    for k in out[0]:
        torch.testing.assert_close(out[0][k], out[1][k], atol=2e-6, rtol=1e-5)


def test_dispatch(monkeypatch):
    from fastlm.train.config import TrainConfig
    from fastlm.train.distributed import DistInfo
    with pytest.raises(ValueError, match="ppo/grpo/rloo run in fastlm.posttrain.rl"):
        O.make_objective(TrainConfig(task="ppo"), DistInfo(rank=0, world_size=1, local_rank=0,
                                                           device=torch.device("cpu"), distributed=False),
                         run_dir="x")
    calls = []
    import types
    fake = types.ModuleType("fastlm.posttrain.rl")
    fake.run_rl = lambda cfg, *, resume=None, console=True: calls.append((cfg.task, resume, console)) or "done"
    monkeypatch.setitem(sys.modules, "fastlm.posttrain.rl", fake)
    assert run(TrainConfig(task="grpo"), resume="r", console=False) == "done"
    assert calls == [("grpo", "r", False)]


def test_to_device_keeps_structure():
    b = {"a": torch.zeros(2), "b": (torch.ones(1), 3), "c": "s"}
    out = O.to_device(b, torch.device("cpu"))
    assert out["c"] == "s" and isinstance(out["b"], tuple) and out["b"][1] == 3


def test_resolve_init_paths(tmp_path):
    from fastlm.train.checkpoint import CheckpointError
    cfg = tiny_config(str(tmp_path), str(tmp_path), task="sft")
    for bad, err in ((str(tmp_path / "missing"), "does not exist"), (str(tmp_path), "no complete fastlm checkpoint")):
        cfg.post.init_from = bad
        with pytest.raises((ValueError, CheckpointError), match=err):
            O.resolve_init(cfg)
    cfg.post.init_from = "none"
    assert O.resolve_init(cfg) is None
    cfg.task, cfg.post.init_from = "clm", "auto"
    with pytest.raises(ValueError, match="no stage before"):
        O.resolve_init(cfg)
