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
    logits = lm_logits(model.config, params, hidden[:, start - 1:T - 1])  # [B, R, V], predicts start..T-1
    logits = logits.astype(jnp.float32)
    if temperature != 1.0:
        logits = logits / temperature
    targets = input_ids[:, start:]
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    pad = ((0, 0), (start, 0))
    logp = jnp.pad(picked - lse, pad)
    if not with_entropy:
        return logp
    probs = jnp.exp(logits - lse[..., None])
    entropy = lse - jnp.sum(probs * logits, axis=-1)
    return logp, jnp.pad(entropy, pad)


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
