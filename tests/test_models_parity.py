"""Our Flax decoder against transformers' PyTorch models (random tiny configs, float32)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("torch")

from hf_helpers import HF_CASES, hf_logits, jax_from_hf, padded_batch, random_hf_model  # noqa: E402

from jaxstep import models  # noqa: E402

TOL = 1e-4


@pytest.fixture(scope="module", params=sorted(HF_CASES))
def pair(request):
    hf_model = random_hf_model(request.param)
    model, params = jax_from_hf(hf_model)
    return request.param, hf_model, model, params


@pytest.mark.parametrize("side", ["none", "left", "right"])
def test_logits_match_transformers(pair, side):
    name, hf_model, model, params = pair
    vocab = hf_model.config.vocab_size
    lengths = [12, 7, 1] if side != "none" else [12, 12, 12]
    ids, mask = padded_batch(vocab, lengths, 12, "left" if side == "none" else side, seed=1)
    expected = hf_logits(hf_model, ids, mask)
    apply = jax.jit(lambda p, x, m: model.apply({"params": p}, x, attention_mask=m))
    got = np.asarray(apply(params, ids, None if side == "none" else mask))
    assert got.dtype == np.float32 and got.shape == expected.shape
    real = mask.astype(bool)
    diff = np.abs(got - expected)[real].max()
    assert diff <= TOL, f"{name}/{side}: max abs logit diff {diff:.2e}"
    assert np.abs(expected[real]).max() > 1.0  # the logits are not trivially flat


def test_prefill_then_decode_equals_full_forward(pair):
    name, hf_model, model, params = pair
    ids, mask = padded_batch(hf_model.config.vocab_size, [10, 6, 3], 10, "left", seed=2)
    full = np.asarray(jax.jit(model.apply)({"params": params}, ids, mask))
    prefill = 6
    cache = models.init_cache(model.config, ids.shape[0], 16)
    apply = jax.jit(lambda p, x, m, c, i: model.apply({"params": p}, x, attention_mask=m,
                                                      cache=c, cache_index=i))
    logits, cache = apply(params, jnp.asarray(ids[:, :prefill]), jnp.asarray(mask[:, :prefill]),
                          cache, 0)
    steps = [np.asarray(logits)]
    for t in range(prefill, ids.shape[1]):
        logits, cache = apply(params, jnp.asarray(ids[:, t:t + 1]), jnp.asarray(mask[:, t:t + 1]),
                              cache, t)
        steps.append(np.asarray(logits))
    incremental = np.concatenate(steps, axis=1)
    real = mask.astype(bool)
    diff = np.abs(incremental - full)[real].max()
    assert diff <= TOL, f"{name}: cached decode differs from full forward by {diff:.2e}"


def test_hidden_and_no_lm_head(pair):
    _, hf_model, model, params = pair
    ids, mask = padded_batch(hf_model.config.vocab_size, [5, 3], 5, "right")
    logits, hidden = jax.jit(lambda p: model.apply({"params": p}, ids, attention_mask=mask,
                                                   return_hidden=True))(params)
    only_hidden = jax.jit(lambda p: model.apply({"params": p}, ids, attention_mask=mask,
                                                lm_head=False))(params)
    assert hidden.shape == (2, 5, model.config.embed_dim)
    np.testing.assert_array_equal(np.asarray(hidden), np.asarray(only_hidden))
    assert logits.shape == (2, 5, model.config.vocab_size)


def test_scalar_model_from_decoder():
    config = models.tiny(64, hidden_size=32, num_layers=1, intermediate_size=64,
                         tie_word_embeddings=False)
    decoder_params = models.init_params(config, jax.random.key(0))
    params = models.scalar_params_from_decoder(decoder_params, jax.random.key(1), config)
    assert set(params) == {"decoder", "score"} and "lm_head" not in params["decoder"]
    scalar = models.ScalarModel(config)
    fresh = models.abstract_params(scalar)
    assert jax.tree.structure(fresh) == jax.tree.structure(params)
    assert jax.tree.map(lambda a: a.shape, fresh) == jax.tree.map(lambda a: a.shape, params)
    ids, mask = padded_batch(64, [6, 4], 6, "left")
    scores = jax.jit(scalar.apply)({"params": params}, ids, mask)
    assert scores.shape == (2, 6) and scores.dtype == jnp.float32
    hidden = jax.jit(lambda p: models.Decoder(config).apply({"params": p}, ids, attention_mask=mask,
                                                            lm_head=False))(decoder_params)
    np.testing.assert_allclose(np.asarray(scores),
                               np.asarray(models.apply_score(params["score"], hidden)), atol=1e-5)


def test_logical_specs_cover_every_param():
    for config in (models.tiny(64), models.tiny(64, model_type="opt", word_embed_proj_dim=64 // 2)):
        params = models.abstract_params(config)
        specs = models.logical_specs(config)
        assert jax.tree.structure(params) == jax.tree.structure(
            specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
        flat = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
        assert all(len(s) >= 1 for s in flat)
        assert specs["embed"]["embedding"] == jax.sharding.PartitionSpec("vocab", "embed")
