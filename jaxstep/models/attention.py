"""The attention product of `jaxstep.models.decoder.Attention`, by implementation.

  einsum  explicit `[batch, kv_heads, group, time, slots]` float32 scores, a masked
          float32 softmax and the probabilities (in the compute dtype) times the values
          (the decoder's own code, the default).
  xla     `jax.nn.dot_product_attention(implementation="xla")`: the same math in one
          library call (GQA natively, float32 logits and softmax); on TPU the compiler
          is free to fuse it.
  cudnn   `jax.nn.dot_product_attention(implementation="cudnn")`: cuDNN's fused
          (flash) kernel; GPU only, bfloat16/float16 only.
  splash  TPU splash attention (`jax.experimental.pallas.ops.tpu.splash_attention`, the
          Pallas flash kernel MaxText uses): causal, padding as segment ids, never
          materialising `[batch, heads, time, time]` scores in HBM; for the no-cache
          forward (training, scoring); the KV-cache sampler runs einsum. On a CPU it
          runs in Pallas interpret mode (slow; tests: equal to einsum within 1e-5 on
          real tokens); on a GPU it raises (use cudnn).

Both library paths take the decoder's explicit boolean mask `[batch, time, slots]`
(causal, sliding window and padding combined), so they attend exactly where the
einsum path does (tests/test_attention.py: within 1e-5 in float32 with padding, causal
and the KV-cache decode path).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

ATTENTION_IMPLS = ("einsum", "xla", "cudnn", "splash")
SPLASH_BLOCK = 128  # splash's query/key block: the time axis is padded to a multiple of it


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


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, token_mask: jax.Array,
                     sliding_window: int = 0) -> jax.Array:
    """Causal self-attention of one un-cached forward with TPU splash attention.

    Args:
      q: `[batch, time, heads, head_dim]`; k, v: `[batch, time, kv_heads, head_dim]`.
      token_mask: `[batch, time]` 1 on real tokens. Padding becomes segment id 0 and real
        tokens 1, so a real query attends exactly the real keys at or before it (the
        einsum path's mask); outputs at padded queries are finite but meaningless.
      sliding_window: > 0 limits each query to that many keys back (Qwen2/Mistral).

    Returns:
      `[batch, time, heads, head_dim]` in q's dtype. Scale `head_dim ** -0.5`.

    Under a mesh (`jaxstep.parallel.rules.activation_sharding`) the kernel runs per shard
    in `jax.shard_map`: batch over the logical "batch" axes, heads over "heads". The time
    axis is padded to a multiple of `SPLASH_BLOCK` inside.
    """
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    from jaxstep.parallel import rules as rules_lib

    B, T, H, D = q.shape
    groups = H // k.shape[2]
    if groups > 1:  # GQA: query head h reads kv head h // groups (transformers' repeat_kv)
        k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
    pad = -T % SPLASH_BLOCK
    segments = token_mask.astype(jnp.int32)
    if pad:
        widths = ((0, 0), (0, pad), (0, 0), (0, 0))
        q, k, v = (jnp.pad(x, widths) for x in (q, k, v))
        segments = jnp.pad(segments, ((0, 0), (0, pad)))
    L = T + pad
    q = (q * (D ** -0.5)).astype(q.dtype)
    q, k, v = (jnp.transpose(x, (0, 2, 1, 3)) for x in (q, k, v))  # [B, H, L, D]
    if sliding_window:
        head_mask = sm.LocalMask((L, L), window_size=(sliding_window - 1, 0), offset=0)
    else:
        head_mask = sm.CausalMask((L, L))
    mesh = jax.sharding.get_abstract_mesh()  # the mesh of activation_sharding, if any
    sharded = mesh is not None and not mesh.empty and mesh.size > 1
    device = getattr(mesh, "abstract_device", None) if sharded else None
    platform = device.platform if device is not None else jax.default_backend()  # AOT: the target
    if platform not in ("tpu", "cpu"):
        raise ValueError(f"model.attention='splash' is a TPU kernel; on {platform} use 'cudnn' or 'xla' "
                         "(--config.model.attention=cudnn)")
    interpret = platform != "tpu"  # the Pallas interpreter on a CPU (tests), the kernel on TPU
    kernel = sk.make_splash_mha(sm.MultiHeadMask([head_mask] * H), head_shards=1, q_seq_shards=1,
                                interpret=interpret)

    def attend(q, k, v, segments):  # the kernel takes one example: [H, L, D]
        example = lambda a, b, c, s: kernel(a, b, c, segment_ids=sk.SegmentIds(q=s, kv=s))  # noqa: E731
        return jax.vmap(example)(q, k, v, segments)

    if sharded:
        import flax.linen as nn
        from jax.sharding import PartitionSpec as P
        batch, heads = nn.logical_to_mesh_axes(("batch", "heads"))
        if H % rules_lib.axes_size(mesh, heads):
            heads = None
        spec = P(batch, heads, None, None)
        attend = jax.shard_map(attend, in_specs=(spec, spec, spec, P(batch, None)), out_specs=spec,
                               check_vma=False)
    out = attend(q, k, v, segments)
    return jnp.transpose(out, (0, 2, 1, 3))[:, :T]
