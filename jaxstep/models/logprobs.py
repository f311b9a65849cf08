"""Per-token log-probabilities and entropies aligned with the token sequence.

Alignment (the `jaxstep.rl` token convention): for `input_ids [batch, time]`, index t
of every output refers to token t. The model's output at position t-1 predicts token
t, so `logprobs[:, t] = log p(input_ids[:, t] | input_ids[:, :t])` and index 0 (no
context) is 0.

Memory: the log-softmax is never materialised; log p = logit[token] - logsumexp(logits),
in float32. `response_logprobs` runs the LM head on the response-predicting positions
only and never builds `[batch, time, vocab]` logits. With `logits_chunk` > 0
(`model.logits_chunk`), `chunked_token_stats` runs it over `chunk` positions at a time
in a `lax.scan` whose body is rematerialised, so neither the forward nor the backward
pass holds more than `[batch, chunk, vocab]` float32 logits.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxstep.models.decoder import lm_logits


def response_logits(model, params, input_ids, attention_mask, positions, prompt_len: int):
    """Logits `[B, T, V]` (float32) that are real only where they predict a response
    token (positions P-1 .. T-2); elsewhere 0. The LM head runs on those R positions only.

    With `token_logprobs(logits, input_ids)` this gives exact log-probabilities on the
    response tokens (and -log V, masked away, on the prompt).
    """
    hidden = model.apply({"params": params}, input_ids, attention_mask=attention_mask,
                         positions=positions, lm_head=False)
    T = input_ids.shape[1]
    start = max(prompt_len - 1, 0)
    logits = lm_logits(model.config, params, hidden[:, start:T - 1])
    return jnp.pad(logits, ((0, 0), (start, 1), (0, 0)))  # [B, T, V]: positions start .. T-2 real


# ----------------------------------------------------------------------------- fused LM head

def head_token_stats(config, params: dict, hidden, targets, *, temperature: float = 1.0,
                     with_entropy: bool = False):
    """Log-probs (and entropies) of `targets` from final hidden states through the LM head,
    with a hand-written backward pass.

    Args:
      config: the Decoder's `ModelConfig`; params: its params (only the LM head is read).
      hidden: `[..., E]` final hidden states; position i predicts `targets[..., i]`.
      targets: `[...]` int token ids.

    Returns:
      `[...]` float32 log-probs, and with `with_entropy` also `[...]` float32 entropies.

    The value is the autodiff path's (`logits[target] - logsumexp(logits)`); the backward
    is one fused pass over the `[..., V]` logits, `d logits = onehot(target) * g - p * (g +
    g_ent * (log p + H))`, then the two matmuls, instead of autodiff's chain of vocab-sized
    passes through max, exp, the gather's scatter and a transposed copy (`tests/test_head_stats.py`).
    """
    lead = hidden.shape[:-1]
    h2 = hidden.reshape(-1, hidden.shape[-1])
    out = _head_stats(config, float(temperature), bool(with_entropy), h2, _head_params(config, params),
                      targets.reshape(-1).astype(jnp.int32))
    logp, entropy = (o.reshape(lead) for o in out)
    return (logp, entropy) if with_entropy else logp


def _head_stats_forward(config, temperature, with_entropy, h, head, targets):
    z = lm_logits(config, head, h)  # [N, V] float32
    if temperature != 1.0:
        z = z / temperature
    m = jax.lax.stop_gradient(z.max(-1, keepdims=True))
    e = jnp.exp(z - m)
    s = e.sum(-1)
    lse = m[:, 0] + jnp.log(s)
    picked = jnp.take_along_axis(z, targets[:, None], axis=-1)[:, 0]
    entropy = lse - (e * z).sum(-1) / s if with_entropy else jnp.zeros_like(lse)
    return (picked - lse, entropy), (h, head, targets, z, lse, entropy)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _head_stats(config, temperature, with_entropy, h, head, targets):
    return _head_stats_forward(config, temperature, with_entropy, h, head, targets)[0]


def _head_stats_backward(config, temperature, with_entropy, residuals, cotangents):
    h, head, targets, z, lse, entropy = residuals
    g_lp, g_ent = cotangents
    log_p = z - lse[:, None]
    scale = g_lp if not with_entropy else g_lp + g_ent * entropy
    # d logp / dz = onehot - p;  d H / dz = -p * (log p + H)
    dz = -jnp.exp(log_p) * (scale[:, None] + (g_ent[:, None] * log_p if with_entropy else 0.0))
    dz = dz + jnp.where(jnp.arange(z.shape[1])[None] == targets[:, None], g_lp[:, None], 0.0)
    if temperature != 1.0:
        dz = dz / temperature
    cd = config.compute_dtype
    dz = dz.astype(cd)
    (kernel,) = jax.tree.leaves(head)  # the tied embedding [V, E] or lm_head [E, V] (`lm_logits`)
    if config.tie_word_embeddings:
        dh = jnp.einsum("nv,ve->ne", dz, kernel.astype(cd), preferred_element_type=jnp.float32)
        dk = jnp.einsum("nv,ne->ve", dz, h.astype(cd), preferred_element_type=jnp.float32)
    else:
        dh = jnp.einsum("nv,ev->ne", dz, kernel.astype(cd), preferred_element_type=jnp.float32)
        dk = jnp.einsum("ne,nv->ev", h.astype(cd), dz, preferred_element_type=jnp.float32)
    return dh.astype(h.dtype), jax.tree.map(lambda _: dk.astype(kernel.dtype), head), None


_head_stats.defvjp(_head_stats_forward, _head_stats_backward)


def _head_params(config, params: dict) -> dict:
    """The LM head's own params (the tied embedding or `lm_head`), for `lm_logits`."""
    if config.tie_word_embeddings:
        return {"embed": {"embedding": params["embed"]["embedding"]}}
    return {"lm_head": params["lm_head"]}


def chunked_token_stats(config, params, hidden, targets, chunk: int, *, temperature: float = 1.0,
                        with_entropy: bool = False, with_hits: bool = False) -> dict:
    """Log-probs (and entropies, argmax hits) of `targets` without `[B, R, V]` logits.

    Args:
      config: the Decoder's `ModelConfig`; params: its params (only the LM head is read).
      hidden: `[B, R, E]` final hidden states (`lm_head=False`); position r predicts
        `targets[:, r]`.
      targets: `[B, R]` int token ids.
      chunk: positions per LM-head call (R is padded up to a multiple).
      temperature: logits are divided by it.

    Returns:
      `{"logprobs": [B, R] f32}` plus `"entropy"` `[B, R]` f32 (with_entropy) and
      `"hits"` `[B, R]` bool, argmax == target (with_hits). Each chunk's float32 logits
      `[B, chunk, V]` live only inside a rematerialised scan step, so the backward pass
      recomputes them instead of keeping all R positions.
    """
    B, R, E = hidden.shape
    n = -(-R // chunk)
    pad = n * chunk - R
    h = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(B, n, chunk, E).swapaxes(0, 1)
    t = jnp.pad(targets.astype(jnp.int32), ((0, 0), (0, pad))).reshape(B, n, chunk).swapaxes(0, 1)

    @jax.checkpoint
    def one(head, h_c, t_c):  # [B, C, E], [B, C] -> stats [B, C]
        if not with_hits:
            out = head_token_stats(config, head, h_c, t_c, temperature=temperature, with_entropy=with_entropy)
            return {"logprobs": out[0], "entropy": out[1]} if with_entropy else {"logprobs": out}
        logits = lm_logits(config, head, h_c).astype(jnp.float32)
        if temperature != 1.0:
            logits = logits / temperature
        lse = jax.nn.logsumexp(logits, axis=-1)
        picked = jnp.take_along_axis(logits, t_c[..., None], axis=-1)[..., 0]
        out = {"logprobs": picked - lse}
        if with_entropy:
            probs = jnp.exp(logits - lse[..., None])
            out["entropy"] = lse - jnp.sum(probs * logits, axis=-1)
        if with_hits:
            out["hits"] = jax.lax.stop_gradient(jnp.argmax(logits, axis=-1) == t_c)
        return out

    head = _head_params(config, params)
    _, stats = jax.lax.scan(lambda c, xs: (c, one(head, *xs)), None, (h, t))
    return {k: v.swapaxes(0, 1).reshape(B, n * chunk)[:, :R] for k, v in stats.items()}


def response_logprobs(model, params, input_ids, attention_mask, positions, prompt_len: int, *,
                      temperature: float = 1.0, with_entropy: bool = False, logits_chunk: int = 0):
    """Log-probabilities `[B, T]` float32 of the response tokens (positions P .. T-1; 0 on
    the prompt), aligned as `jaxstep.rl.logprobs.token_logprobs`, with the LM head run on
    the R response-predicting positions only and no `[B, T, V]` array (with
    `with_entropy`, also the entropies `[B, T]`, 0 on the prompt). `logits_chunk` > 0
    runs the head `chunk` positions at a time (`chunked_token_stats`): no `[B, R, V]`
    array either, equal values."""
    hidden = model.apply({"params": params}, input_ids, attention_mask=attention_mask,
                         positions=positions, lm_head=False)
    T = input_ids.shape[1]
    start = max(prompt_len, 1)
    if logits_chunk > 0:
        pad = ((0, 0), (start, 0))
        stats = chunked_token_stats(model.config, params, hidden[:, start - 1:T - 1], input_ids[:, start:],
                                    logits_chunk, temperature=temperature, with_entropy=with_entropy)
        logp = jnp.pad(stats["logprobs"], pad)
        return (logp, jnp.pad(stats["entropy"], pad)) if with_entropy else logp
    # [B, R] from hidden[:, start-1 .. T-2], which predict tokens start .. T-1
    out = head_token_stats(model.config, params, hidden[:, start - 1:T - 1], input_ids[:, start:],
                           temperature=temperature, with_entropy=with_entropy)
    pad = ((0, 0), (start, 0))
    if not with_entropy:
        return jnp.pad(out, pad)
    return jnp.pad(out[0], pad), jnp.pad(out[1], pad)


def _shift_right(x: jnp.ndarray) -> jnp.ndarray:
    """`[batch, time] -> [batch, time]` with out[:, t] = x[:, t-1] and out[:, 0] = 0."""
    return jnp.pad(x[:, :-1], ((0, 0), (1, 0)))


def token_logprobs(logits: jnp.ndarray, input_ids: jnp.ndarray, *, temperature: float = 1.0,
                   with_entropy: bool = False):
    """Log-probability of each token under `logits`.

    Args:
      logits: `[batch, time, vocab]` (any float dtype; computed in float32). Position t
        predicts token t+1.
      input_ids: `[batch, time]` int.
      temperature: the sampling temperature (logits are divided by it).
      with_entropy: also return the entropy of each predictive distribution.

    Returns:
      `[batch, time]` float32 logprobs (aligned: index t is token t, index 0 is 0), and
      with `with_entropy` also `[batch, time]` float32 entropies aligned the same way.
    """
    logits = logits.astype(jnp.float32)
    if temperature != 1.0:
        logits = logits / temperature
    next_ids = jnp.roll(input_ids, -1, axis=1)  # the last column wraps around; shifted out below
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, next_ids[..., None].astype(jnp.int32), axis=-1)[..., 0]
    logprobs = _shift_right(picked - lse)
    if not with_entropy:
        return logprobs
    probs = jnp.exp(logits - lse[..., None])
    entropy = lse - jnp.sum(probs * logits, axis=-1)
    return logprobs, _shift_right(entropy)
