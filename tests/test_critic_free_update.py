"""The critic-free PPO update (`PPOConfig.advantage` != "gae"): advantages from the
shaped token rewards checked against numpy hand computations, no critic in the state,
the k3 KL loss, the NaN guard, and sharded == single device."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType

from jaxstep.rl import advantages as adv_lib
from jaxstep.rl.losses import aggregate_token_loss
from jaxstep.rl.update import PPOConfig, critic_free_advantages, init_ppo_state, make_ppo_update
from test_ppo_update import (BATCH, PROMPT, TIME, init_params, make_batch, param_sharding, policy_apply,
                             to_numpy)

K = 2  # responses per prompt: rows 2i, 2i+1
TX = optax.adam(1e-2)


def critic_free_batch(seed=0, steps=3):
    """`make_batch` without values, plus step boundaries on the time axis: step j of a
    response of length n ends at response token min(2j+1, n-1); slots past the last
    token are invalid."""
    policy_params, critic_params = init_params(seed)
    batch = make_batch(policy_params, critic_params, seed=seed)
    del batch["values"]
    lengths = np.asarray(batch["response_mask"]).sum(-1).astype(int)
    ends = np.minimum(2 * np.arange(steps)[None] + 1, lengths[:, None] - 1)
    mask = (2 * np.arange(steps)[None] + 1 <= lengths[:, None] - 1) | (np.arange(steps)[None] == 0)
    batch["step_ends"] = jnp.asarray(ends + PROMPT, jnp.int32)
    batch["step_mask"] = jnp.asarray(mask)
    # Rewards at every step end too (a process reward) besides the last-token one.
    rewards = np.asarray(batch["token_rewards"]).copy()
    rng = np.random.default_rng(seed + 10)
    for b in range(BATCH):
        for j in np.flatnonzero(mask[b]):
            rewards[b, PROMPT + ends[b, j]] += rng.normal()
    batch["token_rewards"] = jnp.asarray(rewards)
    return policy_params, batch


def hand_advantages(name, batch, kl_coef, k1_in_reward=True):
    """numpy: KL-folded token rewards -> the estimator's advantages `[batch, time]`."""
    mask = np.asarray(batch["response_mask"]) > 0
    r = np.where(mask, np.asarray(batch["token_rewards"], np.float64), 0.0)
    if k1_in_reward:
        k1 = np.asarray(batch["old_logprobs"], np.float64) - np.asarray(batch["ref_logprobs"], np.float64)
        r = r - kl_coef * np.where(mask, k1, 0.0)
    seq = r.sum(-1).reshape(-1, K)
    if name == "grpo":
        a = (seq - seq.mean(-1, keepdims=True)) / (seq.std(-1, keepdims=True) + 1e-6)
    elif name == "rloo":
        a = seq - (seq.sum(-1, keepdims=True) - seq) / (K - 1)
    elif name == "dr_grpo":
        a = seq - seq.mean(-1, keepdims=True)
    elif name == "reinforce_pp":
        returns = np.flip(np.cumsum(np.flip(r, -1), -1), -1)  # gamma = 1, zeros off the mask
        valid = returns[mask]
        return np.where(mask, (returns - valid.mean()) / np.sqrt(valid.var() + 1e-8), 0.0)
    else:  # grpo_process: step rewards = token rewards summed over each step's tokens
        ends, smask = np.asarray(batch["step_ends"]), np.asarray(batch["step_mask"])
        out = np.zeros_like(r)
        step_r = np.zeros(smask.shape)
        for b in range(BATCH):
            starts = [PROMPT] + [e + 1 for e in ends[b][smask[b]][:-1]]
            stops = list(ends[b][smask[b]][:-1] + 1) + [TIME]
            for j, (s, e) in enumerate(zip(starts, stops)):
                step_r[b, j] = r[b, s:e].sum()
        for g in range(BATCH // K):
            rows = slice(g * K, g * K + K)
            vals = step_r[rows][smask[rows]]
            normed = np.where(smask[rows], (step_r[rows] - vals.mean()) / (vals.std() + 1e-6), 0.0)
            for i, b in enumerate(range(g * K, g * K + K)):
                n = smask[b].sum()
                stops = list(ends[b][:n][:-1]) + [TIME - 1]
                start = PROMPT
                for j in range(n):
                    out[b, start:stops[j] + 1] = normed[i, j:n].sum()
                    start = stops[j] + 1
        return np.where(mask, out, 0.0)
    return np.where(mask, np.repeat(a.reshape(-1), TIME).reshape(BATCH, TIME), 0.0)


@pytest.mark.parametrize("name", ["grpo", "rloo", "dr_grpo", "reinforce_pp", "grpo_process"])
def test_advantages_match_hand_values(name):
    _, batch = critic_free_batch()
    cfg = PPOConfig(advantage=name, group_size=K)
    adv, seq_kl, metrics = critic_free_advantages(batch, 0.3, cfg)
    want = hand_advantages(name, batch, 0.3)
    np.testing.assert_allclose(np.asarray(adv), want, rtol=2e-4, atol=2e-5)
    mask = np.asarray(batch["response_mask"])
    np.testing.assert_allclose(float(metrics["advantage_mean"]), (want * mask).sum() / mask.sum(),
                               rtol=1e-3, atol=1e-5)
    k1 = (np.asarray(batch["old_logprobs"]) - np.asarray(batch["ref_logprobs"])) * mask
    np.testing.assert_allclose(np.asarray(seq_kl), k1.sum(-1), rtol=1e-5, atol=1e-6)
    assert "value_mean" not in metrics and "return_mean" not in metrics


def test_k3_keeps_kl_out_of_the_rewards():
    _, batch = critic_free_batch(seed=1)
    cfg = PPOConfig(advantage="grpo", group_size=K, kl_in_reward=False, kl_loss_coef=0.1)
    adv, _, metrics = critic_free_advantages(batch, 0.3, cfg)
    np.testing.assert_allclose(np.asarray(adv), hand_advantages("grpo", batch, 0.3, k1_in_reward=False),
                               rtol=2e-4, atol=2e-5)
    assert float(metrics["reward"]) == pytest.approx(float(metrics["score"]))


@pytest.mark.parametrize("name,aggregation", [("grpo_process", "seq_mean_token_mean"),
                                              ("dr_grpo", "seq_mean_token_sum_norm"),
                                              ("rloo", "token_mean")])
def test_update_has_no_critic_and_trains_on_those_advantages(name, aggregation):
    policy_params, batch = critic_free_batch(seed=2)
    state = init_ppo_state(policy_params, None, TX, None, 0.05)
    assert state.critic_params is None and state.critic_opt_state is None
    cfg = PPOConfig(advantage=name, group_size=K, loss_aggregation=aggregation, norm_length=TIME - PROMPT)
    update = make_ppo_update(policy_apply, None, TX, None, cfg, donate=False)
    new_state, metrics = update(state, batch, jax.random.key(0))
    assert new_state.critic_params is None and new_state.critic_opt_state is None
    assert int(new_state.step) == 1 and float(metrics["skipped"]) == 0
    assert not {"value_loss", "critic_grad_norm", "value_clip_frac"} & set(metrics)
    # One epoch, one minibatch, old logprobs of these params: ratio 1, so the surrogate is
    # minus the aggregated advantages (no clipping).
    adv = hand_advantages(name, batch, 0.05)
    want = -float(aggregate_token_loss(jnp.asarray(adv, jnp.float32), batch["response_mask"], aggregation,
                                       norm_length=TIME - PROMPT))
    np.testing.assert_allclose(float(metrics["policy_loss"]), want, rtol=1e-3, atol=1e-5)
    assert float(metrics["clip_frac"]) == 0.0
    changed = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
                           new_state.policy_params, policy_params)
    assert max(jax.tree.leaves(changed)) > 0
    # Several updates on the fixed batch lower the surrogate.
    for i in range(4):
        new_state, later = update(new_state, batch, jax.random.key(i + 1))
    assert float(later["policy_loss"]) < float(metrics["policy_loss"])


def test_update_needs_step_boundaries_and_skips_on_nan():
    policy_params, batch = critic_free_batch(seed=3)
    cfg = PPOConfig(advantage="grpo_process", group_size=K, minibatches=2, kl_in_reward=False,
                    kl_loss_coef=0.1)
    update = make_ppo_update(policy_apply, None, TX, None, cfg, donate=False)
    state = init_ppo_state(policy_params, None, TX, None, 0.05)
    with pytest.raises(KeyError, match="step_mask"):
        update(state, {k: v for k, v in batch.items() if k != "step_mask"}, jax.random.key(0))
    bad = dict(batch, token_rewards=batch["token_rewards"].at[3, PROMPT].set(jnp.nan))
    new_state, metrics = update(state, bad, jax.random.key(0))
    assert float(metrics["skipped"]) == 1.0 and float(metrics["skipped_minibatches"]) == 2.0
    for name in ("policy_params", "policy_opt_state"):
        jax.tree_util.tree_map(np.testing.assert_array_equal, to_numpy(getattr(new_state, name)),
                               to_numpy(getattr(state, name)))
    _, metrics = update(state, batch, jax.random.key(0))
    assert float(metrics["skipped"]) == 0.0 and float(metrics["kl_loss"]) >= 0.0


@pytest.mark.parametrize("mesh_shape", [(2, 2, 2), (8, 1, 1)])
def test_sharded_critic_free_update_equals_single_device(mesh_shape):
    """grpo_process with the k3 KL loss, adaptive-free, on 8 fake CPU devices (conftest)."""
    assert len(jax.devices()) >= 8, "conftest should provide 8 fake CPU devices"
    cfg = PPOConfig(advantage="grpo_process", group_size=K, epochs=2, minibatches=2, ent_coef=0.01,
                    kl_in_reward=False, kl_loss_coef=0.1, loss_aggregation="seq_mean_token_mean")
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2, weight_decay=0.01))
    policy_params, batch = critic_free_batch(seed=4)
    single = init_ppo_state(policy_params, None, tx, None, 0.1)
    update = make_ppo_update(policy_apply, None, tx, None, cfg)
    for i in range(2):
        single, single_metrics = update(single, batch, jax.random.key(i))

    mesh = jax.make_mesh(mesh_shape, ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)
    policy_params, _ = critic_free_batch(seed=4)
    shard = lambda tree: jax.tree_util.tree_map(lambda x: jax.device_put(x, param_sharding(mesh, x)), tree)
    state = init_ppo_state(shard(policy_params), None, tx, None, 0.1)
    sharded_update = make_ppo_update(policy_apply, None, tx, None, cfg, mesh=mesh)
    for i in range(2):
        state, metrics = sharded_update(state, batch, jax.random.key(i))
    assert state.critic_params is None
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                                                                   rtol=2e-4, atol=2e-5),
                           to_numpy(state), to_numpy(single))
    assert set(metrics) == set(single_metrics)
    for key, value in single_metrics.items():
        np.testing.assert_allclose(float(metrics[key]), float(value), rtol=2e-4, atol=2e-5, err_msg=key)


def test_estimator_registry_matches_the_update():
    assert [n for n in adv_lib.ESTIMATORS if adv_lib.needs_critic(n)] == ["gae"]
    assert PPOConfig().needs_critic and not PPOConfig(advantage="grpo").needs_critic
