"""Critic-free advantage estimators and policy-loss aggregation against hand values."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstep.rewards.shaping import shape_rewards
from jaxstep.rl.advantages import (ESTIMATORS, broadcast_to_tokens, dr_grpo, grpo, grpo_process,
                                   needs_critic, reinforce_pp, rloo, step_rewards_from_tokens,
                                   token_advantages, token_steps)
from jaxstep.rl.gae import masked_mean, masked_var
from jaxstep.rl.losses import aggregate_token_loss, policy_loss

S2 = np.sqrt(2.0)
# Two groups of k = 3: [1, 0, 0] and [1, 2, 2].
SEQ = np.array([1.0, 0.0, 0.0, 1.0, 2.0, 2.0], np.float32)


def test_grpo_hand_values():
    # Group [1, 0, 0]: mean 1/3, deviations 2/3, -1/3, -1/3, population var
    # (4/9 + 1/9 + 1/9) / 3 = 2/9, std sqrt(2)/3 -> sqrt(2), -1/sqrt(2), -1/sqrt(2).
    # Group [1, 2, 2]: mean 5/3, deviations -2/3, 1/3, 1/3, same std.
    out = jax.jit(lambda r: grpo(r, 3))(SEQ)
    assert out.dtype == jnp.float32 and out.shape == (6,)
    np.testing.assert_allclose(np.asarray(out), [S2, -1 / S2, -1 / S2, -S2, 1 / S2, 1 / S2],
                               rtol=1e-5)
    # k = 2: [1, 0] -> +-0.5 / 0.5 = +-1 ; [0, 1] -> -1, 1 ; [2, 2] -> 0 (no NaN).
    np.testing.assert_allclose(np.asarray(grpo(SEQ, 2)), [1, -1, -1, 1, 0, 0], atol=1e-5)


def test_grpo_degenerate_groups_give_zero_not_nan():
    assert (np.asarray(grpo(SEQ, 1)) == 0).all()  # every row its own group: r - r = 0
    out = np.asarray(grpo(np.full((4,), 0.7, np.float32), 4))
    assert np.isfinite(out).all() and (out == 0).all()
    assert (np.asarray(dr_grpo(SEQ, 1)) == 0).all()


def test_rloo_hand_values():
    # [1, 0, 0]: 1 - (0 + 0)/2 = 1 ; 0 - (1 + 0)/2 = -0.5 (twice).
    # [1, 2, 2]: 1 - (2 + 2)/2 = -1 ; 2 - (1 + 2)/2 = 0.5 (twice).
    out = jax.jit(lambda r: rloo(r, 3))(SEQ)
    np.testing.assert_allclose(np.asarray(out), [1, -0.5, -0.5, -1, 0.5, 0.5], atol=1e-6)
    # k = 2: [1, 0] -> 1, -1 ; [0, 1] -> -1, 1 ; [2, 2] -> 0, 0.
    np.testing.assert_allclose(np.asarray(rloo(SEQ, 2)), [1, -1, -1, 1, 0, 0], atol=1e-6)
    # k = 1: no other sample, baseline 0.
    np.testing.assert_array_equal(np.asarray(rloo(SEQ, 1)), SEQ)


def test_dr_grpo_hand_values():
    # r - group mean: [1, 0, 0] - 1/3 ; [1, 2, 2] - 5/3.
    out = jax.jit(lambda r: dr_grpo(r, 3))(SEQ)
    np.testing.assert_allclose(np.asarray(out), [2 / 3, -1 / 3, -1 / 3, -2 / 3, 1 / 3, 1 / 3],
                               rtol=1e-5)


def test_group_size_must_divide_batch():
    for fn in (grpo, rloo, dr_grpo):
        with pytest.raises(ValueError, match="group_size=4"):
            fn(SEQ, 4)


def test_broadcast_to_tokens():
    mask = np.array([[0, 1, 1, 0], [1, 0, 0, 0]], bool)
    out = broadcast_to_tokens(np.array([2.0, -1.0], np.float32), mask)
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out), [[0, 2, 2, 0], [-1, 0, 0, 0]])


def test_reinforce_pp_hand_values():
    # gamma 0.5; padding (99) is skipped, including the hole at row 1, t=1.
    rewards = np.array([[1, 0, 2, 99], [0, 99, 4, 99]], np.float32)
    mask = np.array([[1, 1, 1, 0], [1, 0, 1, 0]], bool)
    # Row 0: G2 = 2, G1 = 0 + 0.5*2 = 1, G0 = 1 + 0.5*1 = 1.5.
    # Row 1: G2 = 4, G0 = 0 + 0.5*4 = 2.
    # Returns [1.5, 1, 2 | 2, 4]: mean 2.1, deviations -0.6, -1.1, -0.1, -0.1, 1.9,
    # var (0.36 + 1.21 + 0.01 + 0.01 + 3.61) / 5 = 1.04.
    out = jax.jit(lambda r, m: reinforce_pp(r, m, gamma=0.5))(rewards, mask)
    std = np.sqrt(1.04 + 1e-8)
    np.testing.assert_allclose(np.asarray(out), np.array([[-0.6, -1.1, -0.1, 0], [-0.1, 0, 1.9, 0]]) / std,
                               rtol=1e-5, atol=1e-6)
    # All returns equal: 0, not NaN.
    flat = reinforce_pp(np.array([[0, 0, 1]], np.float32), np.array([[0, 0, 1]], bool))
    np.testing.assert_array_equal(np.asarray(flat), [[0, 0, 0]])


def test_token_steps():
    step_mask = np.array([[1, 1, 0], [0, 0, 0], [1, 1, 1]], bool)
    step_ends = np.array([[1, 3, 0], [0, 0, 0], [0, 0, 4]], np.int32)  # row 2: a tie at 0
    out = np.asarray(token_steps(step_mask, step_ends, 6))
    # Row 0: positions 0-1 step 0, 2-3 step 1, tail 4-5 step 1. Row 1: no step.
    # Row 2: position 0 -> step 0 (the tied step 1 holds nothing), 1-4 step 2, tail 5 step 2.
    np.testing.assert_array_equal(out, [[0, 0, 1, 1, 1, 1], [-1] * 6, [0, 2, 2, 2, 2, 2]])


def grpo_process_inputs():
    # B = 4, k = 2, S = 3, T = 6; NaN in the invalid step slots must not leak.
    nan = np.nan
    step_rewards = np.array([[1, 0, nan], [0, nan, nan], [2, 4, nan], [nan, nan, nan]], np.float32)
    step_mask = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 0], [0, 0, 0]], bool)
    step_ends = np.array([[1, 3, 0], [2, 0, 0], [0, 3, 0], [0, 0, 0]], np.int32)
    response_mask = np.array([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0],
                              [1, 1, 0, 0, 0, 0]], bool)
    return step_rewards, step_mask, step_ends, response_mask


def test_grpo_process_hand_values():
    step_rewards, step_mask, step_ends, response_mask = grpo_process_inputs()
    out = jax.jit(lambda *a: grpo_process(*a, 2))(step_rewards, step_mask, step_ends, response_mask)
    assert out.dtype == jnp.float32 and out.shape == (4, 6)
    # Group 0 steps {1, 0, 0}: mean 1/3, std sqrt(2)/3 -> normalised sqrt(2), -1/sqrt(2), -1/sqrt(2).
    #   Row 0: step 0 (tokens 0-1) sums its own and the later step: sqrt(2) - 1/sqrt(2) = 1/sqrt(2);
    #          step 1 (tokens 2-3, and the tail token 4) -1/sqrt(2); token 5 is padding.
    #   Row 1: one step, tokens 0-2: -1/sqrt(2).
    # Group 1 steps {2, 4}: mean 3, std 1 -> -1, 1 (over 1 + 1e-6).
    #   Row 2: step 0 (token 0): -1 + 1 = 0 ; step 1 (tokens 1-3): 1.
    #   Row 3: no valid step: 0 on its tokens.
    h = 1 / S2
    expected = np.array([[h, h, -h, -h, -h, 0], [-h, -h, -h, 0, 0, 0], [0, 1, 1, 1, 0, 0],
                         [0, 0, 0, 0, 0, 0]])
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-6)


def python_grpo_process(step_rewards, step_mask, step_ends, response_mask, k, eps):
    """Reference: DeepSeekMath 4.1.3 with loops (tokens after the last end join the last step)."""
    out = np.zeros(response_mask.shape)
    for g in range(0, len(step_rewards), k):
        rows = range(g, g + k)
        pool = [step_rewards[b, j] for b in rows for j in range(step_mask.shape[1]) if step_mask[b, j]]
        mean, std = np.mean(pool) if pool else 0.0, np.std(pool) if pool else 0.0
        for b in rows:
            steps = [j for j in range(step_mask.shape[1]) if step_mask[b, j]]
            if not steps:
                continue
            normed = {j: (step_rewards[b, j] - mean) / (std + eps) for j in steps}
            ends = {j: step_ends[b, j] for j in steps}
            ends[steps[-1]] = max(ends[steps[-1]], response_mask.shape[1])
            for t in range(response_mask.shape[1]):
                if response_mask[b, t]:
                    out[b, t] = sum(normed[j] for j in steps if ends[j] >= t)
    return out


def test_grpo_process_matches_python_reference():
    rng = np.random.default_rng(0)
    batch, slots, time, k = 6, 4, 10, 3
    step_rewards = rng.normal(size=(batch, slots)).astype(np.float32)
    counts = np.array([3, 1, 0, 4, 2, 2])
    step_mask = np.arange(slots)[None] < counts[:, None]
    step_ends = np.sort(rng.integers(0, time, size=(batch, slots)), axis=1).astype(np.int32)
    response_mask = np.zeros((batch, time), bool)
    for b in range(batch):
        response_mask[b, rng.integers(0, 2):rng.integers(6, time + 1)] = True
    out = grpo_process(step_rewards, step_mask, step_ends, response_mask, k, 1e-6)
    ref = python_grpo_process(step_rewards, step_mask, step_ends, response_mask, k, 1e-6)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)


def test_grpo_process_degenerate_groups_no_nan():
    # One step in the whole group, and k = 1 with one step: std 0 -> 0.
    out = grpo_process(np.array([[0.5, 0.0]], np.float32), np.array([[1, 0]], bool),
                       np.array([[2, 0]], np.int32), np.ones((1, 4), bool), 1)
    np.testing.assert_array_equal(np.asarray(out), np.zeros((1, 4)))


def test_grpo_process_response_starts_shift_step_ends():
    step_rewards, step_mask, step_ends, response_mask = grpo_process_inputs()
    shifted_mask = np.concatenate([np.zeros((4, 3), bool), response_mask], axis=1)  # 3 prompt tokens
    out = grpo_process(step_rewards, step_mask, step_ends, shifted_mask, 2,
                       response_starts=np.full((4,), 3, np.int32))
    ref = grpo_process(step_rewards, step_mask, step_ends, response_mask, 2)
    np.testing.assert_array_equal(np.asarray(out)[:, 3:], np.asarray(ref))
    assert (np.asarray(out)[:, :3] == 0).all()


def test_step_rewards_from_tokens_attribution():
    # T = 8, 2 prompt tokens then 6 response tokens (t = 2..7). Response-relative step ends
    # [1, 3] -> time indices 3, 5; tokens 6-7 are the tail of step 1. Token rewards: k1 KL
    # -0.1 on every response token, step rewards 0.5 at t=3 and 0.25 at t=5, success 1 at
    # t=7, and garbage 99 on the prompt (off the mask: ignored).
    rewards = np.array([[99, 99, -0.1, 0.4, -0.1, 0.15, -0.1, 0.9]], np.float32)
    mask = np.array([[0, 0, 1, 1, 1, 1, 1, 1]], bool)
    step_mask = np.array([[1, 1, 0]], bool)
    step_ends = np.array([[1, 3, 0]], np.int32)
    out, valid, ends = step_rewards_from_tokens(rewards, mask, step_mask, step_ends,
                                                response_starts=np.array([2]))
    # Step 0 = tokens 2-3: -0.1 + 0.4 = 0.3 ; step 1 = tokens 4-7: -0.1 + 0.15 - 0.1 + 0.9 = 0.85.
    np.testing.assert_allclose(np.asarray(out), [[0.3, 0.85, 0]], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out).sum(), 1.15, rtol=1e-6)  # = the sequence reward
    np.testing.assert_array_equal(np.asarray(valid), step_mask)
    np.testing.assert_array_equal(np.asarray(ends)[0, :2], [3, 5])
    # No valid step: one step in slot 0 holds the whole response. Empty row: no step.
    lone, lone_valid, lone_ends = step_rewards_from_tokens(
        np.tile(rewards, (2, 1)), np.stack([mask[0], np.zeros(8, bool)]), np.zeros((2, 3), bool),
        np.zeros((2, 3), np.int32))
    np.testing.assert_allclose(np.asarray(lone), [[1.15, 0, 0], [0, 0, 0]], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(lone_valid), [[1, 0, 0], [0, 0, 0]])
    assert int(lone_ends[0, 0]) == 7


def shaped_batch():
    """4 responses to 2 prompts (k = 2), prm_dense + success, the KL folded in, 2 prompt tokens."""
    rng = np.random.default_rng(1)
    batch, slots, time, start = 4, 3, 10, 2
    step_scores = rng.uniform(size=(batch, slots)).astype(np.float32)
    step_mask = np.array([[1, 1, 0], [1, 1, 1], [1, 0, 0], [0, 0, 0]], bool)
    step_ends = np.array([[2, 4, 0], [1, 3, 5], [6, 0, 0], [0, 0, 0]], np.int32)
    lengths = np.array([7, 8, 7, 5], np.int32)
    success = np.array([1, 0, 1, 1], np.float32)
    starts = np.full((batch,), start, np.int32)
    rewards = shape_rewards("prm_dense", step_scores, step_mask, step_ends, lengths, success,
                            time=time, response_starts=starts)
    mask = (np.arange(time)[None] >= start) & (np.arange(time)[None] < start + lengths[:, None])
    kl = rng.normal(0, 0.1, size=(batch, time)).astype(np.float32)
    rewards = np.where(mask, np.asarray(rewards) - 0.05 * kl, 0.0).astype(np.float32)
    return rewards, mask, step_mask, step_ends, starts


@pytest.mark.parametrize("name,fn", [("grpo", lambda r: grpo(r, 2, 1e-6)),
                                     ("rloo", lambda r: rloo(r, 2)),
                                     ("dr_grpo", lambda r: dr_grpo(r, 2))])
def test_token_advantages_sequence_estimators(name, fn):
    rewards, mask, *_ = shaped_batch()
    garbage = np.where(mask, rewards, 50.0).astype(np.float32)  # off-mask rewards are ignored
    out = jax.jit(functools.partial(token_advantages, name, group_size=2))(garbage, mask)
    seq = rewards.sum(-1)  # process + success - KL, summed over the response
    np.testing.assert_allclose(np.asarray(out), np.asarray(broadcast_to_tokens(fn(seq), mask)),
                               rtol=1e-6, atol=1e-6)


def test_token_advantages_reinforce_pp_and_grpo_process():
    rewards, mask, step_mask, step_ends, starts = shaped_batch()
    out = token_advantages("reinforce_pp", rewards, mask, gamma=0.9)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(reinforce_pp(rewards, mask, 0.9)))
    run = jax.jit(functools.partial(token_advantages, "grpo_process", group_size=2))
    out = run(rewards, mask, step_mask=step_mask, step_ends=step_ends, response_starts=starts)
    steps, valid, ends = step_rewards_from_tokens(rewards, mask, step_mask, step_ends,
                                                  response_starts=starts)
    # Every token reward is attributed: the step rewards of a row sum to its sequence reward.
    np.testing.assert_allclose(np.asarray(steps).sum(-1), rewards.sum(-1), rtol=1e-5, atol=1e-6)
    assert bool(valid[3, 0])  # row 3 had no step: one step over its whole response
    ref = python_grpo_process(np.asarray(steps), np.asarray(valid), np.asarray(ends), mask, 2, 1e-6)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)
    assert np.isfinite(np.asarray(out)).all() and (np.asarray(out)[~mask] == 0).all()
    with pytest.raises(ValueError, match="step_mask"):
        token_advantages("grpo_process", rewards, mask, group_size=2)


def test_registry():
    assert set(ESTIMATORS) == {"gae", "grpo", "rloo", "dr_grpo", "reinforce_pp", "grpo_process"}
    assert needs_critic("gae") and not any(needs_critic(n) for n in ESTIMATORS if n != "gae")
    assert ESTIMATORS["dr_grpo"].loss_aggregation == "seq_mean_token_sum_norm"
    with pytest.raises(ValueError, match="unknown estimator"):
        needs_critic("ppo")
    with pytest.raises(ValueError, match="needs a critic"):
        token_advantages("gae", np.zeros((2, 3), np.float32), np.ones((2, 3), bool))


def test_masked_var_axis():
    x = np.array([[1.0, 3.0, np.nan], [2.0, 2.0, 5.0]], np.float32)
    mask = np.array([[1, 1, 0], [0, 0, 0]], bool)
    # Row 0: mean 2, var 1 ; row 1: nothing valid -> 0.
    np.testing.assert_array_equal(np.asarray(masked_var(x, mask, axis=-1)), [1.0, 0.0])
    np.testing.assert_array_equal(np.asarray(masked_mean(x, mask, axis=-1)), [2.0, 0.0])
    assert float(masked_var(x, mask)) == 1.0


def test_aggregate_token_loss_hand_values():
    loss = np.array([[1, 2, 3, 9], [4, 9, 9, 9], [9, 9, 9, 9]], np.float32)
    mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], bool)
    # token mean: (1 + 2 + 3 + 4) / 4 ; sequence mean over the 2 non-empty rows: (2 + 4) / 2 ;
    # token sum over B * L: 10 / (3 * 4), or 10 / (3 * 5) with norm_length 5.
    assert float(aggregate_token_loss(loss, mask)) == 2.5
    assert float(aggregate_token_loss(loss, mask, "seq_mean_token_mean")) == 3.0
    np.testing.assert_allclose(float(aggregate_token_loss(loss, mask, "seq_mean_token_sum_norm")),
                               10 / 12, rtol=1e-6)
    np.testing.assert_allclose(
        float(aggregate_token_loss(loss, mask, "seq_mean_token_sum_norm", norm_length=5)), 10 / 15,
        rtol=1e-6)
    with pytest.raises(ValueError, match="unknown aggregation"):
        aggregate_token_loss(loss, mask, "sum")


def test_policy_loss_aggregation():
    rng = np.random.default_rng(2)
    logp, old, adv = (rng.normal(size=(3, 5)).astype(np.float32) for _ in range(3))
    mask = rng.uniform(size=(3, 5)) < 0.7
    ratio = np.exp(logp.astype(np.float64) - old)
    per_token = np.maximum(-adv * ratio, -adv * np.clip(ratio, 0.8, 1.2))
    loss, _ = policy_loss(logp, old, adv, mask, aggregation="seq_mean_token_sum_norm", norm_length=10)
    np.testing.assert_allclose(float(loss), per_token[mask].sum() / 30, rtol=1e-5)
    default, _ = policy_loss(logp, old, adv, mask)
    explicit, _ = policy_loss(logp, old, adv, mask, aggregation="token_mean")
    assert float(default) == float(explicit)
    np.testing.assert_allclose(float(default), per_token[mask].mean(), rtol=1e-5)
