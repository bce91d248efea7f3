"""fastlm.train.schedule against closed forms: warmup, cosine end value, WSD plateau and decay."""
import math

import pytest

from fastlm.train.config import OptimConfig
from fastlm.train.schedule import learning_rate, lr_multiplier


def test_warmup_linear_from_zero():
    for s in range(10):
        assert lr_multiplier(s, total_steps=100, warmup_steps=10) == pytest.approx((s + 1) / 10)
    assert lr_multiplier(10, total_steps=100, warmup_steps=10) == pytest.approx(1.0)


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.5])
def test_cosine_closed_form(ratio):
    T, W = 101, 10
    for s in range(W, T):
        p = (s - W) / (T - 1 - W)
        want = ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * p))
        assert lr_multiplier(s, total_steps=T, warmup_steps=W, min_lr_ratio=ratio) == pytest.approx(want)
    assert lr_multiplier(T - 1, total_steps=T, warmup_steps=W, min_lr_ratio=ratio) == pytest.approx(ratio)
    mid = W + (T - 1 - W) // 2
    assert lr_multiplier(mid, total_steps=T, warmup_steps=W, min_lr_ratio=ratio) == pytest.approx((1 + ratio) / 2)


def test_cosine_monotone_after_warmup():
    vals = [lr_multiplier(s, total_steps=50, warmup_steps=5) for s in range(5, 50)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))


def test_wsd_plateau_and_decay():
    T, W, frac, ratio = 100, 10, 0.2, 0.1
    start = T - 20
    for s in range(W, start):
        assert lr_multiplier(s, total_steps=T, warmup_steps=W, schedule="wsd", decay_fraction=frac,
                             min_lr_ratio=ratio) == 1.0
    for s in range(start, T):
        want = 1.0 - (1.0 - ratio) * (s - start) / (T - 1 - start)
        got = lr_multiplier(s, total_steps=T, warmup_steps=W, schedule="wsd", decay_fraction=frac,
                            min_lr_ratio=ratio)
        assert got == pytest.approx(want)
    assert lr_multiplier(T - 1, total_steps=T, warmup_steps=W, schedule="wsd", min_lr_ratio=ratio) \
        == pytest.approx(ratio)


def test_constant_and_edges():
    assert lr_multiplier(99, total_steps=100, warmup_steps=5, schedule="constant") == 1.0
    assert lr_multiplier(0, total_steps=1, warmup_steps=0) == pytest.approx(0.1)  # one step: the floor
    assert lr_multiplier(3, total_steps=4, warmup_steps=10) == pytest.approx(0.4)  # still warming up
    with pytest.raises(ValueError, match="schedule"):
        lr_multiplier(0, total_steps=10, warmup_steps=0, schedule="linear")


def test_learning_rate_from_config():
    o = OptimConfig(lr=2e-3, warmup_steps=0, min_lr_ratio=0.25)
    assert learning_rate(0, o, 10) == pytest.approx(2e-3)
    assert learning_rate(9, o, 10) == pytest.approx(5e-4)
