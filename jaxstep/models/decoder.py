"""`Decoder`: one flax.linen causal LM for the Llama/Qwen2 family and OPT.

    model = Decoder(config)
    logits = model.apply({"params": params}, input_ids, attention_mask=None, positions=None)
    logits, cache = model.apply({"params": params}, ids, attention_mask=m, cache=cache,
                                cache_index=i)

Inputs may be left- or right-padded: `attention_mask` `[batch, time]` is 1 on real
tokens. Without `positions`, positions are derived from the mask (cumsum - 1, as
transformers does), so a left-padded prompt starts at position 0.

KV cache (for the sampler): `init_cache(config, batch, max_len)` returns
`{"mask": bool[batch, max_len], "layers": [{"k": [batch, kv_heads, head_dim, max_len],
"v": [batch, kv_heads, max_len, head_dim]}, ...]}`. A call with `cache=` writes its
keys/values and mask at slots `[cache_index, cache_index + time)` and attends over
every valid slot up to the query's own slot, so prefill writes `[0, T)` and each decode
step one slot. Keys are stored transposed so that both attention products of a decode
step (`q.K` and `p.V`) read the cache contiguously and write contiguous outputs, with
no transpose of the cache (measured ~5x faster on CPU than keys as `[.., slot, head_dim]`).

Parameters carry logical axis names (`vocab`, `embed`, `heads`, `kv_heads`,
`head_dim`, `mlp`) and activations logical constraints (`batch`, `length`, `embed`);
`jaxstep.parallel.rules` maps them to mesh axes. Every computation runs in
`config.dtype`; norms, softmax and logits in float32.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxstep.models import attention as attention_lib
from jaxstep.models.config import ModelConfig
from jaxstep.models.layers import RMSNorm, _constrain, _dense, _init, _norm

Array = jax.Array
Cache = dict[str, Any]


# ----------------------------------------------------------------------------- cache


def init_cache(config: ModelConfig, batch: int, max_len: int, dtype=None) -> Cache:
    """Preallocated KV cache of `max_len` slots per sample (zeros, all slots invalid).

    Returns `{"mask": bool[batch, max_len], "layers": [{"k": ..., "v": ...}] * num_layers}`
    with `k` `[batch, kv_heads, head_dim, max_len]` and `v` `[batch, kv_heads, max_len,
    head_dim]` in `dtype` (default: the compute dtype).
    """
    dtype = jnp.dtype(dtype or config.dtype)
    k_shape = (batch, config.num_kv_heads, config.head_size, max_len)
    v_shape = (batch, config.num_kv_heads, max_len, config.head_size)
    layers = [{"k": jnp.zeros(k_shape, dtype), "v": jnp.zeros(v_shape, dtype)}
              for _ in range(config.num_layers)]
    return {"mask": jnp.zeros((batch, max_len), bool), "layers": layers}


def cache_logical_axes(config: ModelConfig) -> Cache:
    """Logical axis names of the cache pytree (for sharding it like activations)."""
    k = ("batch", "kv_heads", "head_dim", "length")
    v = ("batch", "kv_heads", "length", "head_dim")
    return {"mask": ("batch", "length"),
            "layers": [{"k": k, "v": v} for _ in range(config.num_layers)]}


# ----------------------------------------------------------------------------- helpers


def derive_positions(mask: Array, is_opt: bool) -> Array:
    """Position ids from a `[batch, time]` 0/1 mask: cumsum - 1 on real tokens.

    Padding gets -1 for OPT (table row 1 after the offset, as transformers) and 0
    otherwise; padded positions only feed padded outputs.
    """
    mask = mask.astype(jnp.int32)
    pos = jnp.cumsum(mask, axis=-1) - 1
    return pos * mask - (1 - mask) if is_opt else jnp.maximum(pos, 0)


def rope_inv_freq(config: ModelConfig) -> np.ndarray:
    """`[head_dim // 2]` float32 inverse frequencies, incl. linear and llama3 scaling."""
    dim = config.head_size
    inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim))
    inv_freq = inv_freq.astype(np.float32)
    scaling = config.rope_scaling_dict
    rope_type = scaling.get("rope_type", "default")
    if rope_type == "linear":
        inv_freq = inv_freq / np.float32(scaling["factor"])
    elif rope_type == "llama3":
        factor = scaling["factor"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        inv_freq = np.where(medium, smoothed, scaled).astype(np.float32)
    return inv_freq


def apply_rope(x: Array, positions: Array, inv_freq: np.ndarray) -> Array:
    """Rotates `x` `[batch, time, heads, head_dim]` by `positions` `[batch, time]` (HF rotate_half)."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [B, T, D/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(emb).astype(x.dtype), jnp.sin(emb).astype(x.dtype)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


# ----------------------------------------------------------------------------- blocks


def _einsum_attention(qg: Array, k: Array, v: Array, allowed: Array, *, cached: bool, dtype) -> Array:
    """The explicit-scores attention ("einsum"): qg `[B, T, K, G, D]`; k, v `[B, S, K, D]`
    (or the cache layouts `[B, K, D, S]`, `[B, K, S, D]` when `cached`); allowed
    `[B, T, S]`. Float32 scores and softmax; returns `[B, T, K, G, D]`."""
    T, D = qg.shape[1], qg.shape[-1]
    if not cached:
        scores = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32)
    elif T == 1:
        scores = jnp.einsum("bkgd,bkds->bkgs", qg[:, 0], k, preferred_element_type=jnp.float32)[:, :, :, None]
    else:
        scores = jnp.einsum("btkgd,bkds->bkgts", qg, k, preferred_element_type=jnp.float32)
    scores = scores * (D ** -0.5)
    scores = jnp.where(allowed[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    if not cached:
        return jnp.einsum("bkgts,bskd->btkgd", probs, v)
    if T == 1:
        return jnp.einsum("bkgs,bksd->bkgd", probs[:, :, :, 0], v)[:, None]
    return jnp.einsum("bkgts,bksd->btkgd", probs, v)


class Attention(nn.Module):
    """Multi-head attention with GQA, RoPE (Llama family) and an optional KV cache;
    `impl` picks the attention product (`jaxstep.models.attention.ATTENTION_IMPLS`)."""

    config: ModelConfig
    impl: str = "einsum"

    @nn.compact
    def __call__(self, x: Array, positions: Array, kv_mask: Array, query_slots: Array,
                 layer_cache: dict | None, cache_index) -> tuple[Array, dict | None]:
        """x `[B, T, embed]`; kv_mask `[B, S]` valid key slots; query_slots `[T]` the
        slot of each query (keys at later slots are masked)."""
        cfg = self.config
        H, K, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_size
        qkv_bias = cfg.enable_bias if cfg.is_opt else cfg.attention_bias
        out_bias = cfg.enable_bias if cfg.is_opt else cfg.attention_out_bias
        q = _dense((H, D), ("embed", "heads", "head_dim"), qkv_bias, cfg, "q_proj")(x)
        k = _dense((K, D), ("embed", "kv_heads", "head_dim"), qkv_bias, cfg, "k_proj")(x)
        v = _dense((K, D), ("embed", "kv_heads", "head_dim"), qkv_bias, cfg, "v_proj")(x)
        if cfg.qk_norm:
            q = RMSNorm(cfg.norm_eps, cfg.compute_dtype, cfg.params_dtype, "head_dim", name="q_norm")(q)
            k = RMSNorm(cfg.norm_eps, cfg.compute_dtype, cfg.params_dtype, "head_dim", name="k_norm")(k)
        if not cfg.is_opt:
            inv_freq = rope_inv_freq(cfg)
            q = apply_rope(q, positions, inv_freq)
            k = apply_rope(k, positions, inv_freq)
        q = _constrain(q, ("batch", "length", "heads", "head_dim"))
        B, T = x.shape[:2]
        G = H // K
        qg = q.reshape(B, T, K, G, D)  # head h uses kv head h // G, as transformers' repeat_kv
        if layer_cache is not None:
            # Cache layouts: keys [B, K, D, S], values [B, K, S, D]. A decode step's two
            # attention products then contract a contiguous axis with the output along
            # a contiguous axis (about 5x faster on CPU than the [B, K, S, D] key layout).
            kc = jax.lax.dynamic_update_slice(
                layer_cache["k"], k.transpose(0, 2, 3, 1).astype(layer_cache["k"].dtype),
                (0, 0, 0, cache_index))
            vc = jax.lax.dynamic_update_slice(
                layer_cache["v"], v.transpose(0, 2, 1, 3).astype(layer_cache["v"].dtype),
                (0, 0, cache_index, 0))
            layer_cache = {"k": kc, "v": vc}
            if isinstance(cache_index, int):
                # A static start (e.g. prefill at 0): later slots are masked for every
                # query anyway, so attend over [0, cache_index + T) only.
                kc, vc = kc[..., :cache_index + T], vc[:, :, :cache_index + T]
                kv_mask = kv_mask[:, :cache_index + T]
            k, v = kc.astype(cfg.compute_dtype), vc.astype(cfg.compute_dtype)
        S = k.shape[3] if layer_cache is not None else T
        key_slots = jnp.arange(S)
        allowed = key_slots[None, :] <= query_slots[:, None]  # [T, S] causal
        if cfg.sliding_window:
            allowed &= query_slots[:, None] - key_slots[None, :] < cfg.sliding_window
        allowed = allowed[None] & kv_mask[:, None, :].astype(bool)  # [B, T, S]
        if self.impl == "splash" and layer_cache is None:  # TPU flash kernel (training, scoring)
            out = attention_lib.splash_attention(q, k, v, kv_mask, cfg.sliding_window)
        elif self.impl in ("einsum", "splash"):  # splash decodes with the cache through einsum
            out = _einsum_attention(qg, k, v, allowed, cached=layer_cache is not None,
                                    dtype=cfg.compute_dtype)
        else:  # jax.nn.dot_product_attention (jaxstep.models.attention)
            if layer_cache is not None:
                k, v = attention_lib.cache_keys_values(k, v)
            out = attention_lib.library_attention(q, k, v, allowed, self.impl)
        out = out.reshape(B, T, H, D)
        out = _constrain(out, ("batch", "length", "heads", "head_dim"))
        out = _dense(cfg.hidden_size, ("heads", "head_dim", "embed"), out_bias, cfg, "o_proj",
                     num_in=2)(out)
        return out, layer_cache


class MLP(nn.Module):
    """SwiGLU (Llama family) or a plain ReLU/GELU MLP (OPT)."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        bias = cfg.enable_bias if cfg.is_opt else cfg.mlp_bias
        up = _dense(cfg.intermediate_size, ("embed", "mlp"), bias, cfg, "up_proj")(x)
        if cfg.gated_mlp:
            gate = _dense(cfg.intermediate_size, ("embed", "mlp"), bias, cfg, "gate_proj")(x)
            h = jax.nn.silu(gate) * up
        elif cfg.activation == "relu":
            h = jax.nn.relu(up)
        else:
            h = jax.nn.gelu(up, approximate=False)
        h = _constrain(h, ("batch", "length", "mlp"))
        return _dense(cfg.hidden_size, ("mlp", "embed"), bias, cfg, "down_proj")(h)


class Block(nn.Module):
    """One decoder layer: pre-norm residual blocks (OPT may put the norms after)."""

    config: ModelConfig
    attention: str = "einsum"  # the attention product (jaxstep.models.attention)

    @nn.compact
    def __call__(self, x, positions, kv_mask, query_slots, layer_cache, cache_index):
        cfg = self.config
        post_norm = cfg.is_opt and not cfg.do_layer_norm_before
        attn_norm, mlp_norm = _norm(cfg, "attn_norm"), _norm(cfg, "mlp_norm")
        h = x if post_norm else attn_norm(x)
        h, layer_cache = Attention(cfg, self.attention, name="attn")(h, positions, kv_mask, query_slots,
                                                     layer_cache, cache_index)
        x = x + h
        if post_norm:
            x = attn_norm(x)
        h = MLP(cfg, name="mlp")(x if post_norm else mlp_norm(x))
        x = x + h
        if post_norm:
            x = mlp_norm(x)
        return _constrain(x, ("batch", "length", "embed")), layer_cache


# ----------------------------------------------------------------------------- decoder


def _project(config: ModelConfig, hidden: Array, kernel: Array) -> Array:
    """Logits (float32) from hidden `[..., embed_dim]` and the tied embedding
    `[vocab, embed_dim]` or the LM head `[embed_dim, vocab]` (no transpose copy)."""
    spec = "...e,ve->...v" if config.tie_word_embeddings else "...e,ev->...v"
    return jnp.einsum(spec, hidden.astype(config.compute_dtype),
                      kernel.astype(config.compute_dtype), preferred_element_type=jnp.float32)


def lm_logits(config: ModelConfig, params: dict, hidden: Array) -> Array:
    """The LM head alone: hidden `[..., embed_dim]` (from `lm_head=False`) -> float32
    logits `[..., vocab]`, e.g. for the last prompt position only."""
    kernel = params["embed"]["embedding"] if config.tie_word_embeddings else params["lm_head"]
    return _project(config, hidden, kernel)


def decode_head(config: ModelConfig, params: dict) -> Array:
    """The LM head as `decode_logits` takes it, `[vocab, embed_dim]`: the tied embedding
    itself, or the untied `[embed_dim, vocab]` head transposed (one copy per `generate`
    call, outside its decode loop)."""
    if config.tie_word_embeddings:
        return params["embed"]["embedding"]
    return params["lm_head"].T


def decode_logits(config: ModelConfig, head: Array, hidden: Array) -> Array:
    """The LM head for one decode step: `head` from `decode_head` `[vocab, embed_dim]`,
    hidden `[batch, embed_dim]` -> float32 logits `[vocab, batch]`, vocabulary-major
    (`jaxstep.models.token_choice` takes them as they are).

    Why this way round: with a few rows, XLA:CPU's matmul was fastest with the large
    weight as its left operand in its own row-major layout: at vocab 32000, batch 32,
    embed 256 (AVX-512, float32), `E @ h^T` took 1.5 ms against 2.3 for `h @ E^T` and
    1.8 for an untied `h @ W`. Same products as `lm_logits` up to float rounding in the
    sums.
    """
    return jnp.einsum("ve,be->vb", head.astype(config.compute_dtype), hidden.astype(config.compute_dtype),
                      preferred_element_type=jnp.float32)


# ----------------------------------------------------------------------------- remat

# What the backward pass keeps of each layer's forward activations (the rest is recomputed):
#   none           everything (no remat; most memory, no recompute)
#   full           only the layer's inputs; the whole layer is recomputed
#   dots           the outputs of every matmul/einsum, incl. the attention products
#                  (jax.checkpoint_policies.checkpoint_dots)
#   dots_no_batch  the outputs of matmuls without batch dimensions, i.e. the projections
#                  (q/k/v/o, MLP) but not the [B, heads, T, S] attention scores/outputs
#                  (jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
#   offload        as dots_no_batch, but the saved projections go to pinned host memory
#                  (jax.checkpoint_policies.offload_dot_with_no_batch_dims)
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch", "offload")


def remat_policy(name: bool | str | None) -> tuple[bool, Any]:
    """`(enabled, jax checkpoint policy or None)` for a remat name from `REMAT_POLICIES`.

    True/False (the old boolean flag) and None mean "full"/"none"/"none". With "full"
    the policy is None (save nothing). Raises ValueError naming the choices otherwise.
    """
    if name is None or name is False:
        name = "none"
    elif name is True:
        name = "full"
    cp = jax.checkpoint_policies
    if name == "none":
        return False, None
    if name == "full":
        return True, None
    if name == "dots":
        return True, cp.checkpoint_dots
    if name == "dots_no_batch":
        return True, cp.dots_with_no_batch_dims_saveable
    if name == "offload":
        return True, cp.offload_dot_with_no_batch_dims(offload_src="device",
                                                       offload_dst="pinned_host")
    raise ValueError(f"remat: unknown policy {name!r}; choose one of {', '.join(REMAT_POLICIES)} "
                     "(or True/False).")


class Decoder(nn.Module):
    """Causal LM. See the module docstring for the call contract.

    Attributes:
      config: the architecture.
      remat: how each layer is rematerialised in the backward pass, a name from
        `REMAT_POLICIES` ("none", "full", "dots", "dots_no_batch", "offload"); True and
        False mean "full" and "none". See `remat_policy`.
      attention: the attention product, a name from
        `jaxstep.models.attention.ATTENTION_IMPLS` ("einsum", the default; "xla" or
        "cudnn": `jax.nn.dot_product_attention`). Changes no parameter.
    """

    config: ModelConfig
    remat: bool | str = False
    attention: str = "einsum"

    @nn.compact
    def __call__(self, input_ids: Array, attention_mask: Array | None = None,
                 positions: Array | None = None, cache: Cache | None = None,
                 cache_index: Array | int | None = None, *, return_hidden: bool = False,
                 lm_head: bool = True):
        """Runs the decoder.

        Args:
          input_ids: `[batch, time]` int token ids.
          attention_mask: `[batch, time]` 1 on real tokens (None = all real).
          positions: `[batch, time]` position ids (None = derived from the mask; with a
            cache, from the cache's mask including this call's tokens).
          cache: from `init_cache`; then `cache_index` (int or traced scalar) is the
            first slot this call writes.
          return_hidden: also return the final hidden states `[batch, time, embed_dim]`.
          lm_head: False skips the LM head and returns the hidden states only.

        Returns:
          logits `[batch, time, vocab]` float32 (or `(logits, hidden)` with
          `return_hidden`, or `hidden` with `lm_head=False`); with a cache,
          `(that, new_cache)`.
        """
        cfg = self.config
        B, T = input_ids.shape
        mask = (jnp.ones((B, T), bool) if attention_mask is None
                else attention_mask.astype(bool))
        if cache is not None:
            if cache_index is None:
                raise ValueError("Decoder: cache_index is required with a cache.")
            kv_mask = jax.lax.dynamic_update_slice(cache["mask"], mask, (0, cache_index))
            query_slots = cache_index + jnp.arange(T)
            if positions is None:
                all_pos = derive_positions(kv_mask, cfg.is_opt)
                positions = jax.lax.dynamic_slice(all_pos, (0, cache_index), (B, T))
        else:
            kv_mask = mask
            query_slots = jnp.arange(T)
            if positions is None:
                positions = (derive_positions(mask, cfg.is_opt) if attention_mask is not None
                             else jnp.broadcast_to(jnp.arange(T), (B, T)))

        embed = nn.Embed(cfg.vocab_size, cfg.embed_dim, dtype=cfg.compute_dtype,
                         param_dtype=cfg.params_dtype,
                         embedding_init=_init(("vocab", "embed")), name="embed")
        x = embed(input_ids)
        if cfg.is_opt:
            if cfg.embed_dim != cfg.hidden_size:
                x = _dense(cfg.hidden_size, (None, "embed"), False, cfg, "project_in")(x)
            pos_embed = self.param("pos_embed", _init((None, "embed")),
                                   (cfg.max_position_embeddings + 2, cfg.hidden_size),
                                   cfg.params_dtype)
            x = x + jnp.take(pos_embed, positions + 2, axis=0).astype(cfg.compute_dtype)
        x = _constrain(x, ("batch", "length", "embed"))

        enabled, policy = remat_policy(self.remat)
        # Remat only matters for gradients; the KV-cache path (sampling) runs plain blocks.
        block_cls = nn.remat(Block, policy=policy) if enabled and cache is None else Block
        new_layers = []
        for i in range(cfg.num_layers):
            layer_cache = cache["layers"][i] if cache is not None else None
            x, layer_cache = block_cls(cfg, attention_lib.check_impl(self.attention), name=f"layers_{i}")(
                x, positions, kv_mask, query_slots, layer_cache, cache_index)
            new_layers.append(layer_cache)

        if not cfg.is_opt or (cfg.do_layer_norm_before and not cfg.remove_final_layer_norm):
            x = _norm(cfg, "final_norm")(x)
        if cfg.is_opt and cfg.embed_dim != cfg.hidden_size:
            x = _dense(cfg.embed_dim, ("embed", None), False, cfg, "project_out")(x)
        hidden = x

        if not lm_head:
            out = hidden
        else:
            if cfg.tie_word_embeddings:
                kernel = embed.embedding
            else:
                kernel = self.param("lm_head", _init(("embed", "vocab")),
                                    (cfg.embed_dim, cfg.vocab_size), cfg.params_dtype)
            logits = _project(cfg, hidden, kernel)
            logits = _constrain(logits, ("batch", "length", "vocab"))
            out = (logits, hidden) if return_hidden else logits
        if cache is not None:
            return out, {"mask": kv_mask, "layers": new_layers}
        return out
