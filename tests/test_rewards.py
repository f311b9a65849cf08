"""Reward aggregation and shaping against hand-worked examples (DESIGN.md formulas)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstep.rewards.aggregate import aggregate
from jaxstep.rewards.shaping import SCHEMES, delta_scores, shape_rewards, shape_sample

# The module docstring's example: 4 valid steps in 5 slots, response of 12 tokens.
SCORES = np.array([0.9, 0.6, 0.8, 0.7, 0.55], np.float32)
MASK = np.array([1, 1, 1, 1, 0], np.int32)
ENDS = np.array([2, 5, 9, 11, 3], np.int32)
LENGTH = 12
TIME = 16


def process(scheme, scores=SCORES, mask=MASK, ends=ENDS, length=LENGTH, **kw):
    out = SCHEMES[scheme](jnp.asarray(scores), jnp.asarray(mask), jnp.asarray(ends), length,
                          time=TIME, **kw)
    assert out.dtype == jnp.float32 and out.shape == (TIME,)
    return np.asarray(out)


def at(positions_values, time=TIME):
    out = np.zeros(time, np.float32)
    for pos, value in positions_values.items():
        out[pos] += value
    return out


@pytest.mark.parametrize("how,expected", [
    ("avg", (0.9 + 0.6 + 0.8 + 0.7) / 4), ("prod", 0.9 * 0.6 * 0.8 * 0.7),
    ("min", 0.6), ("max", 0.9), ("last", 0.7)])
def test_aggregate_hand_values_and_empty(how, expected):
    scores = np.stack([SCORES, SCORES])
    mask = np.stack([MASK, np.zeros_like(MASK)])
    out = np.asarray(aggregate(scores, mask, how))
    np.testing.assert_allclose(out, [expected, 0.0], rtol=1e-6)


def test_aggregate_rejects_unknown():
    with pytest.raises(ValueError, match="median"):
        aggregate(SCORES, MASK, "median")


def test_orm_and_aggregates_at_last_token():
    np.testing.assert_allclose(process("orm", outcome_score=0.42), at({11: 0.42}), rtol=1e-6)
    np.testing.assert_allclose(process("prm_avg"), at({11: 0.75}), rtol=1e-6)
    np.testing.assert_allclose(process("prm_prod"), at({11: 0.3024}), rtol=1e-6)
    np.testing.assert_allclose(process("prm_min"), at({11: 0.6}), rtol=1e-6)
    np.testing.assert_allclose(process("prm_max"), at({11: 0.9}), rtol=1e-6)


def test_dense_at_step_ends():
    np.testing.assert_allclose(process("prm_dense"), at({2: 0.9, 5: 0.6, 9: 0.8, 11: 0.7}), rtol=1e-6)


def test_clip_hand_values_and_bound():
    out = process("clip", eta=0.8)
    np.testing.assert_allclose(out, at({2: 0.0, 5: -0.2, 9: 0.0, 11: -0.1}), atol=1e-6)
    rng = np.random.default_rng(0)
    for _ in range(20):
        scores = rng.uniform(-1, 2, size=5).astype(np.float32)
        assert (process("clip", scores=scores, eta=0.8) <= 0).all()
        assert (process("clip", scores=scores, eta=-0.5) <= 0).all()


def test_delta_hand_values():
    out = process("delta")
    np.testing.assert_allclose(out, at({2: 0.3, 5: -0.2, 9: 0.8, 11: 0.0}), atol=1e-6)


def test_delta_telescopes_to_each_steps_score():
    """From any step j <= K-2 on, Delta rewards sum to s_j; the total is s_0."""
    rng = np.random.default_rng(1)
    for num_steps in range(2, 8):
        scores = rng.uniform(0, 1, size=8).astype(np.float32)
        mask = (np.arange(8) < num_steps).astype(np.int32)
        d = np.asarray(delta_scores(scores, mask))
        suffix = np.cumsum(d[::-1])[::-1]
        np.testing.assert_allclose(suffix[:num_steps - 1], scores[:num_steps - 1], atol=1e-6)
        np.testing.assert_allclose(suffix[num_steps - 1:], 0.0, atol=0)
        # Farming: repeating step 1 many times does not change the total.
        farmed = np.concatenate([scores[:1], np.repeat(scores[1:2], 5), scores[2:num_steps]])
        farmed_mask = np.ones_like(farmed, np.int32)
        total = np.asarray(delta_scores(farmed, farmed_mask)).sum()
        np.testing.assert_allclose(total, scores[0], atol=1e-6)
    # One step: it is the last step, so it earns 0.
    np.testing.assert_array_equal(np.asarray(delta_scores(scores, (np.arange(8) < 1))), 0.0)


def test_clip_delta_hand_values_and_telescoping():
    out = process("clip_delta", eta=0.8)
    np.testing.assert_allclose(out, at({2: 0.2, 5: -0.2, 9: 0.0, 11: 0.0}), atol=1e-6)
    assert abs(out.sum() - 0.0) < 1e-6  # total = c_0 = min(0.9 - 0.8, 0) = 0
    scores = np.array([0.3, 0.95, 0.1, 0.5, 0.0], np.float32)
    out = process("clip_delta", scores=scores, eta=0.8)
    # c = [-0.5, 0, -0.7, -0.3] -> [-0.5 - 0, 0 - (-0.7), -0.7 kept, 0 last]; total c_0
    np.testing.assert_allclose(out, at({2: -0.5, 5: 0.7, 9: -0.7, 11: 0.0}), atol=1e-6)
    np.testing.assert_allclose(out.sum(), 0.3 - 0.8, atol=1e-6)


def test_success_and_alpha_and_response_start():
    out = np.asarray(shape_sample("prm_dense", SCORES, MASK, ENDS, LENGTH, success=1.0,
                                  response_start=3, time=TIME, alpha=0.5, success_coef=2.0))
    expected = at({5: 0.45, 8: 0.3, 12: 0.4, 14: 0.35 + 2.0})
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_zero_steps_and_empty_response_do_not_crash():
    no_steps = np.zeros(5, np.int32)
    for scheme in SCHEMES:
        out = np.asarray(shape_sample(scheme, SCORES, no_steps, ENDS, LENGTH, success=1.0,
                                      outcome_score=0.5, time=TIME, alpha=1.0, success_coef=1.0))
        process_part = 0.5 if scheme == "orm" else 0.0
        np.testing.assert_allclose(out, at({11: 1.0 + process_part}), atol=1e-6)
        empty = np.asarray(shape_sample(scheme, SCORES, MASK, ENDS, 0, success=1.0, outcome_score=0.5,
                                        time=TIME))
        np.testing.assert_array_equal(empty, 0.0)
        assert np.isfinite(out).all()


def test_step_ends_clamped_into_response_and_time():
    ends = np.array([2, 5, 30, 40, 0], np.int32)  # last two beyond the response
    out = process("prm_dense", ends=ends, length=8)
    np.testing.assert_allclose(out, at({2: 0.9, 5: 0.6, 7: 0.8 + 0.7}), atol=1e-6)
    long = np.asarray(shape_sample("prm_max", SCORES, MASK, ENDS, 100, response_start=4, time=TIME))
    np.testing.assert_allclose(long, at({TIME - 1: 0.9}), atol=1e-6)


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_vmapped_batch_equals_per_sample_loop(scheme):
    rng = np.random.default_rng(2)
    batch, steps, time = 6, 5, 20
    scores = rng.uniform(0, 1, size=(batch, steps)).astype(np.float32)
    num = np.array([0, 1, 2, 3, 5, 4])
    mask = (np.arange(steps)[None] < num[:, None]).astype(np.int32)
    lengths = np.array([0, 3, 7, 10, 14, 12], np.int32)
    ends = np.sort(rng.integers(0, 14, size=(batch, steps)), axis=1).astype(np.int32)
    success = rng.integers(0, 2, size=batch).astype(np.float32)
    outcome = rng.uniform(size=batch).astype(np.float32)
    starts = rng.integers(0, 5, size=batch).astype(np.int32)
    kw = dict(alpha=0.7, eta=0.6, success_coef=1.5)
    batched = shape_rewards(scheme, scores, mask, ends, lengths, success, time=time,
                            outcome_scores=outcome, response_starts=starts, **kw)
    assert batched.dtype == jnp.float32 and batched.shape == (batch, time)
    jitted = jax.jit(lambda *a: shape_rewards(scheme, *a, time=time, outcome_scores=outcome,
                                              response_starts=starts, **kw))
    np.testing.assert_array_equal(np.asarray(jitted(scores, mask, ends, lengths, success)),
                                  np.asarray(batched))
    for b in range(batch):
        one = shape_sample(scheme, scores[b], mask[b], ends[b], lengths[b], success[b], outcome[b],
                           starts[b], time=time, **kw)
        np.testing.assert_allclose(np.asarray(batched[b]), np.asarray(one), atol=1e-7)


def test_orm_requires_outcome_scores_and_unknown_scheme_fails():
    with pytest.raises(ValueError, match="outcome_scores"):
        shape_rewards("orm", SCORES[None], MASK[None], ENDS[None], [LENGTH], time=TIME)
    with pytest.raises(ValueError, match="prm_median"):
        shape_sample("prm_median", SCORES, MASK, ENDS, LENGTH, time=TIME)
