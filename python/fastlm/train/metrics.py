"""Training logs: `MetricsLogger` (metrics.jsonl, console progress, optional TensorBoard) and `plot_losses`.

``metrics.jsonl`` holds one JSON object per `MetricsLogger.log` call, ``{"step", "time", **values}``, flushed
at once (a SIGKILL loses at most the line being written; non-finite floats are written as ``NaN`` /
``Infinity``, which Python's json reads back). Keys the trainer logs: ``train/loss``, ``lr``, ``grad_norm``,
``tokens_per_s``, ``mfu`` (a fraction: 0.35 is shown as 35%), ``tokens``, ``val/loss``, ``val/ppl``,
``val/bpb``, ``val/accuracy``, ``skipped`` (None values are written as null and not shown). When stderr is
a terminal the console shows a tqdm bar there (loss, lr, tok/s, ETA; val lines and messages above it);
anywhere else (CI, a log file) every call prints one plain line to stdout, so logs stay readable. No torch
import unless TensorBoard is asked for; matplotlib is imported only by `plot_losses`.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import IO, Any, Callable, Optional

from fastlm.data.io import atomic_write

METRICS_FILE = "metrics.jsonl"
SHOWN = ("train/loss", "val/loss", "val/ppl", "val/bpb", "val/accuracy", "lr", "grad_norm", "tokens_per_s",
         "mfu", "tokens", "skipped")  # console order; other keys follow as key=value


class MetricsLogger:
    """Log training metrics to ``<run_dir>/metrics.jsonl``, the console and (optionally) TensorBoard.

    ``start_step > 0`` (a resumed run) keeps only the earlier lines with ``step <= start_step`` and
    appends after them; ``start_step == 0`` starts a fresh file.

    >>> import tempfile, io
    >>> out = io.StringIO()
    >>> with MetricsLogger(tempfile.mkdtemp(), total_steps=10, stream=out) as log:
    ...     log.log(1, **{"train/loss": 4.5, "lr": 1e-3})
    >>> out.getvalue().startswith("step 1/10 | loss 4.5000 | lr 1.00e-03")
    True
    """

    def __init__(self, run_dir: str, *, total_steps: int, console: bool = True, tensorboard: bool = False,
                 start_step: int = 0, stream: Optional[IO[str]] = None):
        os.makedirs(run_dir, exist_ok=True)
        self.run_dir, self.total_steps, self.start_step = run_dir, total_steps, start_step
        self.path = os.path.join(run_dir, METRICS_FILE)
        self.console = console
        # The bar goes to stderr (tqdm's habit) when it is a terminal; plain lines go to stdout, in order with
        # the caller's prints (one stream, one buffer) and captured by `fastlm-train > log.txt`.
        self._bar_stream = stream if stream is not None else sys.stderr
        self._plain_stream = stream if stream is not None else sys.stdout
        self._t0 = time.time()
        self._writer = _summary_writer(os.path.join(run_dir, "tb"), start_step) if tensorboard else None
        if start_step > 0 and os.path.exists(self.path):
            _truncate_after(self.path, start_step)
            self._file = open(self.path, "a", encoding="utf-8")
        else:
            self._file = open(self.path, "w", encoding="utf-8")
        self._bar = None
        if console and _isatty(self._bar_stream):
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, file=self._bar_stream, dynamic_ncols=True,
                             unit="step", smoothing=0.1)

    def log(self, step: int, **values: Any) -> None:
        """Append one JSONL line ``{"step", "time", **values}`` (tensors and numpy scalars become numbers)
        and update the console (and TensorBoard)."""
        values = {k: _number(v) for k, v in values.items()}
        record = {"step": int(step), "time": round(time.time(), 3), **values}
        try:
            line = json.dumps(record)
        except TypeError as e:
            raise ValueError(f"MetricsLogger.log: values must be numbers or strings ({e})") from None
        self._file.write(line + "\n")
        self._file.flush()
        if self._writer is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._writer.add_scalar(k, v, step)
        if not self.console:
            return
        if self._bar is not None:
            self._bar.update(max(0, min(step, self.total_steps) - self._bar.n))
            post = {name: _fmt(k, values[k]) for k, name in (("train/loss", "loss"), ("lr", "lr"),
                                                              ("tokens_per_s", "tok/s")) if values.get(k) is not None}
            if post:
                self._bar.set_postfix(post, refresh=True)
            if any(k.startswith("val/") for k in values):
                self._bar.write(self._line(step, {k: v for k, v in values.items() if k.startswith("val/")}),
                                file=self._bar_stream)
        else:
            print(self._line(step, values, eta=True), file=self._plain_stream, flush=True)

    def message(self, text: str) -> None:
        """Print a line to the console without breaking the progress bar."""
        if not self.console:
            return
        if self._bar is not None:
            self._bar.write(text, file=self._bar_stream)
        else:
            print(text, file=self._plain_stream, flush=True)

    def close(self) -> None:
        """Close the file, the bar and the TensorBoard writer (idempotent)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _line(self, step: int, values: dict[str, Any], *, eta: bool = False) -> str:
        keys = [k for k in SHOWN if k in values] + [k for k in values if k not in SHOWN]
        parts = [f"step {step}/{self.total_steps}"]
        for k in keys:
            if values[k] is None or (k == "skipped" and not values[k]):
                continue  # e.g. mfu on a device of unknown peak FLOPs
            name = {"train/loss": "loss", "tokens_per_s": "tok/s"}.get(k, k)
            parts.append(f"{name} {_fmt(k, values[k])}")
        done = step - self.start_step
        if eta and done > 0 and step < self.total_steps:
            parts.append(f"eta {_duration((time.time() - self._t0) / done * (self.total_steps - step))}")
        return " | ".join(parts)


def _summary_writer(log_dir: str, start_step: int):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        from fastlm.data.io import MissingDependencyError

        raise MissingDependencyError(f"tensorboard=true needs the tensorboard package: pip install tensorboard "
                                     f"(or pip install 'fastlm[tensorboard]') ({e})") from None
    # purge_step: a resumed run drops the events written after its checkpoint, as metrics.jsonl does.
    return SummaryWriter(log_dir, purge_step=start_step + 1 if start_step > 0 else None)  # purges steps >= it


def _json_lines(path: str):
    """``(line, record)`` for each line of ``path`` that parses as a JSON object (a line cut by a kill is skipped)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                yield line, rec


def _truncate_after(path: str, step: int) -> None:
    """Keep the lines of ``path`` with ``step <= step`` (unreadable lines, e.g. one cut by a kill, dropped)."""
    kept = [line if line.endswith("\n") else line + "\n" for line, rec in _json_lines(path)
            if isinstance(rec.get("step"), int) and rec["step"] <= step]
    with atomic_write(path) as f:
        f.writelines(kept)


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _number(v: Any) -> Any:
    """Tensors and numpy scalars of one element -> Python numbers; anything else as is."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    item = getattr(v, "item", None)
    if callable(item):
        try:
            return item()
        except (ValueError, RuntimeError):  # more than one element
            pass
    return v


def _fmt(key: str, v: Any) -> str:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return str(v)
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if key == "lr":
        return f"{v:.2e}"
    if key == "mfu":
        return f"{100 * v:.1f}%"
    if key in ("tokens_per_s", "tokens"):
        return _si(v)
    if key == "val/accuracy":
        return f"{100 * v:.2f}%"
    if isinstance(v, int):
        return str(v)
    return f"{v:.4f}" if abs(v) < 1e4 else f"{v:.4g}"


def _si(v: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.1f}{unit}"
    return f"{v:.0f}"


def _duration(s: float) -> str:
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def read_metrics(path: str) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl (lines that do not parse, e.g. one cut by a kill, are skipped).

    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> with MetricsLogger(d, total_steps=2, console=False) as log: log.log(1, **{"train/loss": 2.0})
    >>> read_metrics(os.path.join(d, "metrics.jsonl"))[0]["train/loss"]
    2.0
    """
    return [rec for _, rec in _json_lines(path) if "step" in rec]


def plot_losses(metrics_path: str, png_path: str, *, note: Optional[Callable[[str], None]] = None) -> Optional[str]:
    """Plot train loss (raw, light; and smoothed) and val loss points against step into a PNG (written
    atomically); returns ``png_path``, or None with a note (to ``note``, default stderr) when matplotlib
    is not installed or there is nothing to plot.

    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> with MetricsLogger(d, total_steps=2, console=False) as log: log.log(1, **{"train/loss": 2.0})
    >>> png = os.path.join(d, "loss.png")
    >>> plot_losses(os.path.join(d, "metrics.jsonl"), png, note=print) in (None, png)
    True
    """
    say = note if note is not None else (lambda text: print(text, file=sys.stderr))
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        say(f"note: {png_path} not written: matplotlib is not installed (pip install 'fastlm[plot]')")
        return None
    records = read_metrics(metrics_path)
    train = [(r["step"], r["train/loss"]) for r in records if _finite(r.get("train/loss"))]
    val = [(r["step"], r["val/loss"]) for r in records if _finite(r.get("val/loss"))]
    if not train and not val:
        say(f"note: {png_path} not written: no train/loss or val/loss in {metrics_path}")
        return None

    fig = Figure(figsize=(8, 5), dpi=100)
    FigureCanvasAgg(fig)  # attaches itself: no pyplot, no global backend change
    ax = fig.add_subplot()
    if train:
        steps, losses = zip(*train)
        ax.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=1, label="train")
        if len(losses) >= 5:
            ax.plot(steps, _smooth(list(losses)), color="tab:blue", linewidth=2, label="train (smoothed)")
    if val:
        steps, losses = zip(*val)
        ax.plot(steps, losses, color="tab:orange", marker="o", linewidth=1.5, label="val")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(os.path.basename(os.path.dirname(os.path.abspath(metrics_path))) or "loss")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_write(png_path, "wb") as f:
        fig.savefig(f, format="png")
    return png_path


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _smooth(xs: list[float]) -> list[float]:
    """Centered moving average (no lag, unlike an EMA), half-width ~ 1/40 of the points, shrinking at the ends."""
    half = max(1, min(50, len(xs) // 40))
    prefix = [0.0]
    for x in xs:
        prefix.append(prefix[-1] + x)
    out = []
    for i in range(len(xs)):
        k = min(half, i, len(xs) - 1 - i)
        out.append((prefix[i + k + 1] - prefix[i - k]) / (2 * k + 1))
    return out
