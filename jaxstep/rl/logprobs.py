"""Per-token log-probabilities, entropies and values aligned with the token sequence.

Alignment (the `jaxstep.rl` token convention): for `input_ids [batch, time]`, index t
of every output refers to token t. The model's output at position t-1 predicts token
t, so `logprobs[:, t] = log p(input_ids[:, t] | input_ids[:, :t])`,
`values[:, t] = critic(input_ids[:, :t])` (the value of the state before token t), and
index 0 (no context) is 0. Use these same functions for rollouts (old, reference
logprobs and values) and inside the update so both sides agree.

Memory: the log-softmax is never materialised; log p = logit[token] - logsumexp(logits),
in float32.
"""
from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
from jaxstep.models.logprobs import _shift_right, token_logprobs


def shift_values(critic_out: jnp.ndarray) -> jnp.ndarray:
    """Critic outputs `[batch, time]` (value after reading position t) -> aligned values."""
    return _shift_right(critic_out.astype(jnp.float32))


def default_positions(attention_mask: jnp.ndarray) -> jnp.ndarray:
    """Position ids for left-padded rows: 0 at the first real token, counting real tokens."""
    mask = jnp.asarray(attention_mask).astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)


def sequence_logprobs(policy_apply: Callable, params, input_ids, attention_mask, positions=None, *,
                      temperature: float = 1.0) -> jnp.ndarray:
    """`policy_apply(params, ids, attention_mask, positions) -> logits`, then aligned logprobs."""
    if positions is None:
        positions = default_positions(attention_mask)
    logits = policy_apply(params, input_ids, attention_mask, positions)
    return token_logprobs(logits, input_ids, temperature=temperature)


def sequence_values(critic_apply: Callable, params, input_ids, attention_mask, positions=None):
    """`critic_apply(params, ids, attention_mask, positions) -> [batch, time]`, then aligned."""
    if positions is None:
        positions = default_positions(attention_mask)
    return shift_values(critic_apply(params, input_ids, attention_mask, positions))
