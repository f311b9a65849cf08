"""Optimizers and learning-rate schedules of the training stages (optax).

SFT and reward models: AdamW with linear warmup and cosine decay (`make_optimizer`).
PPO: Adam with linear warmup, then constant, counted in iterations
(`ppo_optimizer`).
"""
from __future__ import annotations

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
    over `ppo.warmup_steps` iterations to `learning_rate`, then constant. (An iteration
    is `ppo.epochs * ppo.minibatches` updates.)"""
    per_iteration = p.epochs * p.minibatches
    frozen, warmup = frozen_iterations * per_iteration, p.warmup_steps * per_iteration

    def schedule(count):
        ramp = jnp.minimum(1.0, (count - frozen + 1) / warmup) if warmup > 0 else 1.0
        return jnp.where(count < frozen, 0.0, learning_rate * ramp)
    return schedule


def ppo_optimizer(learning_rate: float, p, *, frozen_iterations: int = 0) -> optax.GradientTransformation:
    """Adam (b1, b2 of `ppo`) on `ppo_schedule`, after global-norm clipping."""
    parts = [optax.clip_by_global_norm(p.grad_clip)] if p.grad_clip > 0 else []
    parts.append(optax.adam(ppo_schedule(learning_rate, p, frozen_iterations=frozen_iterations),
                            b1=p.b1, b2=p.b2))
    return optax.chain(*parts)


def optimizer_step(loss_fn, tx: optax.GradientTransformation, state: dict, batch: dict) -> tuple[dict, dict]:
    """One optimizer step of an SFT-style state `{params, opt_state, step, rng}`.

    `loss_fn(params, batch) -> (loss, metrics)`; returns the new state and
    `{loss, grad_norm, **metrics}`.
    """
    (loss, aux), grads = jax.value_and_grad(lambda p: loss_fn(p, batch), has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    new_state = {"params": params, "opt_state": opt_state, "step": state["step"] + 1,
                 "rng": jax.random.fold_in(state["rng"], state["step"])}
    return new_state, {"loss": loss, "grad_norm": optax.global_norm(grads), **aux}
