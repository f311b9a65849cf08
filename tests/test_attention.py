"""`Decoder(attention="xla")` (jax.nn.dot_product_attention) equals the einsum path in
float32: padding masks on either side, causal, sliding window, the KV-cache prefill and
decode steps, gradients and greedy sampling."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstep import models
from jaxstep.models import attention as attention_lib
from jaxstep.models import sampler
from jaxstep.models.decoder import init_cache

TOL = dict(rtol=1e-5, atol=1e-5)


def _model(**overrides):
    config = models.tiny(32, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                         intermediate_size=64, **overrides)
    einsum = models.Decoder(config)
    params = models.init_params(einsum, jax.random.key(1))
    # Larger weights than the 0.02 init: attention far from uniform, so a wrong mask shows.
    params = jax.tree.map(lambda x: x * 8.0 if x.ndim >= 2 else x, params)
    return einsum, models.Decoder(config, attention="xla"), params


def _padded(side, seed=0):
    rng = np.random.default_rng(seed)
    lengths = np.array([7, 3, 5, 1])
    ids = rng.integers(1, 32, (4, 7)).astype(np.int32)
    t = np.arange(7)[None]
    mask = (t >= 7 - lengths[:, None]) if side == "left" else (t < lengths[:, None])
    return jnp.asarray(np.where(mask, ids, 0)), jnp.asarray(mask.astype(np.int32))


@pytest.mark.parametrize("side,overrides", [("left", {}), ("right", {}),
                                            ("left", {"model_type": "llama", "sliding_window": 3}),
                                            ("right", {"model_type": "opt"})])
def test_forward_and_gradient_equal_einsum(side, overrides):
    einsum, xla, params = _model(**overrides)
    ids, mask = _padded(side)
    want = np.asarray(einsum.apply({"params": params}, ids, mask))
    got = np.asarray(xla.apply({"params": params}, ids, mask))
    valid = np.asarray(mask, bool)
    np.testing.assert_allclose(got[valid], want[valid], **TOL)
    assert np.abs(want[valid]).max() > 1.0  # not a degenerate near-zero output

    def loss(p, model):
        logits = model.apply({"params": p}, ids, mask)
        return jnp.sum(jnp.where(mask[..., None] > 0, jax.nn.log_softmax(logits) * logits, 0.0))
    g_want = jax.grad(loss)(params, einsum)
    g_got = jax.grad(loss)(params, xla)
    for a, b in zip(jax.tree.leaves(g_want), jax.tree.leaves(g_got)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-4)


def test_kv_cache_prefill_and_decode_equal_einsum():
    einsum, xla, params = _model()
    ids, mask = _padded("left", seed=3)
    outs = {}
    for name, model in (("einsum", einsum), ("xla", xla)):
        cache = init_cache(model.config, 4, 10)
        logits, cache = model.apply({"params": params}, ids, mask, cache=cache, cache_index=0)
        steps = [logits]
        for i in range(3):  # decode three tokens at traced slots 7, 8, 9
            token = jnp.full((4, 1), 5 + i, jnp.int32)
            step, cache = jax.jit(model.apply)({"params": params}, token, jnp.ones((4, 1), jnp.int32),
                                               cache=cache, cache_index=jnp.int32(7 + i))
            steps.append(step)
        outs[name] = steps
    valid = np.asarray(mask, bool)
    np.testing.assert_allclose(np.asarray(outs["xla"][0])[valid], np.asarray(outs["einsum"][0])[valid], **TOL)
    for a, b in zip(outs["einsum"][1:], outs["xla"][1:]):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), **TOL)


def test_greedy_sampling_equal_einsum():
    einsum, xla, params = _model()
    ids, mask = _padded("left", seed=5)
    kw = dict(max_new_tokens=6, greedy=True, eos_id=None, pad_id=0)
    want = sampler.generate(einsum, params, ids, mask, jax.random.key(0), **kw)
    got = sampler.generate(xla, params, ids, mask, jax.random.key(0), **kw)
    np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(want.tokens))
    np.testing.assert_allclose(np.asarray(got.logprobs), np.asarray(want.logprobs), **TOL)


def test_unknown_attention_is_rejected():
    with pytest.raises(ValueError, match="einsum, xla, cudnn"):
        attention_lib.check_impl("flash")
    einsum, _, params = _model()
    with pytest.raises(ValueError, match="unknown implementation 'flash'"):
        models.Decoder(einsum.config, attention="flash").apply({"params": params}, jnp.ones((1, 3), jnp.int32))
