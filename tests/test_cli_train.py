"""fastlm-train / fastlm train: help, config errors, precedence of config < --set < flags, summary, ranks."""

import os
import subprocess
import sys
import types

import pytest
import yaml

import fastlm.train
from fastlm.cli import main as fastlm_main
from fastlm.cli import train as cli
from fastlm.train.config import load_train_config
from train_fixtures import torchrun


@pytest.fixture()
def fake_run(monkeypatch):
    """Replace fastlm.train.trainer with a recorder (the CLI is tested without training)."""
    calls = []

    def run(cfg, *, resume=None, console=True):
        calls.append({"cfg": cfg, "resume": resume, "console": console})
        if getattr(run, "error", None):
            raise run.error
        return types.SimpleNamespace(run_dir=os.path.join(cfg.out, cfg.run_name or "r"), step=cfg.max_steps,
                                     checkpoint=os.path.join(cfg.out, "ckpt"), sample="The end.",
                                     val={"loss": 2.5, "ppl": 12.18, "bpb": 1.1})

    fake = types.ModuleType("fastlm.train.trainer")
    fake.run = run
    monkeypatch.setitem(sys.modules, "fastlm.train.trainer", fake)
    monkeypatch.setattr(fastlm.train, "trainer", fake, raising=False)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    run.calls = calls
    return run


@pytest.mark.parametrize("argv", [["--help"], ["-h"]])
def test_help_lists_every_option_and_config_key(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--task", "--config", "--set", "--resume", "--out", "--run-name", "--device", "--quiet"):
        assert opt in out
    from fastlm.train.config import TrainConfig
    for key in ("max_steps = 300", "optim.lr = 0.003", "data.vocab_size = 4096", "model.size = tiny",
                "data.text = [builtin:pydoc, builtin:shakespeare]"):
        assert key in out
    assert "optimizer steps" in out and "auto|fp32|bf16" in out  # comments and choices
    # a comment continued on the next source line is shown whole (the auto rule was cut off)
    assert "auto: newest reward run in <out>, else \"task\"" in " ".join(out.split())
    for f in TrainConfig.__dataclass_fields__:
        assert f"  {f} = " in out or f"[{f}]" in out


def test_fastlm_train_alias_has_the_same_help(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    direct = capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        fastlm_main.main(["train", "--help"])
    assert e.value.code == 0
    alias = capsys.readouterr().out
    assert alias.replace("fastlm train", "fastlm-train").split("options:")[1] == direct.split("options:")[1]


@pytest.mark.parametrize("argv, message", [
    (["--set", "no_such_key=1"], "unknown key(s) ['no_such_key']"),
    (["--set", "optim.lr=fast"], "optim.lr: expected a number"),
    (["--set", "max_steps=0"], "max_steps must be > 0"),
    (["--set", "data.sampling=sideways"], "must be one of ['packed', 'random']"),
    (["--set", "max_steps"], "expected key=value"),
    (["--config", "/no/such/file.yaml"], "/no/such/file.yaml"),
    (["--run-name", "a/b"], "must be a plain name"),
    (["--set", "optim.lr=nan"], "optim.lr=nan: must be a finite number"),  # NaN passed every range check
    (["--set", "optim.lr=.inf"], "optim.lr=inf: must be a finite number"),  # trained on to NaN weights
    (["--set", "post.beta=.nan"], "post.beta=nan: must be a finite number"),
])
def test_config_errors_exit_2_with_one_line(fake_run, capsys, argv, message):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastlm-train: error: ") and message in err and "Traceback" not in err
    assert fake_run.calls == []


def test_config_file_errors_name_the_file(fake_run, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  lr: 1e-3\n  betas: [0.9, 0.99]\n")
    assert cli.main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "betas" in err


@pytest.mark.parametrize("text, message", [
    ("a: [1,\n", "bad.yaml:2:1: invalid YAML: "),
    ("optim:\n  lr: 1e-3\n  lr: 2e-3\n", "bad.yaml:3:3: invalid YAML: duplicate key 'lr'"),
])
def test_bad_yaml_is_one_line_naming_file_and_line(fake_run, tmp_path, capsys, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert cli.main(["--config", str(path), "--print-config"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("fastlm-train: error: ") and message in captured.err
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert "lr" not in captured.out and fake_run.calls == []


def test_defaults_config_set_and_flags_in_that_order(fake_run, tmp_path, capsys):
    path = tmp_path / "cfg.yaml"
    path.write_text("task: clm\nmax_steps: 10\nout: from-file\noptim:\n  lr: 3e-4\nmodel:\n  size: small\n")
    code = cli.main(["--config", str(path), "--set", "max_steps=20", "out=from-set", "data.seq_len=32",
                     "--task", "mlm", "--out", str(tmp_path / "runs"), "--device", "cpu", "--quiet"])
    assert code == 0
    (call,) = fake_run.calls
    cfg = call["cfg"]
    assert (cfg.max_steps, cfg.optim.lr, cfg.data.seq_len, cfg.model.size) == (20, 3e-4, 32, "small")
    assert (cfg.task, cfg.out, cfg.device) == ("mlm", str(tmp_path / "runs"), "cpu")
    assert call["resume"] is None and call["console"] is False and cfg.run_name == ""  # the trainer names runs


def test_end_lines_say_where_the_outputs_are(fake_run, tmp_path, capsys):
    assert cli.main(["--out", str(tmp_path), "--run-name", "demo", "--set", "max_steps=3"]) == 0
    out = capsys.readouterr().out
    run_dir = os.path.join(str(tmp_path), "demo")
    rest = out.splitlines()
    assert "The end." in out and "loss 2.5" in out and "ppl 12.18" in out
    assert f"checkpoint: {os.path.join(str(tmp_path), 'ckpt')}" in out and rest[-1] == f"outputs in {run_dir}"


def test_alias_runs_the_same_command(fake_run, capsys):
    assert fastlm_main.main(["train", "--set", "max_steps=3", "--run-name", "x"]) == 0
    assert fake_run.calls[0]["cfg"].max_steps == 3 and fake_run.calls[0]["cfg"].run_name == "x"
    fake_run.error = ValueError("checkpoint runs/x: state.json is not JSON")
    assert fastlm_main.main(["train", "--run-name", "x"]) == 2
    assert "fastlm train: error: checkpoint runs/x: state.json is not JSON" in capsys.readouterr().err


def test_run_errors_are_one_line(fake_run, capsys, monkeypatch):
    fake_run.error = FileNotFoundError("data.text: input 'x.txt' matches no file or directory")
    assert cli.main([]) == 2
    assert capsys.readouterr().err == "fastlm-train: error: data.text: input 'x.txt' matches no file or directory\n"
    fake_run.error = RuntimeError("stopping: 20 bad steps in a row")
    assert cli.main([]) == 1
    assert capsys.readouterr().err == "fastlm-train: error: stopping: 20 bad steps in a row\n"
    monkeypatch.setenv("FASTLM_TRACEBACK", "1")
    with pytest.raises(RuntimeError):
        cli.main([])


def test_infinite_max_time_and_spike_factor_mean_off(fake_run, capsys):
    assert cli.main(["--set", "max_time=.inf", "spike_factor=.inf"]) == 0
    assert fake_run.calls[0]["cfg"].max_time == float("inf")


def test_resume_names_a_fault_of_the_checkpoints_own_config(fake_run, tmp_path, capsys):
    import json
    ckpt = tmp_path / "run" / "checkpoints" / "step-00000002"
    ckpt.mkdir(parents=True)
    config = load_train_config(None, ["max_steps=2"]).to_dict()
    (ckpt / "state.json").write_text(json.dumps({"train_config": {**config, "max_stepz": 3}}))
    assert cli.main(["--resume", str(ckpt), "--set", "max_steps=4"]) == 2
    err = capsys.readouterr().err  # was blamed on --set
    assert f"--resume {ckpt}: the checkpoint's train_config: unknown key(s) ['max_stepz']" in err
    config["optim"]["lr"] = -1.0  # a stored value that --set repairs is no fault
    (ckpt / "state.json").write_text(json.dumps({"train_config": config}))
    assert cli.main(["--resume", str(ckpt), "--set", "optim.lr=1e-3"]) == 0
    assert fake_run.calls[-1]["cfg"].optim.lr == 1e-3


def test_resume_without_a_checkpoint_is_refused(fake_run, tmp_path, capsys):
    assert cli.main(["--resume", str(tmp_path)]) == 2
    assert f"--resume {tmp_path}: no complete checkpoint there" in capsys.readouterr().err
    assert fake_run.calls == []


def test_only_rank_0_prints(fake_run, monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli.main(["--set", "max_steps=3"]) == 0
    assert capsys.readouterr().out == ""
    assert fake_run.calls[0]["cfg"].run_name == ""


def test_print_config_round_trips(fake_run, tmp_path, capsys):
    assert cli.main(["--task", "mlm", "--set", "optim.lr=1e-4", "model.overrides={n_layer: 2}", "--print-config"]) == 0
    assert fake_run.calls == []
    path = tmp_path / "printed.yaml"
    path.write_text(capsys.readouterr().out)
    cfg = load_train_config(str(path))
    assert cfg.task == "mlm" and cfg.optim.lr == 1e-4 and cfg.model.overrides == {"n_layer": 2}
    assert yaml.safe_load(path.read_text())["data"]["vocab_size"] == 4096


def test_fastlm_parser_does_not_import_torch():
    code = "import sys, fastlm.cli.main as m; m.build_parser(); print('torch' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("argv", [["--help"], ["--set", "optim.lr=-1"], ["--set", "optim.lrr=1"]])
def test_fastlm_train_settings_do_not_import_torch(argv):
    # fastlm.train's package __init__ imported its torch modules, so every config error and --help
    # loaded torch first (~2 s of a 2.4 s config error)
    code = (f"import sys; from fastlm.cli.train import main\ntry: main({argv!r})\nexcept SystemExit: pass\n"
            "print('torch' in sys.modules, file=sys.stderr)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env).stderr
    assert err.strip().splitlines()[-1] == "False", err


CONFIGS = os.path.join(os.path.dirname(__file__), os.pardir, "configs")


@pytest.mark.parametrize("name", ["clm-tiny", "clm-small", "mlm-tiny", "gpt2-124m"])
def test_example_configs_load(name):
    from fastlm.models import model_config_for

    cfg = load_train_config(os.path.join(CONFIGS, f"{name}.yaml"))
    model = model_config_for(cfg.task, cfg.model.size, cfg.model.overrides, vocab_size=cfg.data.vocab_size)
    assert cfg.data.seq_len <= model.max_seq_len


def test_clm_tiny_config_is_the_main_job():
    from fastlm.train.config import TrainConfig

    assert load_train_config(os.path.join(CONFIGS, "clm-tiny.yaml")) == TrainConfig()


# ---- end to end: the real trainer on a small text file ------------------------------------------------

TINY = ["data.vocab_size=320", "data.seq_len=32", "micro_batch=4", "max_steps=6", "eval_every=3", "ckpt_every=3",
        "log_every=2", "eval_tokens=512", "sample_tokens=8", "optim.warmup_steps=2",
        "model.overrides={n_layer: 1, d_model: 32, n_head: 2}"]


@pytest.fixture()
def small_text(tmp_path, monkeypatch):
    import json

    import torch
    from fastlm.data.readers import read_records

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    docs = [r.data["text"] for r in read_records("builtin:pydoc") if len(r.data["text"].split()) >= 80][:40]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    yield "docs.jsonl"
    torch.set_num_threads(threads)


def test_end_to_end_run_resume_and_cache(small_text, tmp_path, capsys):
    from fastlm.train.checkpoint import latest_checkpoint

    assert cli.main(["--run-name", "e2e", "--set", f"data.text=[{small_text}]", *TINY]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "runs" / "e2e"  # ./runs by default
    assert sorted(os.listdir(run / "checkpoints")) == ["step-00000003", "step-00000006"]
    assert {"model.safetensors", "optimizer.safetensors", "state.json", "tokenizer.fastlm"} <= set(
        os.listdir(run / "checkpoints" / "step-00000006"))
    cfg = load_train_config(str(run / "config.yaml"))
    assert cfg.max_steps == 6 and cfg.model.overrides == {"n_layer": 1, "d_model": 32, "n_head": 2}
    rows = [__import__("json").loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("train/loss" in r for r in rows) and rows[-1]["step"] == 6 and "val/loss" in rows[-1]
    assert os.path.isdir(tmp_path / "runs" / "cache")
    assert f"outputs in {run}" in out and str(run) in out.splitlines()[0]
    assert "sample:" in out and "val (step 6): loss" in out and f"checkpoint: {run / 'checkpoints' / 'step-00000006'}" in out

    # resume: the checkpoint's own config (1 layer, 320 ids), two more steps
    assert cli.main(["--resume", str(run), "--set", "max_steps=8", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert latest_checkpoint(str(run)).endswith("step-00000008") and "val (step 8)" in out
    assert out.splitlines()[-1] == f"outputs in {run}"  # --quiet: only the summary

    # a second run on the same text reuses the prepared data
    assert fastlm_main.main(["train", "--run-name", "again", "--set", f"data.text=[{small_text}]", *TINY,
                             "max_steps=2"]) == 0
    out = capsys.readouterr().out
    assert out.count("data: reusing") == 3 and "val (step 2): loss" in out


def test_end_to_end_mlm(small_text, tmp_path, capsys):
    from fastlm.models import Encoder

    if not hasattr(Encoder, "flops_per_token"):  # lands with the trainer's MLM support
        pytest.skip("Encoder.flops_per_token is not there yet")
    assert cli.main(["--task", "mlm", "--run-name", "mlm", "--set", f"data.text=[{small_text}]", *TINY]) == 0
    out = capsys.readouterr().out
    assert "val (step 6): loss" in out and "accuracy" in out
    assert os.path.isdir(tmp_path / "runs" / "mlm" / "checkpoints" / "step-00000006")


@pytest.mark.slow
def test_under_torchrun_only_rank_0_prints(small_text, tmp_path):
    proc = torchrun(["-m", "fastlm.cli.train", "--set", f"data.text=[{small_text}]", *TINY, "max_steps=2"])
    lines = proc.stdout.splitlines()
    assert sum(line.startswith("outputs in ") for line in lines) == 1 and "world 2" in proc.stdout
    (run,) = [d for d in os.listdir(tmp_path / "runs") if d != "cache"]  # one run name for both ranks
    assert sorted(os.listdir(tmp_path / "runs" / run / "checkpoints")) == ["step-00000002"]
