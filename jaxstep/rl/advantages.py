"""Critic-free advantage estimators (group baselines, REINFORCE++, process GRPO), float32.

Token convention as in `jaxstep.rl.gae`: `[batch, time]` arrays, index t is token t,
`response_mask` is 1 on the response tokens the policy generated.

Groups: with `group_size` k, rows `i*k .. i*k+k-1` are k responses to the same prompt
(the rollout samples a prompt's responses next to each other). The batch size must be a
multiple of k; k = 1 means every row is its own group.

Estimators (`ESTIMATORS` maps each name to an `EstimatorSpec`):
  gae           the critic's GAE (`jaxstep.rl.gae.gae`, used by
                `jaxstep.rl.update.compute_advantages`); the only one that needs a critic.
  grpo          (r - group mean) / (group std + eps), per sequence.
  rloo          r_i - mean_{j != i} r_j, per sequence.
  dr_grpo       r - group mean, per sequence; its loss is a token sum over a constant
                (`jaxstep.rl.losses.aggregate_token_loss`, `seq_mean_token_sum_norm`).
  reinforce_pp  returns-to-go per token, whitened over all response tokens of the batch.
  grpo_process  step rewards normalised over the prompt's group, summed from the token's
                step on.

These advantages are final: do not whiten them again over the batch (for `dr_grpo`
that would bring back the std scaling the method removes).

From shaped token rewards (`token_advantages`)
----------------------------------------------
`jaxstep.rewards.shaping.shape_rewards` puts an ORM/aggregate reward and the success
reward on the last response token and dense/clip/delta step rewards on step-end
tokens; a k1 KL penalty (`jaxstep.rl.losses.kl_penalty_rewards`) may be folded into
every response token. Off the response mask token rewards are ignored (set to 0, as in
`compute_advantages`).

- Sequence estimators (grpo, rloo, dr_grpo): the sequence reward is the sum of the
  token rewards over the response, `sum_t mask_t r_t` (process + success - KL).
- reinforce_pp: the token rewards as they are.
- grpo_process: tokens are split into steps; step j's reward is the sum of the token
  rewards over its tokens, so a step-end reward counts for its step and every other
  token reward (the KL of each token, a success reward after the last step end) counts
  for the step that contains the token; nothing is dropped, and the step rewards of a
  row sum to its sequence reward. See `token_steps` for which tokens a step holds (the
  tail after the last valid step end belongs to the last step). A response with tokens
  but no valid step counts as one step holding the whole response. Two steps ending on
  the same token: the token's (summed) reward goes to the first of them, the later
  ones get 0 (they still count in the group's statistics).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxstep.rl.gae import gae, masked_mean, masked_var, whiten


def _f32(x):
    return jnp.asarray(x, jnp.float32)


def _groups(x: jnp.ndarray, group_size: int) -> jnp.ndarray:
    """`[batch, ...] -> [batch // k, k, ...]`, checking that k divides the batch."""
    batch = x.shape[0]
    if group_size < 1 or batch % group_size:
        raise ValueError(f"advantages: group_size={group_size} must be >= 1 and divide the "
                         f"batch size {batch} (rows i*k .. i*k+k-1 share a prompt).")
    return x.reshape(batch // group_size, group_size, *x.shape[1:])


def grpo(seq_rewards, group_size: int, eps: float = 1e-6) -> jnp.ndarray:
    """GRPO outcome advantages (Shao et al. 2024, DeepSeekMath, arXiv 2402.03300, 4.1.2).

      A_i = (r_i - mean_g r) / (std_g r + eps)

    over the k rows of row i's group g; std is the population std (divides by k; TRL
    and verl use the k - 1 version, larger by sqrt(k / (k - 1))). A group of equal
    rewards (k = 1 included) gives 0, not NaN.

    Args:
      seq_rewards: `[batch]` sequence rewards.
      group_size: k (static), responses per prompt.
      eps: added to the std.

    Returns:
      `[batch]` float32 per-sequence advantages (`broadcast_to_tokens` spreads them).
    """
    r = _groups(_f32(seq_rewards), group_size)
    mean = jnp.mean(r, axis=-1, keepdims=True)
    std = jnp.sqrt(jnp.mean(jnp.square(r - mean), axis=-1, keepdims=True))
    return ((r - mean) / (std + eps)).reshape(-1)


def rloo(seq_rewards, group_size: int) -> jnp.ndarray:
    """REINFORCE leave-one-out (Kool et al. 2019; Ahmadian et al. 2024, arXiv 2402.14740).

      A_i = r_i - 1/(k-1) sum_{j in g, j != i} r_j

    With k = 1 there is no other sample: the baseline is 0 and A_i = r_i (plain
    REINFORCE).

    Args:
      seq_rewards: `[batch]` sequence rewards.
      group_size: k (static).

    Returns:
      `[batch]` float32 per-sequence advantages.
    """
    r = _groups(_f32(seq_rewards), group_size)
    if group_size == 1:
        return r.reshape(-1)
    others = jnp.sum(r, axis=-1, keepdims=True) - r
    return (r - others / (group_size - 1)).reshape(-1)


def dr_grpo(seq_rewards, group_size: int) -> jnp.ndarray:
    """Dr. GRPO advantages (Liu et al. 2025, "Understanding R1-Zero-Like Training",
    arXiv 2503.20783): GRPO without the std division,

      A_i = r_i - mean_g r.

    The method also drops GRPO's 1/|o_i| length normalisation of the loss: reduce the
    policy loss with `jaxstep.rl.losses.aggregate_token_loss(...,
    "seq_mean_token_sum_norm", norm_length=max response length)` (the `aggregation`
    argument of `jaxstep.rl.losses.policy_loss`).

    Args:
      seq_rewards: `[batch]` sequence rewards.
      group_size: k (static).

    Returns:
      `[batch]` float32 per-sequence advantages.
    """
    r = _groups(_f32(seq_rewards), group_size)
    return (r - jnp.mean(r, axis=-1, keepdims=True)).reshape(-1)


def reinforce_pp(token_rewards, mask, gamma: float = 1.0, eps: float = 1e-8) -> jnp.ndarray:
    """REINFORCE++ advantages (Hu 2025, arXiv 2501.03262).

      G_t = sum_{t' >= t valid} gamma^(n(t, t')) r_{t'}   (returns-to-go over the valid
            tokens of the row; n counts valid tokens between, so padding is skipped)
      A_t = (G_t - mean G) / sqrt(var G + eps)            (mean/var over every response
                                                           token of the batch)

    With the KL folded into the token rewards and gamma = 1 this is the paper's
    `r(x, y) - beta sum_{i >= t} KL_i`, normalised over the global batch. Computed as
    `jaxstep.rl.gae.gae` with zero values and lambda = 1, then `jaxstep.rl.gae.whiten`.

    Args:
      token_rewards: `[batch, time]` token rewards.
      mask: `[batch, time]` response tokens.
      gamma: discount.
      eps: added to the variance.

    Returns:
      `[batch, time]` float32, 0 off the mask (0 everywhere when all returns are equal).
    """
    rewards = _f32(token_rewards)
    returns, _ = gae(rewards, jnp.zeros_like(rewards), mask, gamma=gamma, lam=1.0)
    return whiten(returns, mask, eps=eps)


def broadcast_to_tokens(seq_adv, response_mask) -> jnp.ndarray:
    """`[batch]` per-sequence advantages -> `[batch, time]` float32, A_i on row i's
    response tokens and 0 elsewhere."""
    valid = jnp.asarray(response_mask).astype(bool)
    return jnp.where(valid, _f32(seq_adv)[:, None], 0.0)


def _step_ends_on_time_axis(step_ends, response_starts):
    ends = jnp.asarray(step_ends, jnp.int32)
    if response_starts is None:
        return ends
    return ends + jnp.asarray(response_starts, jnp.int32)[:, None]


def token_steps(step_mask, step_ends, time: int) -> jnp.ndarray:
    """The step each token position belongs to, `[batch, time]` int32.

    Step j (valid steps first, ends ascending; K = the row's number of valid steps)
    holds the positions t with `end_{j-1} < t <= end_j` (`end_{-1} = -inf`); positions
    after `end_{K-1}` belong to step K-1. Rows with K = 0 get -1 (no step).

    Args:
      step_mask: `[batch, steps]` 1 on valid steps.
      step_ends: `[batch, steps]` int, index on the time axis of each step's last token.
      time: length of the time axis (static).
    """
    valid = jnp.asarray(step_mask).astype(bool)
    num_steps = valid.sum(-1).astype(jnp.int32)
    # Invalid slots sort after every position, so the count of ends < t is the step.
    ends = jnp.where(valid, jnp.asarray(step_ends, jnp.int32), jnp.iinfo(jnp.int32).max)
    positions = jnp.arange(time, dtype=jnp.int32)
    before = jax.vmap(lambda e: jnp.searchsorted(e, positions, side="left"))(ends)
    return jnp.minimum(before.astype(jnp.int32), num_steps[:, None] - 1)


def grpo_process(step_rewards, step_mask, step_ends, response_mask, group_size: int,
                 eps: float = 1e-6, *, response_starts=None) -> jnp.ndarray:
    """GRPO with process supervision (Shao et al. 2024, DeepSeekMath, arXiv 2402.03300,
    section 4.1.3).

      r~_{i,j} = (r_{i,j} - mean R_g) / (std R_g + eps)
      A_{i,t}  = sum_{j : end_{i,j} >= t} r~_{i,j}

    R_g is the set of all valid step rewards of all responses in row i's group g
    (population std; a group with one step, or equal rewards, gives 0). A token's
    advantage sums the normalised rewards of its own step and every later step; tokens
    after the last valid step end count as part of the last step (`token_steps`), and a
    row without valid steps gets 0.

    Args:
      step_rewards: `[batch, steps]` step rewards.
      step_mask: `[batch, steps]` 1 on valid steps (valid steps first, ends ascending).
      step_ends: `[batch, steps]` int index of each step's last token on the time axis
        of `response_mask`, or within the response when `response_starts` is given (the
        `jaxstep.rewards.shaping` convention).
      response_mask: `[batch, time]` response tokens.
      group_size: k (static).
      eps: added to the std.
      response_starts: `[batch]` int time index of each response's first token, or None.

    Returns:
      `[batch, time]` float32 advantages, 0 off the response mask.
    """
    valid_steps = jnp.asarray(step_mask).astype(bool)
    rewards = _f32(step_rewards)
    num_slots = rewards.shape[1]
    groups = _groups(rewards, group_size).reshape(-1, group_size * num_slots)
    group_mask = _groups(valid_steps, group_size).reshape(groups.shape)
    mean = masked_mean(groups, group_mask, axis=-1)[:, None]
    std = jnp.sqrt(masked_var(groups, group_mask, axis=-1))[:, None]
    normed = jnp.where(group_mask, (groups - mean) / (std + eps), 0.0).reshape(rewards.shape)
    # suffix[j] = sum_{j' >= j} normed[j'] (invalid slots hold 0).
    suffix = jnp.flip(jnp.cumsum(jnp.flip(normed, -1), -1), -1)
    valid_tokens = jnp.asarray(response_mask).astype(bool)
    ends = _step_ends_on_time_axis(step_ends, response_starts)
    steps = token_steps(valid_steps, ends, valid_tokens.shape[1])
    adv = jnp.take_along_axis(suffix, jnp.maximum(steps, 0), axis=-1)
    return jnp.where(valid_tokens & (steps >= 0), adv, 0.0)


def step_rewards_from_tokens(token_rewards, response_mask, step_mask, step_ends, *,
                             response_starts=None):
    """Step rewards read from shaped token rewards (the module docstring's convention).

    Step j's reward is the sum of the token rewards on the response mask over the
    positions it holds (`token_steps`); a row with response tokens but no valid step
    gets one step in slot 0 that holds the whole response.

    Args:
      token_rewards, response_mask: `[batch, time]`.
      step_mask, step_ends, response_starts: as `grpo_process`.

    Returns:
      (step_rewards `[batch, steps]` float32, step_mask `[batch, steps]` bool with those
      one-step rows added, step_ends `[batch, steps]` int32 on the time axis), ready for
      `grpo_process(..., response_starts=None)`.
    """
    valid_tokens = jnp.asarray(response_mask).astype(bool)
    batch, time = valid_tokens.shape
    valid_steps = jnp.asarray(step_mask).astype(bool)
    num_slots = valid_steps.shape[1]
    ends = _step_ends_on_time_axis(step_ends, response_starts)
    # Whole-response step for rows with tokens and no step: ends past the last token.
    lone = ~valid_steps.any(-1) & valid_tokens.any(-1)
    first_slot = jnp.arange(num_slots) == 0
    valid_steps = valid_steps | (lone[:, None] & first_slot)
    ends = jnp.where(lone[:, None] & first_slot, time - 1, ends)
    steps = token_steps(valid_steps, ends, time)
    rows = jnp.broadcast_to(jnp.arange(batch)[:, None], (batch, time))
    slot = jnp.where(valid_tokens & (steps >= 0), steps, num_slots)  # out of range: dropped
    rewards = jnp.where(valid_tokens, _f32(token_rewards), 0.0)
    out = jnp.zeros((batch, num_slots), jnp.float32).at[rows, slot].add(rewards, mode="drop")
    return out, valid_steps, ends


@dataclasses.dataclass(frozen=True)
class EstimatorSpec:
    """What an advantage estimator needs and how its paper reduces the policy loss.

    needs_critic: uses a value model (only `gae`).
    level: `token` (per-token rewards), `sequence` (one reward per response) or `step`.
    loss_aggregation: the suggested policy-loss reduction, a
      `jaxstep.rl.losses.LOSS_AGGREGATIONS` name: the one the method's paper writes
      (grpo, grpo_process: `seq_mean_token_mean`; dr_grpo: `seq_mean_token_sum_norm`),
      else the PPO default `token_mean`.
    """
    needs_critic: bool
    level: str
    loss_aggregation: str


ESTIMATORS: dict[str, EstimatorSpec] = {
    "gae": EstimatorSpec(needs_critic=True, level="token", loss_aggregation="token_mean"),
    "grpo": EstimatorSpec(needs_critic=False, level="sequence",
                          loss_aggregation="seq_mean_token_mean"),
    "rloo": EstimatorSpec(needs_critic=False, level="sequence", loss_aggregation="token_mean"),
    "dr_grpo": EstimatorSpec(needs_critic=False, level="sequence",
                             loss_aggregation="seq_mean_token_sum_norm"),
    "reinforce_pp": EstimatorSpec(needs_critic=False, level="token",
                                  loss_aggregation="token_mean"),
    "grpo_process": EstimatorSpec(needs_critic=False, level="step",
                                  loss_aggregation="seq_mean_token_mean"),
}


def _spec(name: str) -> EstimatorSpec:
    if name not in ESTIMATORS:
        raise ValueError(f"advantages: unknown estimator {name!r}; expected one of "
                         f"{sorted(ESTIMATORS)}.")
    return ESTIMATORS[name]


def needs_critic(name: str) -> bool:
    """Whether estimator `name` (a key of `ESTIMATORS`) needs a value model."""
    return _spec(name).needs_critic


def token_advantages(name: str, token_rewards, response_mask, *, group_size: int = 1,
                     gamma: float = 1.0, eps: float = 1e-6, step_mask=None, step_ends=None,
                     response_starts=None) -> jnp.ndarray:
    """`[batch, time]` advantages of a critic-free estimator from shaped token rewards.

    See the module docstring for how token rewards become sequence or step rewards.

    Args:
      name: a key of `ESTIMATORS` other than `gae` (which needs values: use
        `jaxstep.rl.update.compute_advantages`).
      token_rewards: `[batch, time]` shaped token rewards, KL penalty folded in or not.
      response_mask: `[batch, time]` response tokens.
      group_size: responses per prompt k (static; grpo, rloo, dr_grpo, grpo_process).
      gamma: discount (reinforce_pp).
      eps: added to the group std (grpo, grpo_process; reinforce_pp keeps its own).
      step_mask, step_ends: `[batch, steps]` (grpo_process only), as `grpo_process`.
      response_starts: `[batch]` (grpo_process only), as `grpo_process`.

    Returns:
      `[batch, time]` float32 advantages, 0 off the response mask.
    """
    spec = _spec(name)
    if spec.needs_critic:
        raise ValueError(f"advantages: {name!r} needs a critic; use "
                         f"jaxstep.rl.update.compute_advantages.")
    mask = jnp.asarray(response_mask).astype(bool)
    rewards = jnp.where(mask, _f32(token_rewards), 0.0)
    if name == "reinforce_pp":
        return reinforce_pp(rewards, mask, gamma)
    if name == "grpo_process":
        if step_mask is None or step_ends is None:
            raise ValueError("advantages: 'grpo_process' needs step_mask and step_ends "
                             "[batch, steps].")
        step_rewards, steps_valid, ends = step_rewards_from_tokens(
            rewards, mask, step_mask, step_ends, response_starts=response_starts)
        return grpo_process(step_rewards, steps_valid, ends, mask, group_size, eps)
    seq_rewards = rewards.sum(-1)
    if name == "grpo":
        seq_adv = grpo(seq_rewards, group_size, eps)
    elif name == "rloo":
        seq_adv = rloo(seq_rewards, group_size)
    else:
        seq_adv = dr_grpo(seq_rewards, group_size)
    return broadcast_to_tokens(seq_adv, mask)
