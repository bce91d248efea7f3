"""A damaged newest checkpoint (truncated, replaced, half deleted after it was written; saves are atomic)
is named, with why, wherever a user names the run: resume, load, generate. It used to be passed over in
silence for an older one, which a resume then wrote over."""
import os

import pytest

torch = pytest.importorskip("torch")

from fastlm.cli.main import main  # noqa: E402
from fastlm.models import GPT, GPTConfig, config_to_dict  # noqa: E402
from fastlm.train.checkpoint import (CheckpointError, damaged_checkpoints, latest_checkpoint,  # noqa: E402
                                     load_checkpoint, save_checkpoint)


def _run(tmp_path, steps=(10, 20)):
    torch.manual_seed(0)
    m = GPT(GPTConfig.named("tiny", vocab_size=64))
    root = tmp_path / "run" / "checkpoints"
    paths = [save_checkpoint(str(root), s, model_state=m.state_dict(), optimizer_state=None,
                             meta={"model_config": config_to_dict(m.config)}, tokenizer_path=None)
             for s in steps]
    return str(tmp_path / "run"), paths


def _truncate(ckpt):
    p = os.path.join(ckpt, "model.safetensors")
    with open(p, "r+b") as f:
        f.truncate(1000)


def test_damaged_newest_is_named_where_the_user_names_the_run(tmp_path):
    run, (older, newest) = _run(tmp_path)
    assert latest_checkpoint(run, strict=True) == newest and damaged_checkpoints(run) == []
    _truncate(newest)
    assert latest_checkpoint(run) == older  # discovery (e.g. post.init_from=auto) still skips it
    assert [d for d, _ in damaged_checkpoints(run)] == [newest]
    with pytest.raises(CheckpointError, match=r"the newest checkpoint step-00000020 is damaged \(.*model\.safetensors: "
                                              r"1000 bytes.*\(truncated or replaced\)\); name an older checkpoint.*"
                                              r"step-00000010"):
        latest_checkpoint(run, strict=True)
    with pytest.raises(CheckpointError, match="step-00000020 is damaged"):
        load_checkpoint(run)
    assert load_checkpoint(older).step == 10  # naming the older one still works


def test_only_a_damaged_checkpoint_says_why(tmp_path):
    run, (only,) = _run(tmp_path, steps=(10,))
    os.remove(os.path.join(only, "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"step-00000010 is damaged \(.*missing.*\); it holds no complete"):
        latest_checkpoint(run, strict=True)


def test_saves_in_progress_and_crash_leftovers_are_not_damage(tmp_path):
    run, (older, newest) = _run(tmp_path)
    os.makedirs(os.path.join(run, "checkpoints", ".tmp-step-00000030-123"))  # a save in progress
    os.rename(newest, newest + ".old-123")  # a crash between a save's two renames
    assert damaged_checkpoints(run) == []
    assert latest_checkpoint(run, strict=True) == newest + ".old-123"


def test_cli_resume_and_generate_refuse_a_damaged_newest(tmp_path, capsys):
    run, (_, newest) = _run(tmp_path)
    _truncate(newest)
    assert main(["generate", "--ckpt", run, "--prompt", "hi", "--max-tokens", "2"]) == 2
    assert "step-00000020 is damaged" in capsys.readouterr().err
    from fastlm.cli.train import main as train_main
    assert train_main(["--resume", run, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "step-00000020 is damaged" in err and "Traceback" not in err, err
