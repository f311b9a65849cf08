"""PPO losses and KL estimators, float32, over `[batch, time]` token arrays with a mask.

Token convention as in `jaxstep.rl.gae`: index t refers to token t, `mask` is 1 on the
response tokens the policy generated. Every mean here is a masked token mean over the
whole array (each valid token weighs the same), except that `policy_loss` can reduce
its per-token loss another way (`aggregate_token_loss`, e.g. Dr. GRPO's token sum over
a constant).
"""
from __future__ import annotations

import jax.numpy as jnp

from jaxstep.rl.gae import masked_mean


def _f32(x):
    return jnp.asarray(x, jnp.float32)


def kl_k1(logprobs: jnp.ndarray, ref_logprobs: jnp.ndarray) -> jnp.ndarray:
    """k1 estimator of KL(pi || ref) per token: `logp - ref_logp`, `[batch, time]`.

    Unbiased but can be negative; used as the per-token reward penalty
    `-beta * k1` (`kl_penalty_rewards`, which `jaxstep.rl.update.compute_advantages`
    applies when `PPOConfig.kl_in_reward` is set) and for the `kl` metric.
    """
    return _f32(logprobs) - _f32(ref_logprobs)


def kl_k3(logprobs: jnp.ndarray, ref_logprobs: jnp.ndarray) -> jnp.ndarray:
    """k3 estimator of KL(pi || ref) per token: `exp(r) - r - 1` with `r = ref_logp - logp`.

    Unbiased under samples from pi and always >= 0; used as a loss term (`kl_loss`,
    weighted by `PPOConfig.kl_loss_coef` in the update).
    """
    log_ratio = _f32(ref_logprobs) - _f32(logprobs)
    return jnp.exp(log_ratio) - log_ratio - 1.0


def kl_penalty_rewards(rewards, logprobs, ref_logprobs, mask, kl_coef) -> jnp.ndarray:
    """Token rewards with the k1 KL penalty: `r_t - kl_coef * (logp_t - ref_logp_t)` on the mask."""
    penalty = jnp.where(jnp.asarray(mask).astype(bool), kl_k1(logprobs, ref_logprobs), 0.0)
    return _f32(rewards) - _f32(kl_coef) * penalty


LOSS_AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")


def aggregate_token_loss(loss, mask, aggregation: str = "token_mean", *,
                         norm_length: int | None = None) -> jnp.ndarray:
    """Reduces a per-token loss `[batch, time]` to a scalar over the valid tokens.

    With `m` the mask, B the batch size and L = `norm_length` (default: `time`):
      token_mean:              sum_{b,t} m l / sum_{b,t} m  (every valid token weighs the
                               same; `masked_mean`, the PPO default).
      seq_mean_token_mean:     mean over the rows that have a valid token of
                               sum_t m l / sum_t m  (GRPO, Shao et al. 2024,
                               arXiv 2402.03300: 1/G sum_i 1/|o_i| sum_t).
      seq_mean_token_sum_norm: sum_{b,t} m l / (B * L)  (Dr. GRPO, Liu et al. 2025,
                               arXiv 2503.20783: no 1/|o_i| length normalisation, a
                               constant divisor instead). Pass the generation budget
                               (max response length) as L when `time` also spans the
                               prompt.
    """
    if aggregation == "token_mean":
        return masked_mean(loss, mask)
    valid = jnp.asarray(mask).astype(bool)
    if aggregation == "seq_mean_token_mean":
        per_seq = masked_mean(loss, valid, axis=-1)
        return masked_mean(per_seq, valid.any(-1))
    if aggregation == "seq_mean_token_sum_norm":
        batch, time = valid.shape
        length = time if norm_length is None else norm_length
        return jnp.sum(jnp.where(valid, _f32(loss), 0.0)) / jnp.float32(batch * length)
    raise ValueError(f"aggregate_token_loss: unknown aggregation {aggregation!r}; "
                     f"expected one of {LOSS_AGGREGATIONS}.")


def policy_loss(logprobs, old_logprobs, advantages, mask, *, clip_eps: float = 0.2,
                aggregation: str = "token_mean", norm_length: int | None = None):
    """PPO clipped surrogate, `mean_t max(-A ratio, -A clip(ratio, 1-eps, 1+eps))`.

    Args:
      logprobs: `[batch, time]` log pi_theta(token t), differentiable.
      old_logprobs: `[batch, time]` log pi_old(token t) from the rollout.
      advantages: `[batch, time]` (already whitened if wanted).
      mask: `[batch, time]` valid tokens.
      aggregation, norm_length: how the per-token loss becomes a scalar
        (`aggregate_token_loss`); the default is the masked token mean.

    Returns:
      (loss scalar, metrics dict with `clip_frac` and `approx_kl` = mean 0.5 (logp-old)^2;
      the metrics are masked token means whatever the aggregation).
    """
    log_ratio = _f32(logprobs) - _f32(old_logprobs)
    ratio = jnp.exp(log_ratio)
    advantages = _f32(advantages)
    unclipped = -advantages * ratio
    clipped = -advantages * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = aggregate_token_loss(jnp.maximum(unclipped, clipped), mask, aggregation,
                                norm_length=norm_length)
    metrics = {
        "clip_frac": masked_mean((clipped > unclipped).astype(jnp.float32), mask),
        "approx_kl": masked_mean(0.5 * jnp.square(log_ratio), mask),
    }
    return loss, metrics


def value_loss(values, old_values, returns, mask, *, clip_eps: float | None = 0.2):
    """Clipped value loss `0.5 mean_t max((V - R)^2, (V_clip - R)^2)`.

    `V_clip = old_V + clip(V - old_V, -eps, eps)`; `clip_eps=None` gives the plain
    `0.5 mean (V - R)^2`. All arrays `[batch, time]`.

    Returns:
      (loss scalar, metrics dict with `value_clip_frac`: the fraction of tokens whose
      loss is the clipped term).
    """
    values, old_values, returns = _f32(values), _f32(old_values), _f32(returns)
    plain = jnp.square(values - returns)
    if clip_eps is None:
        return 0.5 * masked_mean(plain, mask), {"value_clip_frac": jnp.zeros((), jnp.float32)}
    clipped_values = old_values + jnp.clip(values - old_values, -clip_eps, clip_eps)
    clipped = jnp.square(clipped_values - returns)
    loss = 0.5 * masked_mean(jnp.maximum(plain, clipped), mask)
    # Clipping is active only outside the band; inside it the two terms differ by rounding.
    active = (jnp.abs(values - old_values) > clip_eps) & (clipped > plain)
    return loss, {"value_clip_frac": masked_mean(active.astype(jnp.float32), mask)}


def entropy_bonus(entropy, mask) -> jnp.ndarray:
    """Masked mean token entropy `[batch, time] -> []`; subtract `coef *` it from the loss."""
    return masked_mean(entropy, mask)


def kl_loss(logprobs, ref_logprobs, mask) -> jnp.ndarray:
    """Masked mean k3 KL to the reference, a scalar loss term."""
    return masked_mean(kl_k3(logprobs, ref_logprobs), mask)
