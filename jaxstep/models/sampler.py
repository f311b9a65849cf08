"""Jitted KV-cache sampler: prefill, then decode in `lax.while_loop`.

    out = generate(model, params, prompt_ids, prompt_mask, key, max_new_tokens=128,
                   temperature=1.0, top_k=0, top_p=1.0, greedy=False, eos_id=2, pad_id=0)
    out.tokens, out.logprobs, out.sampling_logprobs, out.mask, out.lengths

Prompts `[batch, prompt_len]` may be left- or right-padded (each row's real tokens
contiguous, at least one); rows are left-aligned inside. One compiled function per
(model, prompt shape, structural settings) is cached; temperature, top_p, pad and
EOS/stop token ids are traced, so changing them does not recompile. The KV
cache (`[batch, kv_heads, prompt_len + max_new_tokens, head_dim]` per layer) is
allocated inside that function and lives in the while-loop carry, where XLA updates it
in place: a donated buffer without crossing the jit boundary. Responses longer than
`decode_block` (default `DECODE_BLOCK`) decode in segments of that many tokens, one
while loop each over a cache that ends at the segment's end (grown between segments),
so a step costs what the tokens so far cost, not the whole response's cache.

Per step: one decoder call on one token per row, the LM head (`decode_logits`, logits
`[vocab, batch]`, with the `[vocab, embed]` head as the matmul's left operand: the faster
way round on a CPU at a few rows), and the token choice (`jaxstep.models.token_choice`):
sampling by a two-level inverse CDF (a cumulative sum over blocks of 128 tokens, then
inside the chosen block), which needs one uniform number per row instead of `vocab`
Gumbel draws and no sort. top-k uses `lax.top_k`; top-p without top-k finds the nucleus
threshold by bisection on the probability (24 halvings), also without a sort.

Works under a mesh: shard the prompt batch over (data, fsdp) and the params as usual;
call inside `jaxstep.parallel.rules.activation_sharding(mesh, rules)` to also pin the
cache and activations to the batch sharding. Random numbers are drawn per row from
`fold_in(key, step)` with partitionable threefry, so the same key gives the same
samples with or without a mesh.
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxstep.models import token_choice as choice
from jaxstep.models.decoder import Decoder, cache_logical_axes, decode_head, decode_logits, init_cache

Array = jax.Array

# New tokens per decode segment (see `decode_segments`): each segment's steps attend over
# the cache up to the segment's end only. Responses of at most this many tokens compile to
# one loop over the whole cache.
DECODE_BLOCK = 128


class SampleOutput(NamedTuple):
    """Generated continuations (`new` = max_new_tokens).

    tokens: `[batch, new]` int32; `pad_id` after a row stops.
    logprobs: `[batch, new]` float32 log-prob of each token under the model's own
      distribution (temperature 1, no top-k/top-p): what PPO's ratio and KL use. 0 on
      padding, and 0 everywhere with `generate(..., with_logprobs=False)` except on
      plain sampling (temperature 1, no filter), where it costs nothing.
    sampling_logprobs: `[batch, new]` float32 log-prob under the distribution actually
      sampled from (after temperature, top-k, top-p); 0 for greedy and on padding.
    mask: `[batch, new]` int32, 1 on generated tokens up to and including EOS or the
      last token of a stop sequence.
    lengths: `[batch]` int32 number of generated tokens (= mask.sum(-1)).
    """

    tokens: Array
    logprobs: Array
    sampling_logprobs: Array
    mask: Array
    lengths: Array


class _Static(NamedTuple):
    """Settings that change the compiled program (everything else is traced)."""

    max_new_tokens: int
    greedy: bool
    top_k: int  # 0 = off
    top_p: bool  # nucleus filter on
    plain: bool  # temperature 1, no filters: the sampling log-prob is the raw one
    cache_dtype: str | None
    decode_block: int = 0  # new tokens per decode segment (0 or >= max_new_tokens: one segment)
    logprobs: bool = True  # compute the raw log-probs (a log-sum-exp over the vocabulary per step)


class _Dynamic(NamedTuple):
    """Traced settings: new values reuse the compiled program."""

    temperature: Array  # f32 scalar
    top_p: Array  # f32 scalar
    pad_id: Array  # i32 scalar
    eos_ids: Array  # i32 [n_eos]
    stop_sequences: Array  # i32 [n_stop, width], right-aligned, -1 = no token


def _choose(logits: Array, key: Array, st: _Static, dyn: _Dynamic) -> tuple[Array, Array, Array]:
    """(token, raw log-prob, sampling log-prob), each `[B]`, from float32 logits `[V, B]`
    (vocabulary-major, `decode_logits`). Without `st.logprobs` the raw log-prob is 0 and
    its log-sum-exp is not computed (on plain sampling it comes free with the sample).
    top-k and top-p work on the logits transposed to `[B, V]`."""

    def raw_logprob(logits, token, axis):
        if not st.logprobs:
            return jnp.zeros(token.shape, jnp.float32)
        return choice.token_logprob(logits, token, axis)

    if st.greedy:
        token = choice.greedy_argmax(logits, 0)
        raw = raw_logprob(logits, token, 0)
        return token, raw, jnp.zeros_like(raw)
    if st.plain:
        token, sampling = choice.categorical_with_logprob(key, logits, 0)
        return token, sampling, sampling
    if not (st.top_k or st.top_p):
        token, sampling = choice.categorical_with_logprob(key, logits / dyn.temperature, 0)
        return token, raw_logprob(logits, token, 0), sampling
    logits = logits.T
    scaled = logits / dyn.temperature
    if st.top_k:
        values, indices = jax.lax.top_k(scaled, st.top_k)  # sorted descending
        if st.top_p:
            values = jnp.where(choice.sorted_top_p_mask(values, dyn.top_p), values, -jnp.inf)
        picked, sampling = choice.categorical_with_logprob(key, values)
        token = jnp.take_along_axis(indices, picked[:, None], 1)[:, 0].astype(jnp.int32)
    else:
        token, sampling = choice.categorical_with_logprob(key, choice.top_p_filter(scaled, dyn.top_p))
    return token, raw_logprob(logits, token, 1), sampling


def _hits_stop(recent: Array, token: Array, dyn: _Dynamic) -> Array:
    """Whether `token` `[B]` is EOS or ends a stop sequence (`recent` `[B, width]` ends with it)."""
    hit = jnp.any(token[:, None] == dyn.eos_ids[None, :], axis=-1)
    stops = dyn.stop_sequences  # [n_stop, width]
    if stops.shape[0]:
        width = stops.shape[1]
        tail = recent[:, None, recent.shape[1] - width:]  # [B, 1, width]
        match = (tail == stops[None]) | (stops[None] < 0)
        hit |= jnp.any(jnp.all(match, axis=-1), axis=-1)
    return hit


def _left_align(ids: Array, mask: Array) -> tuple[Array, Array]:
    """Rolls each row right so its (contiguous) real tokens end at the last column."""
    P = ids.shape[1]
    last_real = P - 1 - jnp.argmax(mask[:, ::-1], axis=1)  # index of each row's last real token
    shift = (P - 1 - last_real)[:, None]
    src = (jnp.arange(P)[None] - shift) % P
    return jnp.take_along_axis(ids, src, 1), jnp.take_along_axis(mask, src, 1)


# ----------------------------------------------------------------------------- generate


def decode_segments(max_new_tokens: int, block: int) -> list[tuple[int, int, int]]:
    """The decode loop's segments: `(first step, end step, cache slots after the prompt)`.

    Step t (1 <= t < max_new_tokens) feeds token t-1 and writes cache slot
    prompt_len + t - 1; segment s runs steps [max(1, s*block), min((s+1)*block, new))
    over a cache of prompt_len + min((s+1)*block, new) slots. `block` 0 or >= new: one
    segment over the whole cache. E.g. (10, 4) -> [(1, 4, 4), (4, 8, 8), (8, 10, 10)].
    """
    if block <= 0 or max_new_tokens <= block:
        return [(1, max_new_tokens, max_new_tokens)]
    ends = list(range(block, max_new_tokens, block)) + [max_new_tokens]
    return [(max(1, start), end, end) for start, end in zip([0] + ends[:-1], ends)]


def _grow_cache(cfg, cache: dict, length: int) -> dict:
    """The cache with masked zero slots appended up to `length` slots (same sharding)."""
    extra = length - cache["mask"].shape[1]
    pad = lambda x, axis: jnp.pad(x, [(0, extra if a == axis else 0) for a in range(x.ndim)])  # noqa: E731
    grown = {"mask": pad(cache["mask"], 1),
             "layers": [{"k": pad(layer["k"], 3), "v": pad(layer["v"], 2)} for layer in cache["layers"]]}
    return nn.with_logical_constraint(grown, cache_logical_axes(cfg))


def _build(model: Decoder, st: _Static):
    cfg = model.config
    N = st.max_new_tokens

    def step_logits(params, head, token, position, cache, slot):
        hidden, cache = model.apply({"params": params}, token[:, None],
                                    attention_mask=jnp.ones_like(token[:, None], bool),
                                    positions=position[:, None], cache=cache, cache_index=slot,
                                    lm_head=False)
        return decode_logits(cfg, head, hidden[:, 0]), cache

    segments = decode_segments(N, st.decode_block)

    def run(params, prompt_ids, prompt_mask, key, dyn: _Dynamic):
        B, P = prompt_ids.shape
        ids, mask = _left_align(prompt_ids.astype(jnp.int32), prompt_mask.astype(jnp.int32))
        prompt_lengths = mask.sum(-1)
        cache = init_cache(cfg, B, P + segments[0][2], st.cache_dtype)
        cache = nn.with_logical_constraint(cache, cache_logical_axes(cfg))
        hidden, cache = model.apply({"params": params}, ids, attention_mask=mask, cache=cache,
                                    cache_index=0, lm_head=False)
        head = decode_head(cfg, params)  # [V, E], made once for every step
        logits = decode_logits(cfg, head, hidden[:, -1])

        def emit(t, logits, state):
            tokens, logprobs, sampling, out_mask, done, recent = state
            token, raw, samp = _choose(logits, jax.random.fold_in(key, t), st, dyn)
            live = ~done
            token = jnp.where(live, token, dyn.pad_id)
            recent = jnp.concatenate([recent[:, 1:], token[:, None]], axis=1)
            done = done | (live & _hits_stop(recent, token, dyn))
            put = lambda buf, v: jax.lax.dynamic_update_slice(buf, v[:, None].astype(buf.dtype), (0, t))  # noqa: E731
            return token, (put(tokens, token), put(logprobs, jnp.where(live, raw, 0.0)),
                           put(sampling, jnp.where(live, samp, 0.0)), put(out_mask, live),
                           done, recent)

        stop_width = max(dyn.stop_sequences.shape[1], 1)
        state = (jnp.full((B, N), dyn.pad_id, jnp.int32), jnp.zeros((B, N), jnp.float32),
                 jnp.zeros((B, N), jnp.float32), jnp.zeros((B, N), jnp.int32),
                 jnp.zeros((B,), bool), jnp.full((B, stop_width), -1, jnp.int32))
        token, state = emit(0, logits, state)

        def body(carry):
            t, token, cache, state = carry
            logits, cache = step_logits(params, head, token, prompt_lengths + t - 1, cache, P + t - 1)
            token, state = emit(t, logits, state)
            return t + 1, token, cache, state

        # One while loop per segment, each with a cache of static length P + slots: a
        # step attends over the slots of its segment, not the whole response's. The
        # cache grows (zero slots, masked) between segments; a segment whose rows have
        # all stopped runs no step.
        carry = (jnp.int32(1), token, cache, state)
        for _, end, slots in segments:
            if carry[2]["mask"].shape[1] < P + slots:
                carry = carry[:2] + (_grow_cache(cfg, carry[2], P + slots),) + carry[3:]
            cond = lambda c, end=end: (c[0] < end) & ~jnp.all(c[3][4])  # noqa: E731
            carry = jax.lax.while_loop(cond, body, carry)
        tokens, logprobs, sampling, out_mask, _, _ = carry[3]
        return SampleOutput(tokens, logprobs, sampling, out_mask, out_mask.sum(-1).astype(jnp.int32))

    return jax.jit(run)


@functools.lru_cache(maxsize=64)
def _compiled(model: Decoder, static: _Static, rules, mesh):
    del rules, mesh  # part of the cache key only: the trace depends on them
    return _build(model, static)


def _stop_array(stop_sequences: Sequence[Sequence[int]]) -> Array:
    seqs = [[int(t) for t in seq] for seq in stop_sequences if len(seq)]
    width = max([len(q) for q in seqs] + [0])
    out = np.full((len(seqs), width), -1, np.int32)
    for i, seq in enumerate(seqs):
        if min(seq) < 0:
            raise ValueError(f"generate: stop sequence {seq} has a negative token id.")
        out[i, width - len(seq):] = seq
    return jnp.asarray(out)


def generate(model: Decoder, params: dict, prompt_ids: Array, prompt_mask: Array, key: Array, *,
             max_new_tokens: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             greedy: bool = False, eos_id: int | Sequence[int] | None, pad_id: int,
             stop_sequences: Sequence[Sequence[int]] = (), cache_dtype=None,
             decode_block: int = DECODE_BLOCK, with_logprobs: bool = True) -> SampleOutput:
    """Samples up to `max_new_tokens` tokens after each prompt.

    Args:
      model: a `Decoder`; params: its params.
      prompt_ids: `[batch, prompt_len]` int token ids, padded left (or right).
      prompt_mask: `[batch, prompt_len]` 1 on real prompt tokens (>= 1 per row).
      key: jax PRNG key; the same key gives the same samples.
      max_new_tokens: tokens generated at most.
      temperature: softmax temperature (> 0). top_k: keep the k most likely tokens
        (0 = off). top_p: nucleus mass (1.0 = off). greedy: argmax, ignores the three.
      eos_id: one id or several; a row stops after emitting one (None = never).
      pad_id: written after a row stops.
      stop_sequences: token-id sequences; a row stops after emitting one (the sequence
        stays in the output and the mask).
      cache_dtype: KV cache dtype (default the model's compute dtype).
      decode_block: new tokens per decode segment; a step attends over the prompt and
        the slots up to its segment's end (`decode_segments`). 0 = one segment.
      with_logprobs: compute `logprobs` (False: tokens only, e.g. greedy evals; saves a
        log-sum-exp over the vocabulary per step).

    Compiles once per (model, prompt shape, max_new_tokens, decode_block, with_logprobs, greedy, top_k,
    top_p on/off, temperature == 1 and no filter, number of EOS ids, stop-sequence shape);
    temperature, top_p, pad_id and the token ids themselves are traced.

    Returns:
      `SampleOutput` (see there).
    """
    if max_new_tokens < 1:
        raise ValueError(f"generate: max_new_tokens must be >= 1, got {max_new_tokens}.")
    if not greedy and temperature <= 0:
        raise ValueError(f"generate: temperature must be > 0 (or greedy=True), got {temperature}.")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"generate: top_p must be in (0, 1], got {top_p}.")
    if top_k < 0:
        raise ValueError(f"generate: top_k must be >= 0, got {top_k}.")
    if decode_block < 0:
        raise ValueError(f"generate: decode_block must be >= 0, got {decode_block}.")
    vocab = model.config.vocab_size
    top_k = int(top_k) if top_k < vocab else 0
    eos_ids = () if eos_id is None else (eos_id,) if isinstance(eos_id, int) else tuple(eos_id)
    plain = (not greedy) and temperature == 1.0 and top_p >= 1.0 and not top_k
    static = _Static(
        max_new_tokens=int(max_new_tokens), greedy=bool(greedy),
        top_k=0 if greedy else top_k, top_p=(not greedy) and top_p < 1.0, plain=plain,
        cache_dtype=None if cache_dtype is None else jnp.dtype(cache_dtype).name,
        # one segment whenever it covers the response: the same program (and cache key)
        decode_block=int(decode_block) if 0 < decode_block < max_new_tokens else 0,
        # plain sampling gets its log-probs with the sample: one program either way
        logprobs=bool(with_logprobs) or plain)
    dynamic = _Dynamic(jnp.float32(temperature if not greedy else 1.0), jnp.float32(top_p),
                       jnp.int32(pad_id), jnp.asarray(eos_ids, jnp.int32).reshape(-1),
                       _stop_array(stop_sequences))
    rules = nn.get_logical_axis_rules()
    mesh = jax.sharding.get_abstract_mesh()
    fn = _compiled(model, static, tuple(rules) if rules else (), None if mesh.empty else mesh)
    return fn(params, prompt_ids, prompt_mask, key, dynamic)
