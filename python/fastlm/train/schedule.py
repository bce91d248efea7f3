"""Learning-rate schedules as pure functions of the optimizer step (no state: resuming needs only the step).

All schedules start with a linear warmup from 0 (step 0 trains at ``lr / warmup``, as nanoGPT's
``(step + 1) / warmup``) and end at ``lr * min_lr_ratio`` on the last step:
- ``cosine``: half a cosine from the peak down to the floor after the warmup (GPT-3, Chinchilla).
- ``wsd``: warmup-stable-decay (MiniCPM, Hägele et al. 2024): the peak held, then a linear decay to the
  floor over the last ``decay_fraction`` of the steps; a run can be extended by branching before the decay.
- ``constant``: the peak after the warmup (no decay; ``min_lr_ratio`` unused).
"""

from __future__ import annotations

import math


def lr_multiplier(step: int, *, total_steps: int, warmup_steps: int, schedule: str = "cosine",
                  min_lr_ratio: float = 0.1, decay_fraction: float = 0.2) -> float:
    """Factor of the peak lr at optimizer ``step`` (0-based) of ``total_steps``.

    >>> [round(lr_multiplier(s, total_steps=10, warmup_steps=2), 3) for s in (0, 1, 9)]
    [0.5, 1.0, 0.1]
    >>> lr_multiplier(5, total_steps=10, warmup_steps=0, schedule="wsd", decay_fraction=0.2)
    1.0
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    last = total_steps - 1
    if schedule == "cosine":
        span = last - warmup_steps
        if span <= 0:
            return 1.0 if step < last else min_lr_ratio
        progress = min(1.0, (step - warmup_steps) / span)
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "wsd":
        decay_steps = max(1, round(decay_fraction * total_steps)) if decay_fraction > 0 else 0
        decay_start = max(warmup_steps, total_steps - decay_steps)
        if step < decay_start or decay_steps == 0:
            return 1.0
        span = last - decay_start
        progress = 1.0 if span <= 0 else min(1.0, (step - decay_start) / span)
        return 1.0 - (1.0 - min_lr_ratio) * progress
    raise ValueError(f"schedule must be 'cosine', 'wsd' or 'constant', got {schedule!r}")


def learning_rate(step: int, optim, total_steps: int) -> float:
    """The lr of ``step`` for an ``OptimConfig`` (peak ``optim.lr``).

    >>> from fastlm.train.config import OptimConfig
    >>> learning_rate(0, OptimConfig(lr=1e-3, warmup_steps=10), 100)
    0.0001
    """
    return optim.lr * lr_multiplier(step, total_steps=total_steps, warmup_steps=optim.warmup_steps,
                                    schedule=optim.schedule, min_lr_ratio=optim.min_lr_ratio,
                                    decay_fraction=optim.decay_fraction)
