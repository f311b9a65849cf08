"""Optimizers and learning-rate schedules of the training stages (optax).

SFT and reward models: AdamW with linear warmup and cosine decay (`make_optimizer`).
PPO: Adam with linear warmup, then constant or a linear decay, counted in iterations
(`ppo_optimizer`).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


def learning_rate_schedule(sft_config) -> optax.Schedule:
    """Linear warmup to `learning_rate`, cosine decay to `learning_rate * end_lr_ratio`.

    `sft_config`: the `sft` section, or a dict with the same fields.
    """
    s = sft_config
    warmup = min(s["warmup_steps"], max(s["steps"] - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=s["learning_rate"], warmup_steps=warmup,
        decay_steps=max(s["steps"], warmup + 1), end_value=s["learning_rate"] * s["end_lr_ratio"])


def _decay_mask(params):
    """Weight decay on matrices (kernels, embeddings) only, not on norms and biases."""
    return jax.tree.map(lambda x: x.ndim >= 2, params)


def make_optimizer(sft_config) -> optax.GradientTransformation:
    """AdamW (decoupled weight decay) on the schedule, after global-norm clipping."""
    s = sft_config
    parts = []
    if s["grad_clip"] > 0:
        parts.append(optax.clip_by_global_norm(s["grad_clip"]))
    parts.append(optax.adamw(learning_rate_schedule(s), b1=s["b1"], b2=s["b2"],
                             weight_decay=s["weight_decay"], mask=_decay_mask))
    return optax.chain(*parts)


def ppo_schedule(learning_rate: float, p, *, frozen_iterations: int = 0) -> optax.Schedule:
    """Per optimizer update: 0 for `frozen_iterations` PPO iterations, then a linear warmup
    over `ppo.warmup_steps` iterations to `learning_rate`, then a linear decay to
    `learning_rate * ppo.end_lr_ratio` at the last of the `ppo.steps` iterations (1.0:
    constant). (An iteration is `ppo.epochs * ppo.minibatches` updates.)"""
    per_iteration = p.epochs * p.minibatches
    frozen, warmup = frozen_iterations * per_iteration, p.warmup_steps * per_iteration
    decay = max(p.steps * per_iteration - frozen - warmup - 1, 1)  # updates from the end of the warmup to the last
    end_ratio = p.get("end_lr_ratio", 1.0)

    def schedule(count):
        ramp = jnp.minimum(1.0, (count - frozen + 1) / warmup) if warmup > 0 else 1.0
        done = jnp.clip((count - frozen - warmup) / decay, 0.0, 1.0)
        return jnp.where(count < frozen, 0.0, learning_rate * ramp * (1.0 - (1.0 - end_ratio) * done))
    return schedule


def ppo_optimizer(learning_rate: float, p, *, frozen_iterations: int = 0) -> optax.GradientTransformation:
    """Adam (b1, b2 of `ppo`) on `ppo_schedule`, after global-norm clipping."""
    parts = [optax.clip_by_global_norm(p.grad_clip)] if p.grad_clip > 0 else []
    parts.append(optax.adam(ppo_schedule(learning_rate, p, frozen_iterations=frozen_iterations),
                            b1=p.b1, b2=p.b2))
    return optax.chain(*parts)


def optimizer_step(loss_fn, tx: optax.GradientTransformation, state: dict, batch: dict, *,
                   microbatch_size: int = 0, weight_key: str | None = None) -> tuple[dict, dict]:
    """One optimizer step of an SFT-style state `{params, opt_state, step, rng}`.

    `loss_fn(params, batch) -> (loss, metrics)`; returns the new state and
    `{loss, grad_norm, **metrics}`.

    Gradient accumulation: with `0 < microbatch_size < batch`, the batch (every leaf
    `[batch, ...]`) is split into `batch / microbatch_size` microbatches (row i goes to
    microbatch `i % n`, so each keeps the batch's split over the data axes) and a
    `lax.scan` sums their gradients, weighted by `metrics[weight_key]` (the
    microbatch's count of loss terms, e.g. target tokens) and divided by the total
    count: for a loss that is one masked mean (`sum / max(count, 1)`) this is the
    full-batch gradient. Without `weight_key` microbatches weigh equally (exact for a
    mean over rows). The metrics are averaged with the same weights (`weight_key`
    itself is summed). Still one optimizer update; `microbatch_size=0` runs the
    full-batch path unchanged.
    """
    batch_size = jax.tree.leaves(batch)[0].shape[0]
    if microbatch_size <= 0 or microbatch_size >= batch_size:
        (loss, aux), grads = jax.value_and_grad(lambda p: loss_fn(p, batch), has_aux=True)(state["params"])
    else:
        loss, aux, grads = _accumulate(loss_fn, state["params"], batch, microbatch_size, weight_key)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    new_state = {"params": params, "opt_state": opt_state, "step": state["step"] + 1,
                 "rng": jax.random.fold_in(state["rng"], state["step"])}
    return new_state, {"loss": loss, "grad_norm": optax.global_norm(grads), **aux}


def _accumulate(loss_fn, params, batch: dict, microbatch_size: int, weight_key: str | None):
    """(loss, metrics, grads) of `batch` from `batch / microbatch_size` microbatches (see
    `optimizer_step`): float32 gradient sums in a `lax.scan`."""
    batch_size = jax.tree.leaves(batch)[0].shape[0]
    if batch_size % microbatch_size:
        raise ValueError(f"gradient accumulation: microbatch size {microbatch_size} does not divide "
                         f"the batch of {batch_size} rows")
    n = batch_size // microbatch_size

    def split(x):  # [B, ...] -> [n, mb, ...] with microbatch j = rows j, j + n, j + 2n, ...
        x = x.reshape(microbatch_size, n, *x.shape[1:]).swapaxes(0, 1)
        return nn.with_logical_constraint(x, (None, "batch") + (None,) * (x.ndim - 2))

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)

    def body(carry, mb):
        grad_sum, weight_sum = carry
        (loss, aux), grads = grad_fn(params, mb)
        w = aux[weight_key].astype(jnp.float32) if weight_key else jnp.float32(1.0)
        grad_sum = jax.tree.map(lambda s, g: s + w * g.astype(jnp.float32), grad_sum, grads)
        return (grad_sum, weight_sum + w), (w, dict(aux, loss=loss))

    (grad_sum, total), (weights, metrics) = jax.lax.scan(
        body, (zeros, jnp.float32(0.0)), jax.tree.map(split, batch))
    scale = 1.0 / jnp.maximum(total, 1e-9) if weight_key else jnp.float32(1.0 / n)
    grads = jax.tree.map(lambda g, p: (g * scale).astype(p.dtype), grad_sum, params)
    share = weights * scale  # [n], sums to 1 (0s when nothing counted)
    averaged = {k: (v.sum() if k == weight_key else jnp.sum(share * v)) for k, v in metrics.items()}
    loss = averaged.pop("loss")
    return loss, averaged, grads
