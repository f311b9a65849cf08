"""KL coefficient controller against hand values."""
import jax
import numpy as np

from jaxstep.rl.kl import KLState, init_kl_state, update_kl_state


def test_fixed_controller_keeps_coef():
    state = init_kl_state(0.1)
    assert state.coef.dtype == np.float32 and state.coef.shape == ()
    for target in (None, 0.0):
        assert float(update_kl_state(state, 5.0, 64, target=target).coef) == np.float32(0.1)


def test_adaptive_controller_hand_values():
    state = init_kl_state(0.1)
    # kl 9 vs target 6: error = clip(0.5, +-0.2) = 0.2; coef = 0.1 * (1 + 0.2 * 100 / 1000)
    up = update_kl_state(state, 9.0, 100, target=6.0, horizon=1000.0)
    np.testing.assert_allclose(float(up.coef), 0.1 * 1.02, rtol=1e-6)
    # kl 5.4 vs 6: error = -0.1 ; coef = 0.1 * (1 - 0.1 * 100 / 1000)
    down = update_kl_state(state, 5.4, 100, target=6.0, horizon=1000.0)
    np.testing.assert_allclose(float(down.coef), 0.1 * 0.99, rtol=1e-5)
    # NaN observation: unchanged
    assert float(update_kl_state(state, np.nan, 100, target=6.0).coef) == np.float32(0.1)


def test_controller_is_a_jittable_pytree():
    state = init_kl_state(0.2)
    leaves = jax.tree_util.tree_leaves(state)
    assert len(leaves) == 1 and leaves[0].shape == ()
    step = jax.jit(lambda s, kl: update_kl_state(s, kl, 10, target=1.0, horizon=100.0))
    out = step(state, 3.0)
    assert isinstance(out, KLState)
    np.testing.assert_allclose(float(out.coef), 0.2 * 1.02, rtol=1e-6)
