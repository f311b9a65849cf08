"""The KV-cache sampler: greedy parity with transformers, sampling statistics, filters,
determinism, stopping, padding sides and a sharded batch."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_helpers import PAD, left_padded, small_sampler_model
from jaxstep import models
from jaxstep.models import sampler


def _chi2_critical(df: int, z: float = 3.09) -> float:
    """Wilson-Hilferty upper quantile of chi-square(df); z=3.09 is p = 0.001."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + z * np.sqrt(a)) ** 3


@pytest.fixture(scope="module")
def small():
    """A tiny random Qwen2 with a 16-token vocabulary and peaked logits."""
    return small_sampler_model()


def _next_logits(model, params, ids, mask):
    """Logits `[batch, vocab]` for the token after each (left-padded) row."""
    return np.asarray(jax.jit(model.apply)({"params": params}, ids, mask))[:, -1]


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


# ----------------------------------------------------------------------------- vs transformers


@pytest.mark.parametrize("name", ["qwen2_tied", "qwen2_untied", "opt_proj"])
def test_greedy_equals_transformers_generate(name):
    pytest.importorskip("torch")
    from hf_helpers import hf_greedy, jax_from_hf, random_hf_model

    hf_model = random_hf_model(name, seed=7, std=0.15)
    model, params = jax_from_hf(hf_model)
    vocab = model.config.vocab_size
    ids, mask = left_padded(vocab, [9, 5, 2, 7], 9, seed=8)
    new = 12
    eos = 5
    expected = hf_greedy(hf_model, ids, mask, new, eos)
    out = models.generate(model, params, ids, mask, jax.random.key(0), max_new_tokens=new,
                          greedy=True, eos_id=eos, pad_id=PAD)
    got = np.asarray(out.tokens)
    np.testing.assert_array_equal(got[:, :expected.shape[1]], expected)
    assert (got[:, expected.shape[1]:] == PAD).all()
    assert len(set(expected.ravel().tolist())) > 3  # not a degenerate constant output


# ----------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_first_token_frequencies_match_softmax(small, temperature):
    model, params = small
    n = 4000
    ids, mask = left_padded(16, [4], 6, seed=1)
    logits = _next_logits(model, params, ids, mask)[0]
    probs = np.exp(_log_softmax(logits / temperature))
    out = models.generate(model, params, np.repeat(ids, n, 0), np.repeat(mask, n, 0),
                          jax.random.key(3), max_new_tokens=1, temperature=temperature,
                          eos_id=None, pad_id=PAD)
    counts = np.bincount(np.asarray(out.tokens)[:, 0], minlength=16)
    expected = n * probs
    keep = expected >= 5  # pool rare tokens into one cell
    observed = np.append(counts[keep], counts[~keep].sum())
    expected = np.append(expected[keep], expected[~keep].sum())
    if expected[-1] < 5:
        observed, expected = observed[:-1], expected[:-1]
    chi2 = ((observed - expected) ** 2 / expected).sum()
    assert chi2 < _chi2_critical(len(observed) - 1), (chi2, observed, expected)
    assert probs.max() < 0.9  # the test has power: several tokens are likely
    # Log-probs: the raw (temperature 1) and the sampling distribution.
    tokens = np.asarray(out.tokens)[:, 0]
    np.testing.assert_allclose(np.asarray(out.logprobs)[:, 0], _log_softmax(logits)[tokens], atol=1e-5)
    np.testing.assert_allclose(np.asarray(out.sampling_logprobs)[:, 0],
                               _log_softmax(logits / temperature)[tokens], atol=1e-5)


def test_decode_step_frequencies_match_softmax(small):
    """The second token (drawn inside the while loop) given the most common first one."""
    model, params = small
    n = 6000
    ids, mask = left_padded(16, [5], 5, seed=2)
    out = models.generate(model, params, np.repeat(ids, n, 0), np.repeat(mask, n, 0),
                          jax.random.key(4), max_new_tokens=2, eos_id=None, pad_id=PAD)
    tokens = np.asarray(out.tokens)
    first = np.bincount(tokens[:, 0], minlength=16).argmax()
    rows = tokens[tokens[:, 0] == first]
    ctx_ids = np.concatenate([ids, [[first]]], 1).astype(np.int32)
    logits = _next_logits(model, params, ctx_ids, np.ones_like(ctx_ids))[0]
    probs = np.exp(_log_softmax(logits))
    counts = np.bincount(rows[:, 1], minlength=16)
    expected = len(rows) * probs
    keep = expected >= 5
    chi2 = ((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum()
    assert keep.sum() >= 3 and chi2 < _chi2_critical(int(keep.sum())), (chi2, counts, expected)
    np.testing.assert_allclose(np.asarray(out.logprobs)[tokens[:, 0] == first, 1],
                               _log_softmax(logits)[rows[:, 1]], atol=1e-5)


# ----------------------------------------------------------------------------- filters


def _allowed_sets(logits, temperature, top_k, top_p):
    """transformers' semantics: temperature, then top-k, then top-p (sorted cumsum)."""
    scaled = logits / temperature
    allowed = np.ones(scaled.shape, bool)
    if top_k:
        kth = np.sort(scaled, -1)[:, -top_k][:, None]
        allowed &= scaled >= kth
    if top_p < 1.0:
        masked = np.where(allowed, scaled, -np.inf)
        order = np.argsort(-masked, -1)
        probs = np.exp(_log_softmax(np.take_along_axis(masked, order, -1)))
        before = np.cumsum(probs, -1) - probs
        keep_sorted = before < top_p
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, -1)
        allowed &= keep
    return allowed


@pytest.mark.parametrize("top_k,top_p,temperature", [(3, 1.0, 1.0), (0, 0.6, 1.0),
                                                     (6, 0.8, 0.8), (0, 0.9, 1.5)])
def test_top_k_top_p_never_emit_excluded_tokens(small, top_k, top_p, temperature):
    model, params = small
    n, new = 256, 5
    ids, mask = left_padded(16, [3, 6] * (n // 2), 6, seed=5)
    out = models.generate(model, params, ids, mask, jax.random.key(6), max_new_tokens=new,
                          temperature=temperature, top_k=top_k, top_p=top_p, eos_id=None, pad_id=PAD)
    tokens = np.asarray(out.tokens)
    # Teacher-forced logits at every generated position.
    full_ids = np.concatenate([ids, tokens], 1).astype(np.int32)
    full_mask = np.concatenate([mask, np.ones_like(tokens)], 1)
    logits = np.asarray(jax.jit(model.apply)({"params": params}, full_ids, full_mask))
    step_logits = logits[:, ids.shape[1] - 1:-1]  # predicts tokens[:, t]
    distinct = set()
    for t in range(new):
        allowed = _allowed_sets(step_logits[:, t], temperature, top_k, top_p)
        assert allowed[np.arange(n), tokens[:, t]].all(), f"step {t}: excluded token emitted"
        assert (allowed.sum(-1) < 16).all()  # the filter excludes something
        distinct |= set(tokens[:, t].tolist())
        # Sampling log-probs are those of the renormalised filtered distribution.
        filtered = np.where(allowed, step_logits[:, t] / temperature, -np.inf)
        np.testing.assert_allclose(np.asarray(out.sampling_logprobs)[:, t],
                                   _log_softmax(filtered)[np.arange(n), tokens[:, t]], atol=1e-4)
    assert len(distinct) > 1


# ----------------------------------------------------------------------------- behaviour


def test_same_key_same_samples(small):
    model, params = small
    ids, mask = left_padded(16, [2, 5, 4, 6], 6, seed=9)
    kwargs = dict(max_new_tokens=10, top_k=8, eos_id=None, pad_id=PAD)
    a = models.generate(model, params, ids, mask, jax.random.key(11), **kwargs)
    b = models.generate(model, params, ids, mask, jax.random.key(11), **kwargs)
    c = models.generate(model, params, ids, mask, jax.random.key(12), **kwargs)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert not np.array_equal(np.asarray(a.tokens), np.asarray(c.tokens))


def test_eos_and_stop_sequences_stop_rows_and_set_the_mask(small):
    model, params = small
    ids, mask = left_padded(16, [6, 3, 5], 6, seed=10)
    new = 10
    free = np.asarray(models.generate(model, params, ids, mask, jax.random.key(1),
                                      max_new_tokens=new, eos_id=None, pad_id=PAD).tokens)
    eos = int(free[0, 3])
    first_eos = [int(np.argmax(row == eos)) if (row == eos).any() else new for row in free]
    stop = (int(free[1, 4]), int(free[1, 5]))
    out = models.generate(model, params, ids, mask, jax.random.key(1), max_new_tokens=new,
                          eos_id=eos, pad_id=PAD, stop_sequences=[stop])
    tokens, out_mask = np.asarray(out.tokens), np.asarray(out.mask)
    for r in range(3):
        end = first_eos[r]
        for t in range(1, new):  # first completed stop sequence
            if t < end and (free[r, t - 1], free[r, t]) == stop:
                end = t
                break
        length = min(end + 1, new)
        assert out.lengths[r] == length, (r, out.lengths, first_eos)
        np.testing.assert_array_equal(out_mask[r], np.arange(new) < length)
        np.testing.assert_array_equal(tokens[r, :length], free[r, :length])
        assert (tokens[r, length:] == PAD).all()
        assert (np.asarray(out.logprobs)[r, length:] == 0).all()
    assert out.lengths[0] <= 4 and out.lengths[1] <= 6


def test_right_padding_equals_left_padding(small):
    model, params = small
    left_ids, left_mask = left_padded(16, [6, 2, 4], 6, seed=12)
    right_ids = np.stack([np.roll(r, -int((m == 0).sum())) for r, m in zip(left_ids, left_mask)])
    right_mask = np.stack([np.roll(m, -int((m == 0).sum())) for m in left_mask])
    kwargs = dict(max_new_tokens=6, eos_id=None, pad_id=PAD)
    a = models.generate(model, params, left_ids, left_mask, jax.random.key(2), **kwargs)
    b = models.generate(model, params, right_ids, right_mask, jax.random.key(2), **kwargs)
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))


@pytest.mark.slow  # SPMD compile of the whole sampler: ~10 s
@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")
def test_batch_sharded_over_a_mesh_gives_the_same_samples(small):
    from jaxstep.parallel import mesh as mesh_lib
    from jaxstep.parallel import rules as rules_lib

    model, params = small
    ids, mask = left_padded(16, [6, 2, 4, 5, 1, 3, 6, 2], 6, seed=13)
    kwargs = dict(max_new_tokens=6, temperature=0.9, eos_id=3, pad_id=PAD)
    expected = models.generate(model, params, ids, mask, jax.random.key(5), **kwargs)
    mesh = mesh_lib.make_mesh({"data": 4, "fsdp": 2, "tensor": 1})
    sharded = rules_lib.shard_params(params, models.logical_specs(model), mesh)
    batch = rules_lib.shard_batch({"ids": ids, "mask": mask}, mesh)
    with rules_lib.activation_sharding(mesh):
        got = models.generate(model, sharded, batch["ids"], batch["mask"], jax.random.key(5), **kwargs)
    assert got.tokens.sharding.spec[0] == ("data", "fsdp")
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5),
                 got, expected)


@pytest.mark.parametrize("settings", [dict(greedy=True), dict(temperature=0.7, top_k=5, top_p=0.9),
                                      dict(temperature=1.0)])
def test_without_logprobs_same_tokens(small, settings):
    """`with_logprobs=False` samples the same tokens with the same key; the raw log-probs
    are 0, except on plain sampling, where they come free with the sample and are kept."""
    model, params = small
    ids, mask = left_padded(model.config.vocab_size, [3, 5, 2, 4], 6)
    kwargs = dict(max_new_tokens=7, eos_id=3, pad_id=PAD, **settings)
    full = models.generate(model, params, ids, mask, jax.random.key(4), **kwargs)
    lean = models.generate(model, params, ids, mask, jax.random.key(4), with_logprobs=False, **kwargs)
    for field in ("tokens", "mask", "lengths", "sampling_logprobs"):
        np.testing.assert_array_equal(np.asarray(getattr(lean, field)), np.asarray(getattr(full, field)))
    assert np.abs(np.asarray(full.logprobs)).sum() > 0
    plain = settings == dict(temperature=1.0)
    np.testing.assert_array_equal(np.asarray(lean.logprobs), np.asarray(full.logprobs) if plain else 0.0)
