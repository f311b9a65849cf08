"""Shared by the attention-implementation tests (test_attention.py, test_splash_attention.py)
and the sampler tests (test_sampler.py, test_sampler_segments.py): tiny random decoders,
padded batches, and the forward + gradient comparison against the einsum path."""
import jax
import jax.numpy as jnp
import numpy as np

from jaxstep import models

PAD = 0


def model_pair(impl: str, **overrides):
    """`(einsum decoder, decoder with attention=impl, params)` of one tiny config; weights
    8x the 0.02 init so attention is far from uniform and a wrong mask shows."""
    config = models.tiny(32, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                         intermediate_size=64, **overrides)
    einsum = models.Decoder(config)
    params = models.init_params(einsum, jax.random.key(1))
    params = jax.tree.map(lambda x: x * 8.0 if x.ndim >= 2 else x, params)
    return einsum, models.Decoder(config, attention=impl), params


def padded(side: str, seed: int = 0, length: int = 7):
    """ids, mask `[4, length]` with rows of `length`, 3, 5 and 1 real tokens, padded on `side`."""
    rng = np.random.default_rng(seed)
    lengths = np.array([length, 3, 5, 1])
    ids = rng.integers(1, 32, (4, length)).astype(np.int32)
    t = np.arange(length)[None]
    mask = (t >= length - lengths[:, None]) if side == "left" else (t < lengths[:, None])
    return jnp.asarray(np.where(mask, ids, 0)), jnp.asarray(mask.astype(np.int32))


def check_forward_and_gradient(impl: str, side: str, overrides: dict, tol: dict) -> None:
    """`attention=impl` gives the einsum path's logits on real tokens (within `tol`) and its
    parameter gradients (within 1e-4)."""
    einsum, other, params = model_pair(impl, **overrides)
    ids, mask = padded(side)
    want = np.asarray(einsum.apply({"params": params}, ids, mask))
    got = np.asarray(other.apply({"params": params}, ids, mask))
    valid = np.asarray(mask, bool)
    np.testing.assert_allclose(got[valid], want[valid], **tol)
    assert np.abs(want[valid]).max() > 1.0  # not a degenerate near-zero output

    def loss(p, model):
        logits = model.apply({"params": p}, ids, mask)
        return jnp.sum(jnp.where(mask[..., None] > 0, jax.nn.log_softmax(logits) * logits, 0.0))
    g_want = jax.grad(loss)(params, einsum)
    g_got = jax.grad(loss)(params, other)
    for a, b in zip(jax.tree.leaves(g_want), jax.tree.leaves(g_got)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-4)


def left_padded(vocab: int, lengths, total: int, seed: int = 0):
    """Random ids (>= 3) `[len(lengths), total]`, left-padded with PAD, and their mask."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, (len(lengths), total)).astype(np.int32)
    mask = (np.arange(total)[None] >= total - np.asarray(lengths)[:, None]).astype(np.int32)
    return np.where(mask == 1, ids, PAD).astype(np.int32), mask


def small_sampler_model():
    """A tiny random Qwen2 with a 16-token vocabulary and peaked logits: `(model, params)`."""
    config = models.tiny(16, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                         intermediate_size=64)
    model = models.Decoder(config)
    params = models.init_params(model, jax.random.key(0))
    params = jax.tree.map(lambda x: x * 3.0 if x.ndim == 2 and x.shape[0] == 16 else x, params)
    return model, params
