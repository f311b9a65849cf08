"""PPO losses and KL estimators against direct numpy computations."""
import jax
import numpy as np

from jaxstep.rl.losses import (entropy_bonus, kl_k1, kl_k3, kl_loss, kl_penalty_rewards, policy_loss,
                               value_loss)

RNG = np.random.default_rng(0)
B, T = 3, 7
LOGP = RNG.normal(-2.0, 0.5, size=(B, T)).astype(np.float32)
OLD = (LOGP + RNG.normal(0, 0.3, size=(B, T))).astype(np.float32)
REF = (LOGP + RNG.normal(0, 0.3, size=(B, T))).astype(np.float32)
ADV = RNG.normal(size=(B, T)).astype(np.float32)
MASK = RNG.uniform(size=(B, T)) < 0.7


def mmean(x):
    return x[MASK].astype(np.float64).mean()


def test_policy_loss_matches_numpy():
    loss, metrics = jax.jit(lambda *a: policy_loss(*a, clip_eps=0.2))(LOGP, OLD, ADV, MASK)
    ratio = np.exp(LOGP.astype(np.float64) - OLD)
    per_token = np.maximum(-ADV * ratio, -ADV * np.clip(ratio, 0.8, 1.2))
    np.testing.assert_allclose(float(loss), mmean(per_token), rtol=1e-5)
    clipped = (-ADV * np.clip(ratio, 0.8, 1.2)) > (-ADV * ratio)
    np.testing.assert_allclose(float(metrics["clip_frac"]), mmean(clipped.astype(float)), rtol=1e-6)
    np.testing.assert_allclose(float(metrics["approx_kl"]), mmean(0.5 * (LOGP - OLD) ** 2.0), rtol=1e-5)
    assert 0 < float(metrics["clip_frac"]) < 1  # the data exercises both branches


def test_policy_loss_gradient_zero_when_clipped():
    # ratio 1.5 > 1.2 with positive advantage: clipped branch, no gradient.
    grad = jax.grad(lambda lp: policy_loss(lp, np.zeros((1, 1), np.float32), np.ones((1, 1), np.float32),
                                           np.ones((1, 1), bool), clip_eps=0.2)[0])
    assert float(grad(np.full((1, 1), np.log(1.5), np.float32))[0, 0]) == 0.0
    np.testing.assert_allclose(float(grad(np.full((1, 1), np.log(1.1), np.float32))[0, 0]), -1.1, rtol=1e-6)


def test_value_loss_matches_numpy():
    values = RNG.normal(size=(B, T)).astype(np.float32)
    old_values = (values + RNG.normal(0, 0.4, size=(B, T))).astype(np.float32)
    returns = RNG.normal(size=(B, T)).astype(np.float32)
    loss, metrics = value_loss(values, old_values, returns, MASK, clip_eps=0.2)
    v_clip = old_values + np.clip(values - old_values, -0.2, 0.2)
    per_token = np.maximum((values - returns) ** 2.0, (v_clip - returns) ** 2.0)
    np.testing.assert_allclose(float(loss), 0.5 * mmean(per_token), rtol=1e-5)
    active = (np.abs(values - old_values) > 0.2) & ((v_clip - returns) ** 2.0 > (values - returns) ** 2.0)
    np.testing.assert_allclose(float(metrics["value_clip_frac"]), mmean(active.astype(float)), rtol=1e-6)
    assert 0 < float(metrics["value_clip_frac"]) < 1
    plain, _ = value_loss(values, old_values, returns, MASK, clip_eps=None)
    np.testing.assert_allclose(float(plain), 0.5 * mmean((values - returns) ** 2.0), rtol=1e-5)


def test_kl_estimators_and_penalty_match_numpy():
    np.testing.assert_allclose(np.asarray(kl_k1(LOGP, REF)), LOGP - REF, rtol=1e-6)
    r = REF.astype(np.float64) - LOGP
    k3 = np.exp(r) - r - 1
    np.testing.assert_allclose(np.asarray(kl_k3(LOGP, REF)), k3, rtol=1e-4, atol=1e-7)
    assert (np.asarray(kl_k3(LOGP, REF)) >= 0).all()
    np.testing.assert_allclose(float(kl_loss(LOGP, REF, MASK)), mmean(k3), rtol=1e-4)
    rewards = RNG.normal(size=(B, T)).astype(np.float32)
    out = np.asarray(kl_penalty_rewards(rewards, LOGP, REF, MASK, 0.1))
    np.testing.assert_allclose(out, rewards - 0.1 * np.where(MASK, LOGP - REF, 0.0), rtol=1e-5, atol=1e-6)
    entropy = RNG.uniform(size=(B, T)).astype(np.float32)
    np.testing.assert_allclose(float(entropy_bonus(entropy, MASK)), mmean(entropy), rtol=1e-6)


def test_k3_is_unbiased_kl_estimate():
    # Two categorical distributions: E_{x~p}[k3] = KL(p||q) exactly (sum weighted by p).
    p = np.array([0.5, 0.3, 0.2])
    q = np.array([0.2, 0.5, 0.3])
    k3 = np.asarray(kl_k3(np.log(p)[None], np.log(q)[None]))[0]
    np.testing.assert_allclose((p * k3).sum(), (p * np.log(p / q)).sum(), rtol=1e-5)
