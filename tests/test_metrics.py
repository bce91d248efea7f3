"""Tests for fastlm.train.metrics: JSONL lines, resume truncation, console (plain and tqdm), TensorBoard
missing/present, loss plot (a real PNG; None with a note without matplotlib)."""
import builtins
import io
import json
import math
import os
import struct

import numpy as np
import pytest

from fastlm.train.metrics import MetricsLogger, plot_losses, read_metrics


class TTY(io.StringIO):
    def isatty(self):
        return True


def lines(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(x) for x in f]


def test_jsonl_lines_flushed_and_typed(tmp_path):
    torch = pytest.importorskip("torch")
    out = io.StringIO()
    log = MetricsLogger(str(tmp_path), total_steps=10, stream=out)
    log.log(1, **{"train/loss": torch.tensor(4.25), "lr": np.float32(0.5), "tokens": np.int64(512), "skipped": 0})
    rec = lines(tmp_path)  # readable before close: flushed per call
    assert rec[0]["step"] == 1 and rec[0]["train/loss"] == 4.25 and rec[0]["tokens"] == 512
    assert isinstance(rec[0]["time"], float)
    log.log(2, **{"train/loss": float("nan")})
    with pytest.raises(ValueError, match="numbers or strings"):
        log.log(3, bad=object())
    log.close()
    log.close()
    assert math.isnan(read_metrics(str(tmp_path / "metrics.jsonl"))[1]["train/loss"])


def test_plain_console_lines(tmp_path):
    out = io.StringIO()
    with MetricsLogger(str(tmp_path), total_steps=100, stream=out) as log:
        log.log(10, **{"train/loss": 3.21, "lr": 3e-3, "grad_norm": 0.5, "tokens_per_s": 12345.0, "mfu": 0.123,
                       "tokens": 40960, "skipped": 0})
        log.message("sample: hello")
        log.log(20, **{"val/loss": 3.0, "val/ppl": 20.09, "val/bpb": 1.5})
    text = out.getvalue().splitlines()
    assert text[0].startswith("step 10/100 | loss 3.2100 | lr 3.00e-03 | grad_norm 0.5000 | tok/s 12.3k | mfu 12.3% "
                              "| tokens 41.0k | eta ")
    assert "skipped" not in text[0]
    assert text[1] == "sample: hello"
    assert text[2].startswith("step 20/100 | val/loss 3.0000 | val/ppl 20.0900 | val/bpb 1.5000")


def test_default_streams_and_none_values(tmp_path, capsys):
    with MetricsLogger(str(tmp_path), total_steps=4) as log:  # stderr is not a terminal under pytest
        log.log(2, **{"train/loss": 2.5, "mfu": None})
        log.message("hello")
    out, err = capsys.readouterr()
    assert out.splitlines()[0].startswith("step 2/4 | loss 2.5000 | eta ") and "mfu" not in out
    assert out.splitlines()[1] == "hello" and err == ""
    assert lines(tmp_path)[0]["mfu"] is None


def test_console_off_and_tqdm_bar(tmp_path):
    out = io.StringIO()
    with MetricsLogger(str(tmp_path / "a"), total_steps=5, console=False, stream=out) as log:
        log.log(1, **{"train/loss": 1.0})
        log.message("x")
    assert out.getvalue() == ""
    tty = TTY()
    with MetricsLogger(str(tmp_path / "b"), total_steps=5, stream=tty) as log:
        log.log(2, **{"train/loss": 1.5, "lr": 1e-3, "tokens_per_s": 2000.0})
        log.log(5, **{"val/loss": 1.25})
        log.message("done")
    text = tty.getvalue()
    assert "loss=1.5000" in text and "tok/s=2.0k" in text and "5/5" in text
    assert "step 5/5 | val/loss 1.2500" in text and "done" in text


def test_resume_keeps_lines_up_to_start_step(tmp_path):
    with MetricsLogger(str(tmp_path), total_steps=10, console=False) as log:
        for step in range(1, 9):
            log.log(step, **{"train/loss": 10.0 - step})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 9, "train/lo')  # a line cut by SIGKILL
    with MetricsLogger(str(tmp_path), total_steps=10, console=False, start_step=5) as log:
        log.log(6, **{"train/loss": 0.5})
    assert [r["step"] for r in lines(tmp_path)] == [1, 2, 3, 4, 5, 6]
    assert lines(tmp_path)[-1]["train/loss"] == 0.5
    assert [n for n in os.listdir(tmp_path) if n != "metrics.jsonl"] == []  # no temp files left
    with MetricsLogger(str(tmp_path), total_steps=10, console=False) as log:  # a fresh run starts over
        log.log(1, **{"train/loss": 7.0})
    assert [r["step"] for r in lines(tmp_path)] == [1]


def test_tensorboard(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    import importlib.util
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(ValueError, match="pip install tensorboard"):
            MetricsLogger(str(tmp_path), total_steps=3, console=False, tensorboard=True)
        return
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    with MetricsLogger(str(tmp_path), total_steps=5, console=False, tensorboard=True) as log:
        for step in range(1, 6):
            log.log(step, **{"train/loss": float(step)})
    with MetricsLogger(str(tmp_path), total_steps=5, console=False, tensorboard=True, start_step=3) as log:
        log.log(4, **{"train/loss": 40.0})  # resumed at 3: the first run's steps 4, 5 are purged
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]


def _metrics(run_dir, n=60, val_every=20):
    with MetricsLogger(str(run_dir), total_steps=n, console=False) as log:
        for step in range(1, n + 1):
            log.log(step, **{"train/loss": 5.0 * math.exp(-step / 20) + 0.1 * math.sin(step), "lr": 1e-3})
            if step % val_every == 0:
                log.log(step, **{"val/loss": 5.0 * math.exp(-step / 20) + 0.2})
    return str(run_dir / "metrics.jsonl")


def test_plot_losses_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    png = str(tmp_path / "loss.png")
    assert plot_losses(_metrics(tmp_path), png) == png
    with open(png, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (800, 500)
    assert 10_000 < len(data) < 1_000_000
    assert sorted(os.listdir(tmp_path)) == ["loss.png", "metrics.jsonl"]  # written atomically, no temp left
    notes = []
    empty = tmp_path / "empty"
    with MetricsLogger(str(empty), total_steps=1, console=False) as log:
        log.log(1, lr=1.0)
    assert plot_losses(str(empty / "metrics.jsonl"), str(empty / "loss.png"), note=notes.append) is None
    assert "no train/loss" in notes[0] and not (empty / "loss.png").exists()


def test_plot_losses_without_matplotlib(tmp_path, monkeypatch, capsys):
    metrics = _metrics(tmp_path, n=5, val_every=5)
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert plot_losses(metrics, str(tmp_path / "loss.png")) is None
    assert "matplotlib is not installed (pip install 'fastlm[plot]')" in capsys.readouterr().err
    assert not (tmp_path / "loss.png").exists()
