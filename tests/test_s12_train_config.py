"""fastlm-train option edges: values no run can use are refused at once (exit 2, one line naming the key and the
allowed range) instead of hanging, failing after the data is prepared, or training with them."""

import os
import re
import sys
import types

import pytest

import fastlm.train
from fastlm.cli import train as cli
from fastlm.config import ConfigError
from fastlm.train.config import TrainConfig, config_notes, load_train_config

BIG = "1000000000000000000000000000000"  # 10**30


@pytest.fixture()
def fake_run(monkeypatch):
    """fastlm.train.trainer replaced by a recorder: the CLI is tested without training."""
    calls = []

    def run(cfg, *, resume=None, console=True):
        calls.append(cfg)
        return types.SimpleNamespace(run_dir=os.path.join(cfg.out, "r"), step=cfg.max_steps, checkpoint=None,
                                     sample="", val={})

    fake = types.ModuleType("fastlm.train.trainer")
    fake.run = run
    monkeypatch.setitem(sys.modules, "fastlm.train.trainer", fake)
    monkeypatch.setattr(fastlm.train, "trainer", fake, raising=False)
    monkeypatch.delenv("RANK", raising=False)
    run.calls = calls
    return run


@pytest.mark.parametrize("argv, message", [
    # old: accepted; 10**30 rows per micro-batch hung the run (packing rows forever), a huge seed failed after
    # setup with "Overflow when unpacking long long"
    (["--set", f"micro_batch={BIG}"], f"micro_batch must be at most 2147483647, got {BIG}"),
    (["--set", f"max_steps={BIG}"], "max_steps must be at most 2147483647"),
    (["--set", f"seed={BIG}"], "seed must be at most 2147483647"),
    (["--set", f"post.prompts_per_step={BIG}"], "post.prompts_per_step must be at most 2147483647"),
    (["--set", "data.vocab_size=100000000000"], "data.vocab_size must be at most 2147483647"),
    # old: numpy's "expected non-negative integer" after the first evaluation, run directory left behind
    (["--set", "seed=-1"], "seed must be >= 0, got -1"),
    # old: torch's AdamW refused them only once the data was prepared, naming no key
    (["--set", "optim.beta1=1.5"], "optim.beta1 must be in [0, 1), got 1.5"),
    (["--set", "optim.beta2=1"], "optim.beta2 must be in [0, 1), got 1.0"),
    (["--set", "optim.eps=-1e-8"], "optim.eps must be >= 0"),
    # old: torch's device-string error after setup, exit 1
    (["--set", "device=gpu"], "device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
    (["--device", ""], "device must be auto, cpu, cuda or cuda:N, got ''"),
    # old: runs and the data cache went into the current directory
    (["--out", ""], "out must name a directory"),
    (["--set", "out="], "out must name a directory"),
    # old: the run started and failed at its first evaluation (no labelled position), its directory left behind
    (["--task", "mlm", "--set", "mlm_probability=0"], "mlm_probability must be in (0, 1], got 0.0"),
    # old: refused after the data was prepared (tokenizer trained, corpus encoded)
    (["--set", "tokens_per_step=100"], "tokens_per_step 100 is not a multiple of micro_batch x data.seq_len = 2048"),
    (["--set", "data.vocab_size=1"], "data.vocab_size must be >= 265 (256 bytes + 9 special tokens), got 1"),
    # old: refused by the sampler or the task table only after the model was loaded
    (["--task", "grpo", "--set", "post.top_p=0"], "post.top_p must be in (0, 1], got 0.0"),
    (["--task", "sft", "--set", "post.tasks=[copy, nope]"], "post.tasks: unknown task(s) ['nope']; built-in tasks:"),
    # old: silently no KL penalty (the adaptive coefficient is multiplied, so it stays 0)
    (["--task", "ppo", "--set", "post.kl_target=1", "post.kl_coef=0"], "post.kl_target=1.0 adapts post.kl_coef"),
    # old: silently 256 updates of one rollout instead of 1000
    (["--task", "grpo", "--set", "post.minibatches=1000"], "post.minibatches 1000 > the 256 rollouts of a step"),
    # old: an empty path (an unset shell variable) meant no config file / a fresh run
    (["--config", ""], "config file path is empty"),
    (["--resume", ""], "--resume: the run or checkpoint path is empty"),
])
def test_unusable_values_are_refused_before_the_run(fake_run, capsys, tmp_path, argv, message):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastlm-train: error: ") and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert fake_run.calls == []


def test_range_errors_name_the_config_file(fake_run, capsys, tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("optim:\n  beta1: 1.5\n")
    assert cli.main(["--config", str(path)]) == 2
    assert f"fastlm-train: error: {path}: optim.beta1 must be in [0, 1)" in capsys.readouterr().err
    path.write_text("max_steps: 0\n")  # was "max_steps must be > 0, got 0": which file?
    with pytest.raises(ConfigError, match="^" + re.escape(f"{path}: max_steps must be > 0")):
        load_train_config(str(path))
    with pytest.raises(ConfigError, match=r"^--set: seed must be >= 0"):
        load_train_config(None, ["seed=-1"])


@pytest.mark.parametrize("argv", [
    ["--set", "seed=0", "optim.eps=0", "optim.beta2=0.999", "mlm_probability=1"],
    ["--set", "seed=2147483647", "max_steps=2147483647", "max_time=60"],
    ["--device", "cuda:1", "--set", "tokens_per_step=4096"],  # 2 micro-steps of 16 x 128
    ["--set", "data.tokens=[shards]", "data.tokenizer=tok", "data.vocab_size=1"],  # vocab_size unused
    ["--task", "ppo", "--set", "post.minibatches=256", "post.top_p=1", "post.kl_target=0.1"],
    ["--set", "out=.", "post.tasks=[]"],
])
def test_edges_of_the_ranges_are_accepted(fake_run, capsys, argv):
    assert cli.main(argv) == 0, capsys.readouterr().err
    assert len(fake_run.calls) == 1


def test_warmup_as_long_as_the_run_is_a_note(fake_run, capsys):
    # old: silently trained 10 steps at a tenth of the peak lr at most; refusing it would refuse every short run
    assert cli.main(["--set", "max_steps=10", "optim.warmup_steps=100"]) == 0
    err = capsys.readouterr().err
    assert err == ("fastlm-train: note: optim.warmup_steps 100 >= max_steps 10: the whole run is lr warmup (the lr "
                   "only rises, to 0.0003 at the last step (optim.lr=0.003), and never decays)\n")
    assert len(fake_run.calls) == 1
    assert cli.main(["--quiet", "--set", "max_steps=10", "optim.warmup_steps=100"]) == 0
    assert capsys.readouterr().err == ""  # --quiet: only the summary (and errors, one line)
    assert cli.main([]) == 0 and capsys.readouterr().err == ""  # 30 of 300 steps
    assert config_notes(load_train_config(None, ["task=grpo", "max_steps=5"])) == []  # RL: no warmup
    assert len(config_notes(TrainConfig(max_steps=30))) == 1  # all warmup, no decay


def test_the_last_of_a_key_given_twice_wins(fake_run, capsys):
    # a base list of --set values with one changed after it is a common script idiom (tests do it too)
    assert cli.main(["--set", "max_steps=6", "max_steps=2", "--set", "optim.lr=1e-3"]) == 0
    assert fake_run.calls[0].max_steps == 2 and fake_run.calls[0].optim.lr == 1e-3


@pytest.mark.parametrize("setting, message", [
    ("model.size=huge", "model.size='huge', model.overrides={}: unknown size 'huge'; known:"),
    ("model.overrides.n_layr=2", "model.overrides: unknown key(s) ['n_layr']"),
    ("model.overrides.n_head=3", "model.overrides={'n_head': 3}: d_model 128 is not a multiple of n_head 3"),
    ("data.seq_len=512", "data.seq_len 512 > the model's max_seq_len 256"),
    # old: building the model looped for ever
    ("model.overrides.n_layer=1000000000000000000000000000000", "n_layer must be at most 2147483647"),
    ("model.overrides.n_layer=1000000000", "parameters, more than the 1e+13 any one machine could hold"),
])
def test_model_settings_are_checked_before_the_data(tmp_path, capsys, monkeypatch, setting, message):
    # old: the data was prepared first (a missing input here; minutes of cleaning and tokenizer training
    # on a real corpus) and only then the model settings refused
    monkeypatch.delenv("RANK", raising=False)
    out = tmp_path / "runs"
    argv = ["--out", str(out), "--device", "cpu", "--quiet", "--set", "data.text=[no-such-file.txt]", setting]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "no-such-file" not in err and "Traceback" not in err, err
    assert not out.exists() or os.listdir(out) == []  # no run directory, no data cache left behind


def test_a_cuda_device_past_the_machines_is_refused_naming_them(monkeypatch):
    # old: torch's "invalid device ordinal" from set_device, exit 1, naming no setting
    import torch

    from fastlm.train.distributed import pick_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match=r"device='cuda:3': this machine has 2 CUDA device\(s\) \(cuda:0 to cuda:1\)"):
        pick_device("cuda:3")
    with pytest.raises(ValueError, match="has 2 CUDA device"):
        pick_device("cuda", local_rank=5)  # torchrun with more ranks than GPUs


def test_tensorboard_without_its_package_is_refused_with_the_settings(monkeypatch):
    # old: refused only when the logger opened, after the data was prepared and the model built
    import importlib.util

    from fastlm.train.config import ConfigError, load_train_config
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ConfigError, match="tensorboard=true needs the tensorboard package"):
        load_train_config(None, ["tensorboard=true"])
    assert load_train_config(None, ["tensorboard=false"]).tensorboard is False
