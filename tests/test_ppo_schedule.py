"""The PPO learning-rate schedule by hand: frozen iterations, warmup, constant or linear decay."""
import ml_collections
import pytest

from jaxstep.train.optim import ppo_schedule


def ppo(**kw):
    p = ml_collections.ConfigDict(dict(epochs=1, minibatches=2, warmup_steps=1, steps=5, end_lr_ratio=1.0))
    p.update(kw)
    return p


def test_constant_after_warmup():
    s = ppo_schedule(1.0, ppo())
    assert [float(s(c)) for c in range(10)] == pytest.approx([0.5, 1.0] + [1.0] * 8)


def test_linear_decay_to_the_last_update():
    # 5 iterations x 2 updates; warmup 2 updates, then 8 updates from 1.0 down to 0.1.
    s = ppo_schedule(1.0, ppo(end_lr_ratio=0.1))
    values = [float(s(c)) for c in range(10)]
    assert values[:2] == pytest.approx([0.5, 1.0])
    assert values[2:] == pytest.approx([1.0 - 0.9 * k / 7 for k in range(8)])
    assert values[-1] == pytest.approx(0.1)


def test_frozen_iterations_then_decay():
    s = ppo_schedule(2.0, ppo(end_lr_ratio=0.0, warmup_steps=0), frozen_iterations=1)
    values = [float(s(c)) for c in range(10)]
    assert values[:2] == [0.0, 0.0]  # the first iteration trains the critic only
    assert values[2:] == pytest.approx([2.0 * (1 - k / 7) for k in range(8)])
