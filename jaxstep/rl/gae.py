"""Generalised advantage estimation (reverse `lax.scan`) and masked whitening, float32.

Token convention (shared by all of `jaxstep.rl`): arrays are `[batch, time]` aligned
with the token sequence; index t refers to token t. `rewards[t]` is the reward received
after emitting token t, `values[t]` is V(state before token t), and `mask[t]` is 1 for
tokens the policy generated (the response). Masked positions are skipped as if they
were not there: they get advantage and return 0 and do not break the recursion, so
the valid tokens of a row behave like one episode that ends after its last valid token
(bootstrap value 0 there).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def gae(rewards: jnp.ndarray, values: jnp.ndarray, mask: jnp.ndarray, *, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[jnp.ndarray, jnp.ndarray]:
    """GAE(gamma, lambda) over the valid tokens of each row.

    For consecutive valid tokens t < t' (t' the next valid one, V = 0 after the last):
      delta_t = r_t + gamma * V_{t'} - V_t,   A_t = delta_t + gamma * lam * A_{t'}.

    Args:
      rewards: `[batch, time]` token rewards.
      values: `[batch, time]` value estimates.
      mask: `[batch, time]` 1/True on valid (response) tokens.

    Returns:
      advantages, returns (= advantages + values): `[batch, time]` float32, 0 off the mask.
    """
    rewards = jnp.asarray(rewards, jnp.float32)
    values = jnp.asarray(values, jnp.float32)
    valid = jnp.asarray(mask).astype(bool)

    def step(carry, xs):
        next_value, next_adv = carry
        reward, value, ok = xs
        delta = reward + gamma * next_value - value
        adv = delta + gamma * lam * next_adv
        carry = (jnp.where(ok, value, next_value), jnp.where(ok, adv, next_adv))
        return carry, jnp.where(ok, adv, 0.0)

    zeros = jnp.zeros(rewards.shape[:1], jnp.float32)
    _, adv_t = jax.lax.scan(step, (zeros, zeros), (rewards.T, values.T, valid.T), reverse=True)
    advantages = adv_t.T
    returns = jnp.where(valid, advantages + values, 0.0)
    return advantages, returns


def masked_mean(x: jnp.ndarray, mask: jnp.ndarray, axis=None) -> jnp.ndarray:
    """Mean of `x` over positions where `mask` is set (0 when none), float32."""
    valid = jnp.asarray(mask).astype(bool)
    # where, not multiply: a NaN/inf off the mask (padding) must not leak in.
    total = jnp.sum(jnp.where(valid, jnp.asarray(x, jnp.float32), 0.0), axis=axis)
    return total / jnp.maximum(jnp.sum(valid.astype(jnp.float32), axis=axis), 1.0)


def masked_var(x: jnp.ndarray, mask: jnp.ndarray, axis=None) -> jnp.ndarray:
    """Population variance of `x` over the masked positions (0 when none), float32.

    A scalar with `axis=None`; otherwise reduced over `axis` (an int), like `masked_mean`.
    """
    if axis is None:
        mean = masked_mean(x, mask)
    else:
        mean = jnp.expand_dims(masked_mean(x, mask, axis=axis), axis)
    return masked_mean(jnp.square(jnp.asarray(x, jnp.float32) - mean), mask, axis=axis)


def whiten(x: jnp.ndarray, mask: jnp.ndarray, *, shift_mean: bool = True,
           eps: float = 1e-8) -> jnp.ndarray:
    """Normalises `x` to zero mean, unit variance over the masked positions; 0 elsewhere.

    With `shift_mean=False` only the scale changes (the mean is added back).
    """
    x = jnp.asarray(x, jnp.float32)
    mean = masked_mean(x, mask)
    out = (x - mean) * jax.lax.rsqrt(masked_var(x, mask) + eps)
    if not shift_mean:
        out = out + mean
    return jnp.where(jnp.asarray(mask).astype(bool), out, 0.0)
