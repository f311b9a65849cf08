"""Non-finite guard: NaN never reaches the parameters; too many skips stop the run."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxstep.checkpoint import Checkpointer
from jaxstep.train.guards import (NonFiniteError, NonFiniteGuard, all_finite, keep_if_finite,
                                  nonfinite_flags)

TX = optax.adam(0.1)


@jax.jit
def update(state, inputs, rewards):
    """A toy reward-weighted regression step guarded like the real PPO update."""
    def loss_fn(params):
        pred = inputs @ params["w"]
        return jnp.mean(rewards * (pred - 1.0) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(state["params"])
    updates, opt_state = TX.update(grads, state["opt_state"], state["params"])
    candidate = {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state}
    ok = all_finite(loss, grads, rewards)
    metrics = {"loss": loss, "skipped": 1.0 - ok.astype(jnp.float32),
               **nonfinite_flags(loss=loss, reward=rewards, grad=grads)}
    return keep_if_finite(ok, candidate, state), metrics


def init_state():
    params = {"w": jnp.ones(3) * 0.5}
    return {"params": params, "opt_state": TX.init(params)}


def test_all_finite_and_flags():
    assert bool(all_finite({"a": jnp.ones(2)}, jnp.zeros(3), jnp.arange(3)))
    assert not bool(all_finite({"a": jnp.array([1.0, jnp.nan])}))
    assert not bool(all_finite(jnp.array([jnp.inf], jnp.bfloat16)))
    assert bool(all_finite({}))
    flags = nonfinite_flags(loss=jnp.nan, grad={"w": jnp.ones(2)})
    assert float(flags["nonfinite_loss"]) == 1.0 and float(flags["nonfinite_grad"]) == 0.0


def test_nan_reward_never_reaches_params():
    state = init_state()
    inputs = jnp.eye(3)
    state, metrics = update(state, inputs, jnp.ones(3))
    assert float(metrics["skipped"]) == 0.0
    before = jax.tree.map(np.asarray, state)
    nan_rewards = jnp.array([1.0, jnp.nan, 1.0])
    state, metrics = update(state, inputs, nan_rewards)
    assert float(metrics["skipped"]) == 1.0 and float(metrics["nonfinite_reward"]) == 1.0
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state)):
        assert np.asarray(b).tobytes() == a.tobytes()  # params and Adam moments, count too
    state, metrics = update(state, inputs, jnp.ones(3))
    assert float(metrics["skipped"]) == 0.0
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state))


def test_guard_counts_and_stops_after_consecutive_skips():
    guard = NonFiniteGuard(max_consecutive=3)
    assert not guard.update(1, 0.0)
    assert guard.update(2, 1.0)
    assert guard.update(3, 1.0)
    assert not guard.update(4, 0.0)  # a good step resets the run
    assert guard.consecutive == 0 and guard.total_skipped_updates == 2
    assert not guard.update(5, 2, num_updates=4)  # some minibatch updates applied
    guard.update(6, 4, num_updates=4)
    guard.update(7, 4, num_updates=4)
    with pytest.raises(NonFiniteError, match=r"3 consecutive training steps \(6\.\.8\)"):
        guard.update(8, 4, num_updates=4)
    restored = NonFiniteGuard(max_consecutive=3)
    restored.load_state_dict(guard.state_dict())
    assert restored.state_dict() == guard.state_dict()


def test_guard_names_the_culprit_and_requires_skipped():
    guard = NonFiniteGuard(max_consecutive=1)
    with pytest.raises(NonFiniteError, match="non-finite: reward"):
        guard.check(1, {"skipped": jnp.asarray(1.0), "nonfinite_reward": jnp.asarray(1.0),
                        "nonfinite_loss": jnp.asarray(0.0)})
    with pytest.raises(KeyError, match="skipped"):
        NonFiniteGuard().check(1, {"loss": 1.0})


def test_run_stops_with_last_good_checkpoint_intact(tmp_path):
    """A loop that turns NaN from step 6 on stops at step 8; step 4's checkpoint restores."""
    guard = NonFiniteGuard(max_consecutive=3)
    state = init_state()
    inputs = jnp.eye(3)
    good_at = {}
    with Checkpointer(tmp_path, save_interval_steps=2, handle_sigterm=False) as ckpt:
        with pytest.raises(NonFiniteError):
            for step in range(1, 20):
                rewards = jnp.ones(3) if step < 6 else jnp.full(3, jnp.nan)
                state, metrics = update(state, inputs, rewards)
                guard.check(step, metrics)
                if ckpt.save(step, state, extra={"guard": guard.state_dict()}):
                    good_at[step] = jax.tree.map(np.asarray, state)
        assert step == 8
        # Skipped steps leave the state as of step 5: finite and unchanged.
        assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state))
    with Checkpointer(tmp_path, handle_sigterm=False) as ckpt:
        last, restored, extra = ckpt.restore_latest(init_state())
    assert last == 6 and set(good_at) == {2, 4, 6}
    assert extra["guard"]["consecutive"] == 1
    for a, b in zip(jax.tree.leaves(good_at[6]), jax.tree.leaves(restored)):
        assert np.asarray(b).tobytes() == a.tobytes()
