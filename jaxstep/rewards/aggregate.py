"""Aggregation of per-step reward-model scores into one score per solution.

Used for the PRM-Avg/Prod/Min/Max rewards of PPO and for best-of-N reranking.
An aggregate over zero valid steps is 0 (not the empty product 1 or +-inf), so an
empty or unsplittable response never earns a process reward.
"""
from __future__ import annotations

import jax.numpy as jnp

AGGREGATIONS = ("avg", "prod", "min", "max", "last")


def aggregate(step_scores: jnp.ndarray, step_mask: jnp.ndarray, how: str) -> jnp.ndarray:
    """Aggregates step scores over the last axis.

    Args:
      step_scores: `[..., max_steps]` scores (float; cast to float32).
      step_mask: `[..., max_steps]` 1/True for valid steps. For `last`, the valid steps
        must come first (the mask is a prefix of ones); the others accept any mask.
      how: one of `avg`, `prod`, `min`, `max`, `last` (the score of the last valid step).

    Returns:
      `[...]` float32; 0 where a row has no valid step.
    """
    scores = jnp.asarray(step_scores, jnp.float32)
    mask = jnp.asarray(step_mask).astype(bool)
    num_steps = mask.sum(-1)
    has_steps = num_steps > 0
    if how == "avg":
        out = jnp.where(mask, scores, 0.0).sum(-1) / jnp.maximum(num_steps, 1)
    elif how == "prod":
        out = jnp.where(mask, scores, 1.0).prod(-1)
    elif how == "min":
        out = jnp.where(mask, scores, jnp.inf).min(-1)
    elif how == "max":
        out = jnp.where(mask, scores, -jnp.inf).max(-1)
    elif how == "last":
        last = jnp.maximum(num_steps - 1, 0)
        out = jnp.take_along_axis(scores, last[..., None], axis=-1)[..., 0]
    else:
        raise ValueError(f"aggregate: unknown aggregation {how!r}; expected one of {AGGREGATIONS}.")
    return jnp.where(has_steps, out, 0.0).astype(jnp.float32)
