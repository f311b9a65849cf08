"""Non-finite guards: a NaN/Inf loss, reward or gradient skips the update, and too many
skipped steps in a row stop the run.

Inside the jitted update (pure jnp)::

    ok = all_finite(loss, grads, rewards)
    new_state = keep_if_finite(ok, candidate_state, state)  # params/opt state untouched
    metrics["skipped"] = 1.0 - ok.astype(jnp.float32)
    metrics.update(nonfinite_flags(loss=loss, reward=rewards, grad=grads))

In the host loop::

    guard = NonFiniteGuard(max_consecutive=10)
    ...
    state, metrics = update(state, batch)
    guard.check(step, metrics)      # raises NonFiniteError; do not save after it
    ckpt.save(step, state, extra={"guard": guard.state_dict(), ...})
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np


class NonFiniteError(RuntimeError):
    """Too many consecutive training steps had non-finite loss, reward or gradient."""


def _float_leaves(tree) -> list:
    return [x for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]


def all_finite(*trees: Any) -> jax.Array:
    """Scalar bool: every floating-point element of every tree is finite (jittable)."""
    leaves = [leaf for tree in trees for leaf in _float_leaves(tree)]
    if not leaves:
        return jnp.asarray(True)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))


def keep_if_finite(ok: jax.Array, new: Any, old: Any) -> Any:
    """`new` where `ok`, else `old`, leaf by leaf (same structure); jittable.

    Selecting (rather than computing an update of zero) keeps NaN out of the parameters
    and the optimizer moments, and leaves step counters of a skipped update unchanged.
    """
    return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)


def nonfinite_flags(**named_trees: Any) -> dict[str, jax.Array]:
    """{"nonfinite_<name>": float32 1.0 if that tree holds a NaN/Inf else 0.0}; jittable."""
    return {f"nonfinite_{name}": 1.0 - all_finite(tree).astype(jnp.float32)
            for name, tree in named_trees.items()}


class NonFiniteGuard:
    """Counts skipped (non-finite) updates on the host; raises after too many in a row.

    A step counts as skipped when all its updates were skipped (`skipped >= num_updates`,
    so a PPO step of several minibatch updates counts only if none applied); any step
    that applied an update resets the run of consecutive skips.

    Args:
      max_consecutive: raise `NonFiniteError` when this many steps in a row were skipped
        (0 disables stopping; skips are still counted).
    """

    def __init__(self, max_consecutive: int = 10):
        if max_consecutive < 0:
            raise ValueError(f"max_consecutive must be >= 0, got {max_consecutive}")
        self.max_consecutive = max_consecutive
        self.total_skipped_updates = 0
        self.total_skipped_steps = 0
        self.consecutive = 0
        self.first_skipped_step: int | None = None

    def update(self, step: int, skipped: Any, num_updates: int = 1,
               detail: str = "") -> bool:
        """Records one step's `skipped` update count; returns whether the step was skipped.

        Raises NonFiniteError when `max_consecutive` steps in a row were skipped.
        """
        skipped = int(round(float(np.asarray(skipped).sum())))
        self.total_skipped_updates += skipped
        if skipped < max(num_updates, 1):
            self.consecutive = 0
            self.first_skipped_step = None
            return False
        self.total_skipped_steps += 1
        self.consecutive += 1
        if self.first_skipped_step is None:
            self.first_skipped_step = int(step)
        if self.max_consecutive and self.consecutive >= self.max_consecutive:
            raise NonFiniteError(
                f"{self.consecutive} consecutive training steps "
                f"({self.first_skipped_step}..{int(step)}) had a non-finite loss, reward or "
                f"gradient and were skipped{' (' + detail + ')' if detail else ''}; "
                f"{self.total_skipped_updates} updates skipped in all. Stopping: the "
                f"parameters are those of step {self.first_skipped_step - 1} and the last "
                "checkpoint is intact. Check the reward model scores and the data, lower "
                "the learning rate, or raise the guard's max_consecutive.")
        return True

    def check(self, step: int, metrics: Mapping[str, Any]) -> bool:
        """`update` from a metrics dict: `skipped`, optional `num_updates` and
        `nonfinite_*` flags (named in the error). Returns whether the step was skipped."""
        if "skipped" not in metrics:
            raise KeyError("NonFiniteGuard.check: metrics has no 'skipped' entry; the jitted "
                           "update must report how many updates it skipped")
        num_updates = int(np.asarray(metrics.get("num_updates", 1)))
        flagged = sorted(key[len("nonfinite_"):] for key, value in metrics.items()
                         if key.startswith("nonfinite_") and float(np.asarray(value).sum()) > 0)
        detail = "non-finite: " + ", ".join(flagged) if flagged else ""
        return self.update(step, metrics["skipped"], num_updates=num_updates, detail=detail)

    def state_dict(self) -> dict:
        """JSON-able counters, for the checkpoint's `extra` (exact resume)."""
        return {"total_skipped_updates": self.total_skipped_updates,
                "total_skipped_steps": self.total_skipped_steps,
                "consecutive": self.consecutive,
                "first_skipped_step": self.first_skipped_step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.total_skipped_updates = int(state["total_skipped_updates"])
        self.total_skipped_steps = int(state["total_skipped_steps"])
        self.consecutive = int(state["consecutive"])
        first = state.get("first_skipped_step")
        self.first_skipped_step = None if first is None else int(first)
