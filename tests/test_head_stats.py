"""`jaxstep.models.logprobs.head_token_stats` (the LM head's log-probs and entropies with a
hand-written backward pass) against the textbook formulas differentiated by JAX: values,
and gradients for the hidden states and the head weights under random cotangents."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstep import models
from jaxstep.models.logprobs import head_token_stats

V, E = 97, 16


def _reference(hidden, kernel, targets, tied, temperature):
    """log_softmax / entropy written out: logits = h W, log p = logits - logsumexp."""
    logits = (hidden @ (kernel.T if tied else kernel)) / temperature  # [B, R, V]
    log_p = jax.nn.log_softmax(logits, axis=-1)
    logp = jnp.take_along_axis(log_p, targets[..., None], axis=-1)[..., 0]
    entropy = -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)
    return logp, entropy


def _setup(tied, seed=0):
    config = models.tiny(vocab_size=V, hidden_size=E, tie_word_embeddings=tied)
    rng = np.random.default_rng(seed)
    kernel = jnp.asarray(rng.normal(0, 0.5, (V, E) if tied else (E, V)), jnp.float32)
    params = {"embed": {"embedding": kernel}} if tied else {"lm_head": kernel}
    hidden = jnp.asarray(rng.normal(0, 1.0, (3, 5, E)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, V, (3, 5)), jnp.int32)
    g_lp = jnp.asarray(rng.normal(0, 1.0, (3, 5)), jnp.float32)
    g_ent = jnp.asarray(rng.normal(0, 1.0, (3, 5)), jnp.float32)
    return config, params, kernel, hidden, targets, g_lp, g_ent


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_values_and_gradients_equal_autodiff_of_the_formula(tied, temperature):
    config, params, kernel, hidden, targets, g_lp, g_ent = _setup(tied)

    def ours(h, k):
        p = {"embed": {"embedding": k}} if tied else {"lm_head": k}
        lp, ent = head_token_stats(config, p, h, targets, temperature=temperature, with_entropy=True)
        return jnp.sum(lp * g_lp) + jnp.sum(ent * g_ent), (lp, ent)

    def ref(h, k):
        lp, ent = _reference(h, k, targets, tied, temperature)
        return jnp.sum(lp * g_lp) + jnp.sum(ent * g_ent), (lp, ent)

    (_, ours_vals), ours_grads = jax.value_and_grad(ours, argnums=(0, 1), has_aux=True)(hidden, kernel)
    (_, ref_vals), ref_grads = jax.value_and_grad(ref, argnums=(0, 1), has_aux=True)(hidden, kernel)
    for a, b in zip(ours_vals + ours_grads, ref_vals + ref_grads):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(ours_grads[1]).max()) > 1e-3  # the head's gradient is not trivially 0


def test_without_entropy_the_log_prob_gradient_alone():
    config, params, kernel, hidden, targets, g_lp, _ = _setup(True, seed=3)
    f = lambda h, k: jnp.sum(g_lp * head_token_stats(config, {"embed": {"embedding": k}}, h, targets))  # noqa: E731
    g = lambda h, k: jnp.sum(g_lp * _reference(h, k, targets, True, 1.0)[0])  # noqa: E731
    for a, b in zip(jax.grad(f, (0, 1))(hidden, kernel), jax.grad(g, (0, 1))(hidden, kernel)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    # log-probs of a distribution: each row's probabilities over the vocabulary sum to 1
    all_targets = jnp.broadcast_to(jnp.arange(V), (2, V))
    lp = head_token_stats(config, params, jnp.broadcast_to(hidden[0, :2, None], (2, V, E)), all_targets)
    np.testing.assert_allclose(np.asarray(jnp.exp(lp).sum(-1)), 1.0, rtol=1e-5)
