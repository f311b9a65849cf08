"""GAE (reverse lax.scan, masked) against a plain Python loop; masked whitening."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstep.rl.gae import gae, masked_mean, masked_var, whiten


def python_gae(rewards, values, mask, gamma, lam):
    """Reference: compress each row to its valid tokens, run textbook GAE, scatter back."""
    adv = np.zeros_like(rewards, dtype=np.float64)
    for b in range(rewards.shape[0]):
        idx = [t for t in range(rewards.shape[1]) if mask[b, t]]
        next_value, next_adv = 0.0, 0.0
        for t in reversed(idx):
            delta = rewards[b, t] + gamma * next_value - values[b, t]
            next_adv = delta + gamma * lam * next_adv
            next_value = values[b, t]
            adv[b, t] = next_adv
    returns = np.where(mask, adv + values, 0.0)
    return adv, returns


def make_batch(seed, batch=5, time=12):
    rng = np.random.default_rng(seed)
    rewards = rng.normal(size=(batch, time)).astype(np.float32)
    values = rng.normal(size=(batch, time)).astype(np.float32)
    # left prompt of varying length, response, right padding; one row with a hole, one empty
    mask = np.zeros((batch, time), bool)
    for b in range(batch):
        start, end = rng.integers(0, 4), rng.integers(5, time + 1)
        mask[b, start:end] = True
    mask[1, 6] = False
    mask[2] = False
    return rewards, values, mask


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.99, 1.0), (0.9, 0.0)])
def test_gae_matches_python_loop(gamma, lam):
    rewards, values, mask = make_batch(0)
    adv, ret = jax.jit(lambda r, v, m: gae(r, v, m, gamma=gamma, lam=lam))(rewards, values, mask)
    assert adv.dtype == jnp.float32 and ret.dtype == jnp.float32 and adv.shape == rewards.shape
    ref_adv, ref_ret = python_gae(rewards, values, mask, gamma, lam)
    np.testing.assert_allclose(np.asarray(adv), ref_adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ret), ref_ret, rtol=1e-5, atol=1e-5)
    assert (np.asarray(adv)[~mask] == 0).all() and (np.asarray(adv)[2] == 0).all()
    # Garbage (NaN) off the mask does not leak into valid positions.
    adv_nan, _ = gae(np.where(mask, rewards, np.nan), np.where(mask, values, np.nan), mask,
                     gamma=gamma, lam=lam)
    np.testing.assert_array_equal(np.asarray(adv_nan), np.asarray(adv))


def test_gae_hand_values_and_padding_ignored():
    # 2 valid tokens then padding whose (garbage) rewards/values must not leak in.
    rewards = np.array([[0.0, 1.0, 100.0, 100.0]], np.float32)
    values = np.array([[0.5, 0.25, 7.0, 7.0]], np.float32)
    mask = np.array([[1, 1, 0, 0]], bool)
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # t=1: delta = 1 + 0 - 0.25 = 0.75 ; t=0: delta = 0 + 0.25 - 0.5 = -0.25, A = -0.25 + 0.5*0.75
    np.testing.assert_allclose(np.asarray(adv), [[0.125, 0.75, 0, 0]], atol=1e-7)
    np.testing.assert_allclose(np.asarray(ret), [[0.625, 1.0, 0, 0]], atol=1e-7)
    # lam = gamma = 1: the advantage is the return-to-go minus the value.
    adv1, ret1 = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    np.testing.assert_allclose(np.asarray(ret1), [[1.0, 1.0, 0, 0]], atol=1e-7)


def test_masked_mean_var_and_whiten_match_numpy():
    rng = np.random.default_rng(3)
    x = rng.normal(3.0, 2.0, size=(4, 9)).astype(np.float32)
    mask = rng.uniform(size=(4, 9)) < 0.6
    sel = x[mask].astype(np.float64)
    np.testing.assert_allclose(float(masked_mean(x, mask)), sel.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(masked_var(x, mask)), sel.var(), rtol=1e-5)
    w = np.asarray(whiten(x, mask))
    np.testing.assert_allclose(w[mask], (sel - sel.mean()) / np.sqrt(sel.var() + 1e-8), rtol=1e-4, atol=1e-5)
    assert (w[~mask] == 0).all()
    w2 = np.asarray(whiten(x, mask, shift_mean=False))
    np.testing.assert_allclose(w2[mask], (sel - sel.mean()) / np.sqrt(sel.var() + 1e-8) + sel.mean(),
                               rtol=1e-4, atol=1e-5)
    assert float(masked_mean(x, np.zeros_like(mask))) == 0.0
    poisoned = np.where(mask, x, np.nan)
    np.testing.assert_allclose(float(masked_mean(poisoned, mask)), sel.mean(), rtol=1e-5)
    assert np.isfinite(np.asarray(whiten(poisoned, mask))).all()
