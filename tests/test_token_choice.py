"""The decode step's token choice (`jaxstep.models.token_choice`) against numpy, with the
logits either way round, and the decode LM head's two layouts against `lm_logits`."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstep import models
from jaxstep.models import decoder, token_choice


def _log_softmax(x, axis):
    x = x - x.max(axis, keepdims=True)
    return x - np.log(np.exp(x).sum(axis, keepdims=True))


def _oriented(logits, axis):
    """`[B, V]` numpy logits as the choice functions take them with vocabulary axis `axis`."""
    return jnp.asarray(logits if axis in (1, -1) else logits.T)


@pytest.mark.parametrize("axis", [1, 0])
def test_categorical_never_picks_zero_probability_tokens(axis):
    logits = np.full((512, 300), -np.inf, np.float32)
    logits[:, [7, 131]] = 0.0
    logits[:, 299] = -1.0
    draws = np.asarray(token_choice.categorical(jax.random.key(0), _oriented(logits, axis), axis))
    assert set(draws.tolist()) == {7, 131, 299}


@pytest.mark.parametrize("axis", [-1, 0])
@pytest.mark.parametrize("vocab", [5, 256, 300, 32000])
def test_greedy_argmax_is_numpys_first_maximum(vocab, axis):
    """The two-level argmax equals numpy's (first index on ties) for vocabularies below,
    at and across block boundaries, with ties inside and across blocks and -inf rows,
    with the logits `[B, V]` or `[V, B]`."""
    rng = np.random.default_rng(vocab)
    logits = rng.normal(size=(64, vocab)).astype(np.float32)
    logits[1] = -np.inf  # every token masked: index 0, as numpy
    logits[2, :] = 0.0  # a tie over the whole row
    logits[3, [vocab - 1, vocab // 2]] = 9.0  # a tie across blocks: the earlier wins
    logits[4, -1] = 9.0  # the last token (the padded last block)
    logits[5] = np.round(logits[5])  # many ties at the maximum
    got = np.asarray(token_choice.greedy_argmax(_oriented(logits, axis), axis))
    np.testing.assert_array_equal(got, logits.argmax(-1))
    assert got.dtype == np.int32


@pytest.mark.parametrize("vocab", [100, 32000])
def test_categorical_either_way_round_draws_the_same_tokens(vocab):
    """One uniform per row from the same key: `[V, B]` gives `[B, V]`'s tokens, and both
    log-probs are numpy's log-softmax of the drawn token."""
    logits = (3.0 * np.random.default_rng(vocab).normal(size=(48, vocab))).astype(np.float32)
    key = jax.random.key(5)
    tok1, lp1 = token_choice.categorical_with_logprob(key, jnp.asarray(logits), -1)
    tok0, lp0 = token_choice.categorical_with_logprob(key, jnp.asarray(logits.T), 0)
    np.testing.assert_array_equal(np.asarray(tok0), np.asarray(tok1))
    expected = _log_softmax(logits.astype(np.float64), -1)[np.arange(48), np.asarray(tok1)]
    np.testing.assert_allclose(np.asarray(lp1), expected, atol=2e-5)
    np.testing.assert_allclose(np.asarray(lp0), expected, atol=2e-5)
    assert len(set(np.asarray(tok1).tolist())) > 10  # draws, not one mode


@pytest.mark.parametrize("axis", [1, 0])
def test_token_logprob_is_numpys_log_softmax(axis):
    logits = np.random.default_rng(0).normal(size=(6, 40)).astype(np.float32)
    token = np.array([0, 39, 5, 5, 17, 2], np.int32)
    got = token_choice.token_logprob(_oriented(logits, axis), jnp.asarray(token), axis)
    np.testing.assert_allclose(np.asarray(got), _log_softmax(logits, -1)[np.arange(6), token], atol=1e-6)


def test_choice_rejects_other_shapes():
    with pytest.raises(ValueError, match=r"\[vocab, batch\].*shape \(2, 3, 4\)"):
        token_choice.greedy_argmax(jnp.zeros((2, 3, 4)), 0)


@pytest.mark.parametrize("tied", [True, False])
def test_decode_logits_are_lm_logits_vocabulary_major(tied):
    """The decode step's logits `[V, B]` are `lm_logits` `[B, V]` transposed, from the
    tied embedding or the untied head, up to float rounding."""
    config = models.tiny(300, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                         intermediate_size=48, tie_word_embeddings=tied)
    params = models.init_params(models.Decoder(config), jax.random.key(1))
    assert ("lm_head" in params) == (not tied)
    hidden = jax.random.normal(jax.random.key(2), (5, 32))
    expected = np.asarray(decoder.lm_logits(config, params, hidden))  # [B, V]
    head = decoder.decode_head(config, params)
    assert head.shape == (300, 32)
    got = np.asarray(decoder.decode_logits(config, head, hidden))
    assert got.shape == (300, 5) and got.dtype == np.float32
    np.testing.assert_allclose(got.T, expected, rtol=1e-5, atol=1e-5)
