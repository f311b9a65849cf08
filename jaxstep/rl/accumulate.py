"""Gradient accumulation inside the PPO update (`PPOConfig.microbatch_size`).

A minibatch of `M` rows is split into `n = M / microbatch_size` microbatches (row i goes
to microbatch `i % n`, so each keeps the minibatch's split over the data axes) and a
`lax.scan` sums their gradients in float32: one optimizer step per minibatch, as
without accumulation.

Exactness: every term of the PPO losses is a sum over the minibatch's tokens (or rows)
divided by a minibatch-wide count. A microbatch's own loss divides by ITS count, so its
term is re-weighted by `its count / the minibatch's count` (`microbatch_weights`):

  token      token means (token_mean policy loss, entropy, k3 KL loss, value loss and
             every metric): `sum_j (tokens_j / tokens) * mean_j = sum / tokens`.
  row        seq_mean_token_mean (GRPO): the mean over rows with a valid token of the
             row's token mean: weight `valid rows_j / valid rows`.
  rows       seq_mean_token_sum_norm (Dr. GRPO): `sum / (rows * L)`: weight `m / M`.

The weighted sum of the microbatch gradients is then the full-minibatch gradient up to
float rounding (tests/test_ppo_microbatch.py), and the weighted metrics the full
minibatch's. Advantages are computed on the whole rollout before any of this, so the
critic-free estimators (`jaxstep.rl.advantages`) are untouched.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

# Which minibatch-wide count each aggregation of the policy loss divides by.
_POLICY_WEIGHT = {"token_mean": "token", "seq_mean_token_mean": "row",
                  "seq_mean_token_sum_norm": "rows"}


def split_microbatches(tree: dict, microbatch_size: int) -> dict:
    """`[M, ...]` leaves -> `[M / microbatch_size, microbatch_size, ...]`, microbatch j
    holding rows j, j + n, j + 2n, ... (n = M / microbatch_size)."""
    rows = jax.tree_util.tree_leaves(tree)[0].shape[0]
    if rows % microbatch_size:
        raise ValueError(f"ppo update: microbatch_size {microbatch_size} does not divide the "
                         f"minibatch of {rows} rows")
    n = rows // microbatch_size
    return jax.tree_util.tree_map(
        lambda x: x.reshape(microbatch_size, n, *x.shape[1:]).swapaxes(0, 1), tree)


def mask_counts(mask: jnp.ndarray) -> dict:
    """The counts the loss normalisations divide by, of a `[rows, time]` response mask:
    `token` (valid tokens), `row` (rows with a valid token), `rows` (all rows); float32."""
    valid = jnp.asarray(mask).astype(bool)
    return {"token": valid.sum().astype(jnp.float32),
            "row": valid.any(-1).sum().astype(jnp.float32),
            "rows": jnp.float32(valid.shape[0])}


def microbatch_weights(micro_mask: jnp.ndarray, totals: dict) -> dict:
    """`{kind: microbatch count / max(minibatch count, 1)}` (see the module docstring);
    e.g. a microbatch with 3 of the minibatch's 12 valid tokens weighs 0.25 as `token`."""
    own = mask_counts(micro_mask)
    return {k: own[k] / jnp.maximum(totals[k], 1.0) for k in own}


def policy_metric_kinds(aggregation: str) -> dict:
    """`metric_kinds` of the policy objective: `policy_loss` by its aggregation's count."""
    return {"policy_loss": _POLICY_WEIGHT[aggregation]}


def policy_weighted_loss(metrics: dict, weights: dict, *, aggregation: str, ent_coef: float,
                         kl_loss_coef: float) -> jnp.ndarray:
    """A microbatch's share of the policy loss, from the terms `policy_objective` reports
    (`policy_loss`, `entropy`, `kl_loss`): `w_pg pg - ent_coef w_tok ent + kl w_tok k3`."""
    loss = weights[_POLICY_WEIGHT[aggregation]] * metrics["policy_loss"]
    if ent_coef > 0:
        loss = loss - ent_coef * weights["token"] * metrics["entropy"]
    if kl_loss_coef > 0:
        loss = loss + kl_loss_coef * weights["token"] * metrics["kl_loss"]
    return loss


def value_and_grad(objective: Callable, weighted_loss: Callable, params, batch: dict,
                   microbatch_size: int, *, metric_kinds: dict | None = None,
                   constrain: Callable = lambda tree: tree):
    """`((loss, metrics), grads)` of a minibatch, as `jax.value_and_grad(objective,
    has_aux=True)(params, batch)`, accumulated over microbatches.

    Args:
      objective: `(params, micro) -> (loss, metrics)` on one microbatch (its own means).
      weighted_loss: `(metrics, weights) -> scalar`, the microbatch's share of the
        minibatch loss (`policy_weighted_loss`; the critic: `weights["token"] * loss`).
      batch: the minibatch, leaves `[M, ...]`, with a `response_mask`.
      metric_kinds: metric name -> weight kind (default `token`) used to average it.
      constrain: applied to the `[n, m, ...]` microbatches (keeps rows on the data axes).
    """
    metric_kinds = metric_kinds or {}
    totals = mask_counts(batch["response_mask"])
    micro = constrain(split_microbatches(batch, microbatch_size))

    def loss_fn(p, mb, weights):
        _, metrics = objective(p, mb)
        return weighted_loss(metrics, weights), metrics

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    zeros = jax.tree_util.tree_map(lambda p: jnp.zeros(p.shape, jnp.float32), params)

    def body(grad_sum, mb):
        weights = microbatch_weights(mb["response_mask"], totals)
        (loss, metrics), grads = grad_fn(params, mb, weights)
        grad_sum = jax.tree_util.tree_map(lambda s, g: s + g.astype(jnp.float32), grad_sum, grads)
        shares = {k: weights[metric_kinds.get(k, "token")] * v for k, v in metrics.items()}
        return grad_sum, (loss, shares)

    grad_sum, (losses, shares) = jax.lax.scan(body, zeros, micro)
    grads = jax.tree_util.tree_map(lambda g, p: g.astype(p.dtype), grad_sum, params)
    metrics = {k: v.sum(0) for k, v in shares.items()}
    return (losses.sum(), metrics), grads
