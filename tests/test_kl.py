"""KL coefficient controller against hand values."""
import jax
import numpy as np

from jaxstep.rl.kl import KLState, init_kl_state, update_kl_state


def test_fixed_controller_keeps_coef():
    state = init_kl_state(0.1)
    assert state.coef.dtype == np.float32 and state.coef.shape == ()
    for target in (None, 0.0):
        assert float(update_kl_state(state, 5.0, 64, target=target).coef) == np.float32(0.1)


def test_adaptive_controller_hand_values():
    state = init_kl_state(0.1)
    # kl 9 vs target 6: error = clip(0.5, +-0.2) = 0.2; coef = 0.1 * (1 + 0.2 * 100 / 1000)
    up = update_kl_state(state, 9.0, 100, target=6.0, horizon=1000.0)
    np.testing.assert_allclose(float(up.coef), 0.1 * 1.02, rtol=1e-6)
    # kl 5.4 vs 6: error = -0.1 ; coef = 0.1 * (1 - 0.1 * 100 / 1000)
    down = update_kl_state(state, 5.4, 100, target=6.0, horizon=1000.0)
    np.testing.assert_allclose(float(down.coef), 0.1 * 0.99, rtol=1e-5)
    # NaN observation: unchanged
    assert float(update_kl_state(state, np.nan, 100, target=6.0).coef) == np.float32(0.1)


def test_controller_is_a_jittable_pytree():
    state = init_kl_state(0.2)
    leaves = jax.tree_util.tree_leaves(state)
    assert len(leaves) == 1 and leaves[0].shape == ()
    step = jax.jit(lambda s, kl: update_kl_state(s, kl, 10, target=1.0, horizon=100.0))
    out = step(state, 3.0)
    assert isinstance(out, KLState)
    np.testing.assert_allclose(float(out.coef), 0.2 * 1.02, rtol=1e-6)


def _inline_kl_compute_advantages(batch, kl_coef, cfg):
    """`compute_advantages` as it was with the k1 penalty written inline (the reference)."""
    import jax.numpy as jnp
    from jaxstep.rl import losses
    from jaxstep.rl.gae import gae, masked_mean, whiten
    mask = batch["response_mask"].astype(jnp.float32)
    valid = mask > 0
    scores = jnp.where(valid, batch["token_rewards"].astype(jnp.float32), 0.0)
    rewards = scores
    if cfg.normalize_rewards:
        std = jnp.std(scores.sum(-1))
        rewards = rewards * jnp.where(std > 1e-6, 1.0 / jnp.maximum(std, 1e-6), 1.0)
    metrics = {}
    seq_kl = jnp.zeros(mask.shape[:1], jnp.float32)
    if "ref_logprobs" in batch:
        k1 = jnp.where(valid, losses.kl_k1(batch["old_logprobs"], batch["ref_logprobs"]), 0.0)
        seq_kl = k1.sum(-1)
        metrics["kl"] = seq_kl.mean()
        if cfg.kl_in_reward:
            rewards = rewards - kl_coef * k1
    values = batch["values"].astype(jnp.float32)
    advantages, returns = gae(rewards, values, mask, gamma=cfg.gamma, lam=cfg.lam)
    metrics.update(
        score=scores.sum(-1).mean(), reward=rewards.sum(-1).mean(),
        advantage_mean=masked_mean(advantages, mask), return_mean=masked_mean(returns, mask),
        value_mean=masked_mean(values, mask), response_length=mask.sum(-1).mean(),
        kl_coef=jnp.asarray(kl_coef, jnp.float32))
    if cfg.whiten_advantages:
        advantages = whiten(advantages, mask)
    return advantages, returns, seq_kl, metrics


def test_compute_advantages_kl_penalty_is_bitwise_the_inline_formula():
    import jax.numpy as jnp
    from jaxstep.rl.update import PPOConfig, compute_advantages
    rng = np.random.default_rng(7)
    batch_size, time = 6, 13
    batch = {
        "response_mask": (rng.uniform(size=(batch_size, time)) < 0.7).astype(np.float32),
        "token_rewards": rng.normal(size=(batch_size, time)).astype(np.float32),
        "old_logprobs": rng.normal(-2, 1, size=(batch_size, time)).astype(np.float32),
        "ref_logprobs": rng.normal(-2, 1, size=(batch_size, time)).astype(np.float32),
        "values": rng.normal(size=(batch_size, time)).astype(np.float32),
    }
    configs = [PPOConfig(), PPOConfig(normalize_rewards=True, gamma=0.99, lam=0.9),
               PPOConfig(kl_in_reward=False), PPOConfig(whiten_advantages=False)]
    for cfg in configs:
        for kl_coef in (jnp.float32(0.137), 0.05):
            for wrap in (lambda f: f, lambda f: jax.jit(f, static_argnums=2)):
                got = wrap(compute_advantages)(batch, kl_coef, cfg)
                want = wrap(_inline_kl_compute_advantages)(batch, kl_coef, cfg)
                flat_got, tree = jax.tree_util.tree_flatten(got)
                flat_want, tree_want = jax.tree_util.tree_flatten(want)
                assert tree == tree_want
                for a, b in zip(flat_got, flat_want):
                    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
