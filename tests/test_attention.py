"""`Decoder(attention="xla")` (jax.nn.dot_product_attention) equals the einsum path in
float32: padding masks on either side, causal, sliding window, the KV-cache prefill and
decode steps, gradients and greedy sampling."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_helpers import check_forward_and_gradient, model_pair, padded
from jaxstep import models
from jaxstep.models import attention as attention_lib
from jaxstep.models import sampler
from jaxstep.models.decoder import init_cache

TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("side,overrides", [("left", {}), ("right", {}),
                                            ("left", {"model_type": "llama", "sliding_window": 3}),
                                            ("right", {"model_type": "opt"})])
def test_forward_and_gradient_equal_einsum(side, overrides):
    check_forward_and_gradient("xla", side, overrides, TOL)


def test_kv_cache_prefill_and_decode_equal_einsum():
    einsum, xla, params = model_pair("xla")
    ids, mask = padded("left", seed=3)
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
    einsum, xla, params = model_pair("xla")
    ids, mask = padded("left", seed=5)
    kw = dict(max_new_tokens=6, greedy=True, eos_id=None, pad_id=0)
    want = sampler.generate(einsum, params, ids, mask, jax.random.key(0), **kw)
    got = sampler.generate(xla, params, ids, mask, jax.random.key(0), **kw)
    np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(want.tokens))
    np.testing.assert_allclose(np.asarray(got.logprobs), np.asarray(want.logprobs), **TOL)


def test_unknown_attention_is_rejected():
    with pytest.raises(ValueError, match="einsum, xla, cudnn"):
        attention_lib.check_impl("flash")
    einsum, _, params = model_pair("xla")
    with pytest.raises(ValueError, match="unknown implementation 'flash'"):
        models.Decoder(einsum.config, attention="flash").apply({"params": params}, jnp.ones((1, 3), jnp.int32))
