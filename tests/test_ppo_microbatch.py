"""`PPOConfig.microbatch_size`: gradient accumulation inside the PPO update equals the
full-minibatch update (same optimizer steps, same loss normalisations)."""
import jax
import numpy as np
import optax
import pytest

from jaxstep.rl import accumulate
from jaxstep.rl.update import PPOConfig, init_ppo_state, make_ppo_update
from test_critic_free_update import K, critic_free_batch
from test_ppo_update import TIME, PROMPT, critic_apply, init_params, make_batch, policy_apply

# Plain SGD: the parameter change is -lr * gradient, so equal params mean equal gradients
# (Adam's m / sqrt(v) would amplify rounding on near-zero gradients).
SGD = optax.sgd(0.5)


def test_microbatch_weights_hand_values():
    # Minibatch: 4 rows, tokens per row 3, 0, 1, 2 (6 valid tokens, 3 valid rows).
    mask = np.zeros((4, 5), np.float32)
    for row, n in enumerate([3, 0, 1, 2]):
        mask[row, :n] = 1
    totals = accumulate.mask_counts(mask)
    assert {k: float(v) for k, v in totals.items()} == {"token": 6.0, "row": 3.0, "rows": 4.0}
    # Microbatch j = rows j, j + 2 (n = 2): rows 0, 2 and rows 1, 3.
    micro = accumulate.split_microbatches({"response_mask": mask}, 2)["response_mask"]
    np.testing.assert_array_equal(micro[0], mask[[0, 2]])
    w0 = {k: float(v) for k, v in accumulate.microbatch_weights(micro[0], totals).items()}
    w1 = {k: float(v) for k, v in accumulate.microbatch_weights(micro[1], totals).items()}
    assert w0 == pytest.approx({"token": 4 / 6, "row": 2 / 3, "rows": 0.5})
    assert w1 == pytest.approx({"token": 2 / 6, "row": 1 / 3, "rows": 0.5})
    with pytest.raises(ValueError, match="microbatch_size 3"):
        accumulate.split_microbatches({"response_mask": mask}, 3)


def _run(cfg, state_fn, batch, critic=True):
    update = make_ppo_update(policy_apply, critic_apply if critic else None, SGD, SGD if critic else None,
                             cfg, donate=False)
    return update(state_fn(), batch, jax.random.key(3))


def _assert_same(full, micro, metric_keys):
    (s0, m0), (s1, m1) = full, micro
    assert int(s0.step) == int(s1.step) == 1
    for a, b in zip(jax.tree.leaves((s0.policy_params, s0.critic_params)),
                    jax.tree.leaves((s1.policy_params, s1.critic_params))):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)
    for k in metric_keys:
        np.testing.assert_allclose(float(m1[k]), float(m0[k]), rtol=1e-5, atol=1e-6, err_msg=k)


def test_gae_update_with_microbatches_equals_full_minibatches():
    policy_params, critic_params = init_params(0)
    batch = make_batch(policy_params, critic_params, seed=0)
    base = dict(epochs=2, minibatches=2, ent_coef=0.01, value_clip_eps=0.2)

    def state():
        return init_ppo_state(policy_params, critic_params, SGD, SGD, 0.05)
    full = _run(PPOConfig(**base), state, batch)
    micro = _run(PPOConfig(**base, microbatch_size=2), state, batch)
    _assert_same(full, micro, ["loss", "policy_loss", "clip_frac", "approx_kl", "entropy", "value_loss",
                               "value_clip_frac", "policy_grad_norm", "critic_grad_norm"])
    assert float(full[1]["policy_grad_norm"]) > 0 and float(full[1]["value_loss"]) > 0
    # The params did move: the equality is not two no-ops.
    moved = np.abs(np.asarray(jax.tree.leaves(micro[0].policy_params)[0])
                   - np.asarray(jax.tree.leaves(policy_params)[0])).max()
    assert moved > 0


@pytest.mark.parametrize("name,aggregation", [("dr_grpo", "seq_mean_token_sum_norm"),
                                              ("grpo_process", "seq_mean_token_mean"),
                                              ("rloo", "token_mean")])
def test_critic_free_update_with_microbatches_equals_full(name, aggregation):
    policy_params, batch = critic_free_batch(seed=4)
    # k3 KL loss term (token mean) next to the aggregated surrogate: two normalisations.
    base = dict(advantage=name, group_size=K, loss_aggregation=aggregation, norm_length=TIME - PROMPT,
                minibatches=2, kl_in_reward=False, kl_loss_coef=0.1, ent_coef=0.01)

    def state():
        return init_ppo_state(policy_params, None, SGD, None, 0.05)
    full = _run(PPOConfig(**base), state, batch, critic=False)
    for size in (1, 2):
        micro = _run(PPOConfig(**base, microbatch_size=size), state, batch, critic=False)
        _assert_same(full, micro, ["loss", "policy_loss", "kl_loss", "entropy", "clip_frac",
                                   "policy_grad_norm"])


def test_microbatch_size_must_divide_the_minibatch():
    policy_params, critic_params = init_params(0)
    batch = make_batch(policy_params, critic_params, seed=0)
    state = init_ppo_state(policy_params, critic_params, SGD, SGD, 0.05)
    with pytest.raises(ValueError, match="microbatch_size 3"):
        _run(PPOConfig(minibatches=2, microbatch_size=3), lambda: state, batch)
