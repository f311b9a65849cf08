"""The PPO update's first stage: a rollout batch -> token rewards (KL penalty folded in
or not) -> advantages, with the critic's values (GAE) or without a critic
(`jaxstep.rl.advantages.token_advantages`). Jitted as part of `jaxstep.rl.update`.

Batch keys and the token convention as in `jaxstep.rl.update`; `cfg` is a
`jaxstep.rl.update.PPOConfig`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import jax.numpy as jnp

from jaxstep.rl import advantages as advantages_lib
from jaxstep.rl import losses
from jaxstep.rl.gae import gae, masked_mean, whiten

if TYPE_CHECKING:  # the update imports this module
    from jaxstep.rl.update import PPOConfig


def shaped_token_rewards(batch: dict, kl_coef, cfg: PPOConfig):
    """Rollout batch -> (scores, rewards, seq_kl, metrics), all `[batch, time]` but
    `seq_kl` `[batch]` (the per-sequence summed k1 KL; zeros without ref_logprobs).

    scores: the token rewards on the response mask (0 elsewhere). rewards: the scores,
    optionally scaled by the batch std of their per-sequence sums (no scaling when there
    is no spread), then `- kl_coef * k1` on the response tokens when `cfg.kl_in_reward`
    and the batch has `ref_logprobs` (`losses.kl_penalty_rewards` with `old_logprobs`).
    metrics: `kl` (with ref_logprobs).
    """
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
            rewards = losses.kl_penalty_rewards(rewards, batch["old_logprobs"],
                                                batch["ref_logprobs"], valid, kl_coef)
    return scores, rewards, seq_kl, metrics


def compute_advantages(batch: dict, kl_coef, cfg: PPOConfig):
    """Rollout batch -> (advantages, returns, seq_kl, metrics), the update's first stage
    with a critic: `shaped_token_rewards` -> GAE -> whitening (if on)."""
    mask = batch["response_mask"].astype(jnp.float32)
    scores, rewards, seq_kl, metrics = shaped_token_rewards(batch, kl_coef, cfg)
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


def critic_free_advantages(batch: dict, kl_coef, cfg: PPOConfig):
    """Rollout batch -> (advantages `[batch, time]`, seq_kl `[batch]`, metrics), the
    first stage without a critic: `shaped_token_rewards` ->
    `advantages.token_advantages(cfg.advantage, ...)` (group_size, gamma; for
    grpo_process the batch's `step_mask` / `step_ends` on the time axis). Not whitened
    (the estimators' advantages are final)."""
    mask = batch["response_mask"].astype(jnp.float32)
    scores, rewards, seq_kl, metrics = shaped_token_rewards(batch, kl_coef, cfg)
    steps = {}
    if cfg.advantage == "grpo_process":
        steps = {"step_mask": batch["step_mask"], "step_ends": batch["step_ends"]}
    advantages = advantages_lib.token_advantages(cfg.advantage, rewards, mask, group_size=cfg.group_size,
                                                 gamma=cfg.gamma, **steps)
    metrics.update(
        score=scores.sum(-1).mean(), reward=rewards.sum(-1).mean(),
        advantage_mean=masked_mean(advantages, mask), response_length=mask.sum(-1).mean(),
        kl_coef=jnp.asarray(kl_coef, jnp.float32))
    return advantages, seq_kl, metrics
