"""`DebertaEncoder`: a pure-functional Flax DeBERTa-v2/v3 encoder (transformers' `DebertaV2Model`).

    config = DebertaConfig.from_hf_dict(json.load(open("config.json")))
    model = DebertaEncoder(config)
    hidden = model.apply({"params": params}, input_ids, attention_mask=mask)  # [B, T, hidden] f32

Disentangled attention: content-to-content scores plus, per `pos_att_type`, content-to-
position (`c2p`: query . key-projected relative embedding) and position-to-content (`p2c`:
key . query-projected relative embedding), all divided by
`sqrt(head_dim * (1 + len(pos_att_type)))`. Relative positions `q - k` are optionally
log-bucketed (`position_buckets > 0`) and clipped to the table of `2 * att_span` rows.

Parameters (plain nested dicts) carry logical axis names: `vocab`, `embed`, `heads`,
`head_dim`, `mlp`; tables indexed by positions have an unnamed first axis. Every
computation runs in `config.dtype`; LayerNorm and softmax in float32; the output is float32.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxstep.models.config import UnsupportedModelError
from jaxstep.models.layers import LayerNorm, Linear

Array = jax.Array
MODEL_TYPE = "deberta-v2"

# HF activation names -> functions (transformers' ACT2FN semantics).
ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "linear": lambda x: x,
}


@dataclasses.dataclass(frozen=True)
class DebertaConfig:
    """DeBERTa-v2/v3 encoder architecture. Field names follow transformers' `DebertaV2Config`
    (`num_layers` = `num_hidden_layers`, `num_heads` = `num_attention_heads`, `head_dim` =
    `attention_head_size`, `embedding_size` 0 = `hidden_size`)."""

    vocab_size: int = 128
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    head_dim: int = 0  # 0 = hidden_size // num_heads (filled in on construction)
    intermediate_size: int = 128
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 0
    layer_norm_eps: float = 1e-7
    embedding_size: int = 0  # 0 = hidden_size (filled in on construction)
    position_biased_input: bool = True
    relative_attention: bool = False
    max_relative_positions: int = -1
    position_buckets: int = -1
    pos_att_type: tuple[str, ...] = ()
    share_att_key: bool = False
    norm_rel_ebd: str = "none"
    conv_kernel_size: int = 0
    conv_groups: int = 1
    conv_act: str = "tanh"
    pad_token_id: int | None = 0
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        if not self.head_dim:
            if self.hidden_size % self.num_heads:
                raise ValueError(f"hidden_size={self.hidden_size} is not a multiple of "
                                 f"num_heads={self.num_heads}.")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if self.head_dim * self.num_heads != self.hidden_size:
            raise UnsupportedModelError(
                f"attention_head_size={self.head_dim} with num_heads={self.num_heads} != "
                f"hidden_size={self.hidden_size} is not supported (transformers' attention "
                "output layer assumes heads * head_size == hidden_size).")
        if not self.embedding_size:
            object.__setattr__(self, "embedding_size", self.hidden_size)
        object.__setattr__(self, "pos_att_type", tuple(self.pos_att_type))
        for field, act in (("hidden_act", self.hidden_act), ("conv_act", self.conv_act)):
            if act not in ACTIVATIONS:
                raise UnsupportedModelError(f"{field}={act!r} is not supported; supported: "
                                            f"{', '.join(ACTIVATIONS)}.")
        if self.conv_kernel_size > 0:
            if self.conv_kernel_size % 2 == 0:
                raise UnsupportedModelError(
                    f"conv_kernel_size={self.conv_kernel_size}: only odd kernel sizes are "
                    "supported (transformers' ConvLayer changes the length for even ones).")
            if self.hidden_size % self.conv_groups:
                raise ValueError(f"conv_groups={self.conv_groups} must divide "
                                 f"hidden_size={self.hidden_size}.")

    # Derived.
    @property
    def c2p(self) -> bool:
        return "c2p" in self.pos_att_type

    @property
    def p2c(self) -> bool:
        return "p2c" in self.pos_att_type

    @property
    def rel_norm(self) -> bool:
        """LayerNorm on the relative embedding table (`norm_rel_ebd` contains layer_norm)."""
        return "layer_norm" in [x.strip() for x in self.norm_rel_ebd.lower().split("|")]

    @property
    def max_relative(self) -> int:
        """`max_relative_positions`, or `max_position_embeddings` when it is < 1."""
        return self.max_relative_positions if self.max_relative_positions >= 1 else self.max_position_embeddings

    @property
    def att_span(self) -> int:
        """Half the number of relative embedding rows (`position_buckets` or `max_relative`)."""
        return self.position_buckets if self.position_buckets > 0 else self.max_relative

    @property
    def scale_factor(self) -> int:
        return 1 + int(self.c2p) + int(self.p2c)

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    @property
    def params_dtype(self):
        return jnp.dtype(self.param_dtype)

    def replace(self, **changes) -> DebertaConfig:
        return dataclasses.replace(self, **changes)

    # HF interop.
    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], source: str = "config.json") -> DebertaConfig:
        """Builds a config from a transformers `DebertaV2Config` dict (`model_type` deberta-v2).

        Raises `UnsupportedModelError` naming `source` for another model type or an
        unsupported feature (activation, even `conv_kernel_size`).
        """
        if d.get("model_type") != MODEL_TYPE:
            raise UnsupportedModelError(f"{source}: model_type {d.get('model_type')!r} is not "
                                        f"{MODEL_TYPE!r}.")
        pos_att_type = d.get("pos_att_type") or ()
        if isinstance(pos_att_type, str):
            pos_att_type = pos_att_type.lower().split("|")
        heads = d["num_attention_heads"]
        try:
            return cls(
                vocab_size=d["vocab_size"],
                hidden_size=d["hidden_size"],
                num_layers=d["num_hidden_layers"],
                num_heads=heads,
                head_dim=d.get("attention_head_size") or 0,
                intermediate_size=d["intermediate_size"],
                hidden_act=d.get("hidden_act", "gelu"),
                max_position_embeddings=d.get("max_position_embeddings", 512),
                type_vocab_size=d.get("type_vocab_size", 0),
                layer_norm_eps=d.get("layer_norm_eps", 1e-7),
                embedding_size=d.get("embedding_size") or 0,
                position_biased_input=d.get("position_biased_input", True),
                relative_attention=d.get("relative_attention", False),
                max_relative_positions=d.get("max_relative_positions", -1),
                position_buckets=d.get("position_buckets", -1),
                pos_att_type=tuple(x.strip() for x in pos_att_type),
                share_att_key=d.get("share_att_key", False),
                norm_rel_ebd=d.get("norm_rel_ebd", "none"),
                conv_kernel_size=d.get("conv_kernel_size", 0),
                conv_groups=d.get("conv_groups", 1),
                conv_act=d.get("conv_act", "tanh"),
                pad_token_id=d.get("pad_token_id", 0),
            )
        except UnsupportedModelError as e:
            raise UnsupportedModelError(f"{source}: {e}") from None

    def to_hf_dict(self) -> dict[str, Any]:
        """A transformers `config.json` dict (`DebertaV2Model`, float32 weights)."""
        d: dict[str, Any] = dict(
            architectures=["DebertaV2Model"], model_type=MODEL_TYPE,
            vocab_size=self.vocab_size, hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers, num_attention_heads=self.num_heads,
            intermediate_size=self.intermediate_size, hidden_act=self.hidden_act,
            max_position_embeddings=self.max_position_embeddings,
            type_vocab_size=self.type_vocab_size, layer_norm_eps=self.layer_norm_eps,
            position_biased_input=self.position_biased_input,
            relative_attention=self.relative_attention,
            max_relative_positions=self.max_relative_positions,
            position_buckets=self.position_buckets, pos_att_type=list(self.pos_att_type),
            share_att_key=self.share_att_key, norm_rel_ebd=self.norm_rel_ebd,
            pad_token_id=self.pad_token_id, torch_dtype=self.param_dtype, dtype=self.param_dtype)
        if self.embedding_size != self.hidden_size:
            d["embedding_size"] = self.embedding_size
        if self.conv_kernel_size > 0:
            d.update(conv_kernel_size=self.conv_kernel_size, conv_groups=self.conv_groups,
                     conv_act=self.conv_act)
        return d


# ----------------------------------------------------------------------------- positions


def log_bucket_position(relative_pos: np.ndarray, bucket_size: int, max_position: int) -> np.ndarray:
    """transformers' `make_log_bucket_position` in float32 numpy: distances beyond
    `bucket_size // 2` are mapped logarithmically up to `max_position`."""
    rel = np.asarray(relative_pos, np.int64)
    mid = bucket_size // 2
    abs_pos = np.where((rel < mid) & (rel > -mid), mid - 1, np.abs(rel))
    with np.errstate(divide="ignore"):
        ratio = np.log(abs_pos.astype(np.float32) / np.float32(mid))
    log_pos = np.ceil(ratio / np.log(np.float32((max_position - 1) / mid))
                      * np.float32(mid - 1)) + np.float32(mid)
    return np.where(abs_pos <= mid, rel.astype(np.float32), log_pos * np.sign(rel)).astype(np.int64)


@functools.lru_cache(maxsize=64)
def relative_positions(length: int, config: DebertaConfig) -> np.ndarray:
    """`[length, length]` int relative positions `q - k` (log-bucketed when
    `position_buckets > 0`), as transformers' `build_relative_position`."""
    ids = np.arange(length)
    rel = ids[:, None] - ids[None, :]
    if config.position_buckets > 0 and config.max_relative > 0:
        rel = log_bucket_position(rel, config.position_buckets, config.max_relative)
    return rel


# ----------------------------------------------------------------------------- modules


def _init(axes, std: float = 0.02):
    return nn.with_logical_partitioning(nn.initializers.normal(std), axes)


def _zeros(axes):
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def _constrain(x: Array, axes: tuple) -> Array:
    return nn.with_logical_constraint(x, axes)


def _dense(features, axes, cfg: DebertaConfig, name: str, num_in: int = 1, use_bias: bool = True):
    features = features if isinstance(features, tuple) else (features,)
    return Linear(features, axes, num_in, use_bias, cfg.compute_dtype, cfg.params_dtype, name=name)


def _layer_norm(cfg: DebertaConfig, name: str) -> LayerNorm:
    return LayerNorm(cfg.layer_norm_eps, cfg.compute_dtype, cfg.params_dtype, name=name)


class DisentangledAttention(nn.Module):
    """Self-attention with c2p/p2c relative terms; returns `[B, T, hidden]` before the residual."""

    config: DebertaConfig

    @nn.compact
    def __call__(self, x: Array, pair_mask: Array, rel_embed: Array | None) -> Array:
        """x `[B, T, hidden]`; pair_mask bool `[B, T, T]` (query, key); rel_embed
        `[2 * att_span, hidden]` (None without relative attention)."""
        cfg = self.config
        H, D = cfg.num_heads, cfg.head_dim
        proj = lambda name: _dense((H, D), ("embed", "heads", "head_dim"), cfg, name)  # noqa: E731
        q_proj, k_proj = proj("q_proj"), proj("k_proj")
        q, k, v = q_proj(x), k_proj(x), proj("v_proj")(x)  # [B, T, H, D]
        q = _constrain(q, ("batch", "length", "heads", "head_dim"))
        scale = math.sqrt(D * cfg.scale_factor)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) / scale
        if cfg.relative_attention:
            span = cfg.att_span
            T = x.shape[1]
            rel_pos = relative_positions(T, cfg)  # static [T, T]
            rows = jnp.arange(T)[:, None]
            if cfg.c2p:
                pos_k = (k_proj if cfg.share_att_key else proj("pos_k_proj"))(rel_embed)  # [2S, H, D]
                c2p = jnp.einsum("bqhd,rhd->bhqr", q, pos_k, preferred_element_type=jnp.float32)
                index = np.clip(rel_pos + span, 0, 2 * span - 1)  # [q, k]
                scores = scores + c2p[:, :, rows, index] / scale
            if cfg.p2c:
                pos_q = (q_proj if cfg.share_att_key else proj("pos_q_proj"))(rel_embed)
                p2c = jnp.einsum("bkhd,rhd->bhkr", k, pos_q, preferred_element_type=jnp.float32)
                index = np.clip(-rel_pos + span, 0, 2 * span - 1)  # [k, q]
                scores = scores + jnp.swapaxes(p2c[:, :, rows, index], -1, -2) / scale
        scores = jnp.where(pair_mask[:, None], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(cfg.compute_dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
        out = _constrain(out, ("batch", "length", "heads", "head_dim"))
        return _dense(cfg.hidden_size, ("heads", "head_dim", "embed"), cfg, "o_proj", num_in=2)(out)


class Layer(nn.Module):
    """One post-norm encoder layer: `LN(x + attn(x))`, then `LN(h + down(act(up(h))))`."""

    config: DebertaConfig

    @nn.compact
    def __call__(self, x, pair_mask, rel_embed):
        cfg = self.config
        h = _layer_norm(cfg, "attn_norm")(
            x + DisentangledAttention(cfg, name="attn")(x, pair_mask, rel_embed))
        up = _dense(cfg.intermediate_size, ("embed", "mlp"), cfg, "up_proj")(h)
        up = _constrain(ACTIVATIONS[cfg.hidden_act](up), ("batch", "length", "mlp"))
        out = _layer_norm(cfg, "mlp_norm")(h + _dense(cfg.hidden_size, ("mlp", "embed"), cfg,
                                                      "down_proj")(up))
        return _constrain(out, ("batch", "length", "embed"))


class ConvLayer(nn.Module):
    """transformers' DeBERTa ConvLayer (after layer 0): `LN(residual + act(conv(embeddings)))`,
    padded positions zeroed. Kernel in HF layout `[out, in / groups, width]`."""

    config: DebertaConfig

    @nn.compact
    def __call__(self, embeddings: Array, residual: Array, mask: Array) -> Array:
        cfg = self.config
        C, K, G = cfg.hidden_size, cfg.conv_kernel_size, cfg.conv_groups
        kernel = self.param("kernel", _init(("embed", None, None)), (C, C // G, K), cfg.params_dtype)
        bias = self.param("bias", _zeros(("embed",)), (C,), cfg.params_dtype)
        pad = (K - 1) // 2
        out = jax.lax.conv_general_dilated(
            embeddings.astype(cfg.compute_dtype), kernel.astype(cfg.compute_dtype), (1,),
            [(pad, pad)], dimension_numbers=("NWC", "OIW", "NWC"), feature_group_count=G)
        out = jnp.where(mask[..., None], out + bias.astype(cfg.compute_dtype), 0)
        out = ACTIVATIONS[cfg.conv_act](out)
        out = _layer_norm(cfg, "norm")(residual + out)
        return out * mask[..., None].astype(out.dtype)


class DebertaEncoder(nn.Module):
    """DeBERTa-v2/v3 encoder (no head). See the module docstring.

    Attributes:
      config: the architecture.
      remat: rematerialise each layer in the backward pass.
    """

    config: DebertaConfig
    remat: bool = False

    @nn.compact
    def __call__(self, input_ids: Array, attention_mask: Array | None = None,
                 token_type_ids: Array | None = None, position_ids: Array | None = None,
                 pair_mask: Array | None = None) -> Array:
        """Encodes a batch.

        Args:
          input_ids: `[batch, time]` int token ids.
          attention_mask: `[batch, time]` 1 on real tokens (None = all real). Padded
            positions' outputs are meaningless (compare real tokens only).
          token_type_ids: `[batch, time]` segment ids (None = 0; only with `type_vocab_size`).
          position_ids: `[batch, time]` absolute positions for `position_biased_input`
            (None = 0..time-1, as transformers, whatever the padding).
          pair_mask: optional bool `[batch, time, time]` (query, key): which keys each
            query may attend to, ANDed with the padding mask (e.g. the block-causal mask
            of `jaxstep.models.deberta_heads`). None = every real token sees every real token.

        Returns:
          the last hidden state `[batch, time, hidden_size]`, float32.
        """
        cfg = self.config
        B, T = input_ids.shape
        mask = jnp.ones((B, T), bool) if attention_mask is None else attention_mask.astype(bool)
        x = nn.Embed(cfg.vocab_size, cfg.embedding_size, dtype=cfg.compute_dtype,
                     param_dtype=cfg.params_dtype, embedding_init=_init(("vocab", "embed")),
                     name="embed")(input_ids)
        if cfg.position_biased_input:
            table = self.param("pos_embed", _init((None, "embed")),
                               (cfg.max_position_embeddings, cfg.embedding_size), cfg.params_dtype)
            pos = jnp.arange(T)[None] if position_ids is None else position_ids
            x = x + jnp.take(table, pos, axis=0).astype(cfg.compute_dtype)
        if cfg.type_vocab_size > 0:
            table = self.param("type_embed", _init((None, "embed")),
                               (cfg.type_vocab_size, cfg.embedding_size), cfg.params_dtype)
            types = jnp.zeros((B, T), jnp.int32) if token_type_ids is None else token_type_ids
            x = x + jnp.take(table, types, axis=0).astype(cfg.compute_dtype)
        if cfg.embedding_size != cfg.hidden_size:
            x = _dense(cfg.hidden_size, (None, "embed"), cfg, "embed_proj", use_bias=False)(x)
        x = _layer_norm(cfg, "embed_norm")(x) * mask[..., None].astype(cfg.compute_dtype)
        x = _constrain(x, ("batch", "length", "embed"))
        embeddings = x

        rel_embed = None
        if cfg.relative_attention:
            rel_embed = self.param("rel_embed", _init((None, "embed")),
                                   (2 * cfg.att_span, cfg.hidden_size), cfg.params_dtype)
            rel_embed = rel_embed.astype(cfg.compute_dtype)
            if cfg.rel_norm:
                rel_embed = _layer_norm(cfg, "rel_norm")(rel_embed)
        padding_pairs = mask[:, :, None] & mask[:, None, :]
        pair_mask = padding_pairs if pair_mask is None else padding_pairs & pair_mask.astype(bool)

        layer_cls = nn.remat(Layer) if self.remat else Layer
        for i in range(cfg.num_layers):
            x = layer_cls(cfg, name=f"layers_{i}")(x, pair_mask, rel_embed)
            if i == 0 and cfg.conv_kernel_size > 0:
                x = ConvLayer(cfg, name="conv")(embeddings, x, mask)
        return x.astype(jnp.float32)
