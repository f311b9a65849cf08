"""Reward-model losses: per-step binary cross-entropy and Bradley-Terry.

    loss, metrics = batch_loss(model, params, batch, "bce", lm_weight=10.0)
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxstep.rewards import scoring
LOSSES = ("bce", "bt")


def bce_loss(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> tuple[jax.Array, dict]:
    """Mean binary cross-entropy over masked targets (soft labels allowed).

    Args:
      logits: `[...]` float head logits; labels: `[...]` in [0, 1]; mask: `[...]` bool.

    Returns:
      (loss, {"accuracy": sign agreement with label >= 0.5, "targets": count}).
    """
    logits = logits.astype(jnp.float32)
    labels = labels.astype(jnp.float32)
    weights = mask.astype(jnp.float32)
    count = jnp.maximum(weights.sum(), 1.0)
    losses = optax.sigmoid_binary_cross_entropy(logits, labels)
    hits = ((logits > 0) == (labels >= 0.5)).astype(jnp.float32)
    return (losses * weights).sum() / count, {"accuracy": (hits * weights).sum() / count,
                                              "targets": weights.sum()}


def bt_loss(chosen: jax.Array, rejected: jax.Array, mask: jax.Array) -> tuple[jax.Array, dict]:
    """Bradley-Terry loss `-log sigmoid(r_chosen - r_rejected)`, mean over masked pairs.

    Returns (loss, {"accuracy": fraction with r_chosen > r_rejected, "targets": count}).
    """
    margin = chosen.astype(jnp.float32) - rejected.astype(jnp.float32)
    weights = mask.astype(jnp.float32)
    count = jnp.maximum(weights.sum(), 1.0)
    losses = -jax.nn.log_sigmoid(margin)
    return (losses * weights).sum() / count, {"accuracy": ((margin > 0) * weights).sum() / count,
                                              "targets": weights.sum()}


def batch_loss(model, params: dict, batch: dict, loss: str, lm_weight: float = 0.0) -> tuple[jax.Array, dict]:
    """The training loss of one batch (`encode_labeled` for "bce", `encode_pairs` for "bt").

    `lm_weight` > 0 (bce, likelihood feature) adds the backbone's next-token loss on the
    tokens of correct steps (`lm_mask`): the joint objective of Cobbe et al. (2021).
    """

    ids, mask = batch["ids"], batch["mask"]
    if loss == "bt":  # [B, 2, T] -> [2B, T]: chosen and rejected rows interleaved
        ids, mask = ids.reshape(-1, ids.shape[-1]), mask.reshape(-1, mask.shape[-1])
    if loss == "bce" and lm_weight > 0:
        logits, token_lp = model.apply({"params": params}, ids, attention_mask=mask, return_token_logprobs=True)
        picked = scoring.gather_steps(logits, batch["step_ends"], batch["step_mask"])
        value, aux = bce_loss(picked, batch["labels"], batch["label_mask"])
        weights = batch["lm_mask"].astype(jnp.float32)
        lm = -(token_lp * weights).sum() / jnp.maximum(weights.sum(), 1.0)
        return value + lm_weight * lm, {**aux, "bce": value, "lm_loss": lm}
    ends, ends_mask = batch.get("step_ends"), batch.get("step_mask")
    if loss == "bt" and ends is not None:  # pairs with their steps (`encode_pairs(with_steps=True)`)
        ends, ends_mask = ends.reshape(-1, ends.shape[-1]), ends_mask.reshape(-1, ends_mask.shape[-1])
    # Step ends reach only a model that declares `needs_step_ends` (block-causal DeBERTa PRM).
    logits = scoring.position_logits(model, params, ids, mask, step_ends=ends, step_mask=ends_mask)
    if loss == "bce":
        picked = scoring.gather_steps(logits, batch["step_ends"], batch["step_mask"])
        return bce_loss(picked, batch["labels"], batch["label_mask"])
    if loss == "bt":
        scores = jnp.take_along_axis(logits, batch["target"].reshape(-1, 1), axis=1).reshape(-1, 2)
        return bt_loss(scores[:, 0], scores[:, 1], batch["pair_mask"])
    raise ValueError(f"unknown reward-model loss {loss!r}; expected one of {LOSSES}")
