"""KL coefficient control: fixed, or adaptive (Ziegler et al. 2019) towards a target KL.

The state is a pytree of 0-d float32 arrays, so it lives inside the jitted PPO state and
is checkpointed with it. Adaptive rule, per update with observed KL `kl` (the mean over
samples of the per-sequence summed k1 KL) from `n_steps` samples:

    error = clip(kl / target - 1, -0.2, 0.2)
    coef <- coef * (1 + error * n_steps / horizon)
"""
from __future__ import annotations

import flax.struct
import jax.numpy as jnp


@flax.struct.dataclass
class KLState:
    """`coef`: current KL coefficient beta, float32 `[]`."""
    coef: jnp.ndarray


def init_kl_state(coef: float) -> KLState:
    """Initial controller state with coefficient `coef`."""
    return KLState(coef=jnp.asarray(coef, jnp.float32))


def update_kl_state(state: KLState, observed_kl, n_steps, *, target: float | None = None,
                    horizon: float = 10000.0, error_clip: float = 0.2) -> KLState:
    """One controller step. `target=None` (or <= 0) is the fixed controller (no change).

    A non-finite `observed_kl` leaves the coefficient unchanged.
    """
    if target is None or target <= 0:
        return state
    observed_kl = jnp.asarray(observed_kl, jnp.float32)
    error = jnp.clip(observed_kl / target - 1.0, -error_clip, error_clip)
    coef = state.coef * (1.0 + error * jnp.asarray(n_steps, jnp.float32) / horizon)
    return KLState(coef=jnp.where(jnp.isfinite(observed_kl), coef, state.coef).astype(jnp.float32))
