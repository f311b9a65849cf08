"""The attention product of `jaxstep.models.decoder.Attention`, by implementation.

  einsum  explicit `[batch, kv_heads, group, time, slots]` float32 scores, a masked
          float32 softmax and the probabilities (in the compute dtype) times the values
          (the decoder's own code, the default).
  xla     `jax.nn.dot_product_attention(implementation="xla")`: the same math in one
          library call (GQA natively, float32 logits and softmax); on TPU the compiler
          is free to fuse it.
  cudnn   `jax.nn.dot_product_attention(implementation="cudnn")`: cuDNN's fused
          (flash) kernel; GPU only, bfloat16/float16 only.

Both library paths take the decoder's explicit boolean mask `[batch, time, slots]`
(causal, sliding window and padding combined), so they attend exactly where the
einsum path does (tests/test_attention.py: within 1e-5 in float32 with padding, causal
and the KV-cache decode path).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

ATTENTION_IMPLS = ("einsum", "xla", "cudnn")


def check_impl(impl: str) -> str:
    """`impl` if it is one of `ATTENTION_IMPLS`; else a ValueError naming the choices."""
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention: unknown implementation {impl!r}; choose one of "
                         f"{', '.join(ATTENTION_IMPLS)}")
    return impl


def library_attention(q: jax.Array, k: jax.Array, v: jax.Array, allowed: jax.Array, impl: str) -> jax.Array:
    """`jax.nn.dot_product_attention` with an explicit mask.

    Args:
      q: `[batch, time, heads, head_dim]`; k, v: `[batch, slots, kv_heads, head_dim]`
        (heads a multiple of kv_heads: query head h reads kv head h // (heads / kv_heads),
        as transformers' repeat_kv).
      allowed: bool `[batch, time, slots]`, True where a query may attend.
      impl: "xla" or "cudnn".

    Returns:
      `[batch, time, heads, head_dim]` in q's dtype. Scale `head_dim ** -0.5`.
    """
    return jax.nn.dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype),
                                        mask=allowed[:, None], implementation=check_impl(impl))


def cache_keys_values(kc: jax.Array, vc: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The decoder's cache layouts (keys `[B, K, D, S]`, values `[B, K, S, D]`) as the
    `[B, S, K, D]` the library call takes."""
    return jnp.transpose(kc, (0, 3, 1, 2)), jnp.transpose(vc, (0, 2, 1, 3))
