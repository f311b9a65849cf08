"""Scoring token sequences with a reward model (ORM or PRM); batched and jittable.

A reward model is a `jaxstep.models.ScalarModel`: the decoder backbone with a scalar
head giving one logit per position, `[batch, time]`. Scores are read at:

  * PRM: the last token of every step (`step_ends`, `[batch, max_steps]`);
  * ORM: the last real token of each sequence (the last position where `mask` is 1).

Positions are indices into the scored sequence. For a PPO rollout laid out as
`[prompt (left-padded, P tokens)] [response (right-padded)]`, pass the response-relative
step ends (`jaxstep.data.batching.batch_step_ends(responses, tok)`) with `offset=P`.

Scores are probabilities (`sigmoid(logit)`, float32, the probability that the step /
solution is correct) unless `probabilities=False` asks for the raw logits. Masked
steps score 0.

    step_scores = score_steps(model, params, ids, mask, step_ends, step_mask, offset=P)   # [B, S]
    outcome = score_outcome(model, params, ids, mask)                                     # [B]
    scores = score(model, params, "prm", ids, mask, step_ends=..., step_mask=...)

All functions are pure (model and `probabilities` are static under `jax.jit`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

KINDS = ("orm", "prm")


def position_logits(model, params: dict, ids: jax.Array, mask: jax.Array | None = None,
                    positions: jax.Array | None = None, step_ends: jax.Array | None = None,
                    step_mask: jax.Array | None = None) -> jax.Array:
    """Head logits at every position: `ids [batch, time]` -> `[batch, time]` float32.

    `params` are the ScalarModel's `{"decoder": ..., "score": ...}`; `mask` is 1 on real
    tokens (left or right padding; positions are derived from it when not given).
    `step_ends` / `step_mask` (`[batch, steps]`, absolute indices) reach the model only
    when it declares `needs_step_ends` (the block-causal DeBERTa PRM,
    `jaxstep.models.deberta_heads`); other models never see them.
    """
    extra = {}
    if getattr(model, "needs_step_ends", False) and step_ends is not None:
        extra = {"step_ends": step_ends, "step_mask": step_mask}
    out = model.apply({"params": params}, ids, attention_mask=mask, positions=positions, **extra)
    return out.astype(jnp.float32)


def gather_steps(values: jax.Array, step_ends: jax.Array, step_mask: jax.Array,
                 offset: jax.Array | int = 0) -> jax.Array:
    """`values [batch, time]` at `step_ends + offset` -> `[batch, max_steps]` float32, 0 where masked.

    `offset` is a scalar or `[batch]`; indices are clipped into `[0, time)`.
    """
    values = jnp.asarray(values, jnp.float32)
    index = jnp.asarray(step_ends, jnp.int32) + jnp.reshape(jnp.asarray(offset, jnp.int32), (-1, 1))
    index = jnp.clip(index, 0, values.shape[1] - 1)
    picked = jnp.take_along_axis(values, index, axis=1)
    return jnp.where(jnp.asarray(step_mask, bool), picked, 0.0)


def last_token_index(mask: jax.Array) -> jax.Array:
    """Index of the last position where `mask [batch, time]` is set -> `[batch]` int32 (0 if none)."""
    mask = jnp.asarray(mask, bool)
    t = jnp.arange(mask.shape[1], dtype=jnp.int32)
    return jnp.max(jnp.where(mask, t, 0), axis=1)


def gather_last(values: jax.Array, mask: jax.Array) -> jax.Array:
    """`values [batch, time]` at each row's last real token -> `[batch]` float32."""
    index = last_token_index(mask)
    return jnp.take_along_axis(jnp.asarray(values, jnp.float32), index[:, None], axis=1)[:, 0]


def _activate(logits: jax.Array, probabilities: bool) -> jax.Array:
    return jax.nn.sigmoid(logits) if probabilities else logits


def score_steps(model, params: dict, ids: jax.Array, mask: jax.Array, step_ends: jax.Array,
                step_mask: jax.Array, *, offset: jax.Array | int = 0, positions: jax.Array | None = None,
                probabilities: bool = True) -> jax.Array:
    """PRM scores of every step.

    Args:
      model, params: the reward model (`ScalarModel`) and its params.
      ids: int32 `[batch, time]` token ids; mask: `[batch, time]` 1 on real tokens.
      step_ends: int32 `[batch, max_steps]` index of each step's last token (plus `offset`).
      step_mask: `[batch, max_steps]` 1 on real steps.
      offset: scalar or `[batch]` added to `step_ends` (e.g. the prompt length P when the
        step ends are relative to the response).
      probabilities: sigmoid of the head's logits (default) or the logits themselves.

    Returns:
      `[batch, max_steps]` float32; 0 on masked steps.
    """
    absolute = jnp.asarray(step_ends, jnp.int32) + jnp.reshape(jnp.asarray(offset, jnp.int32), (-1, 1))
    logits = position_logits(model, params, ids, mask, positions, absolute, step_mask)
    scores = _activate(gather_steps(logits, step_ends, step_mask, offset), probabilities)
    return jnp.where(jnp.asarray(step_mask, bool), scores, 0.0)


def score_outcome(model, params: dict, ids: jax.Array, mask: jax.Array, *,
                  positions: jax.Array | None = None, probabilities: bool = True) -> jax.Array:
    """ORM score of each sequence at its last real token: `[batch]` float32."""
    logits = position_logits(model, params, ids, mask, positions)
    return _activate(gather_last(logits, mask), probabilities)


def score(model, params: dict, kind: str, ids: jax.Array, mask: jax.Array, *,
          step_ends: jax.Array | None = None, step_mask: jax.Array | None = None,
          offset: jax.Array | int = 0, positions: jax.Array | None = None,
          probabilities: bool = True) -> jax.Array:
    """`score_steps` (kind "prm": `[batch, max_steps]`) or `score_outcome` (kind "orm": `[batch]`)."""
    if kind == "prm":
        if step_ends is None or step_mask is None:
            raise ValueError("score(kind='prm') needs step_ends and step_mask")
        return score_steps(model, params, ids, mask, step_ends, step_mask, offset=offset,
                           positions=positions, probabilities=probabilities)
    if kind == "orm":
        return score_outcome(model, params, ids, mask, positions=positions, probabilities=probabilities)
    raise ValueError(f"unknown reward-model kind {kind!r}; expected one of {KINDS}")
