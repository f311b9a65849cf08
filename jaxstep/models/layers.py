"""Layers shared by the decoder and the encoder: norms and dense layers with logical
axis names on their params, and the initializers.

`Linear` keeps its kernel as `[in..., out...]` with a logical axis per dimension, so
the mesh rules (`jaxstep.parallel.rules`) shard it; `_constrain` puts a logical
sharding constraint on an activation.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxstep.models.config import ModelConfig

Array = jax.Array


_INIT_STD = 0.02


def _init(axes, std: float = _INIT_STD):
    return nn.with_logical_partitioning(nn.initializers.normal(std), axes)


def _zeros(axes):
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def _ones(axes):
    return nn.with_logical_partitioning(nn.initializers.ones_init(), axes)


def _constrain(x: Array, axes: tuple) -> Array:
    return nn.with_logical_constraint(x, axes)


class RMSNorm(nn.Module):
    """RMSNorm computed in float32, HF style (scale applied after the cast back)."""

    eps: float
    dtype: Any
    param_dtype: Any
    axis_name: str | None = "embed"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param("scale", _ones((self.axis_name,)), (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return scale.astype(self.dtype) * x32.astype(self.dtype)


class LayerNorm(nn.Module):
    """LayerNorm (scale and bias) computed in float32."""

    eps: float
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x: Array) -> Array:
        features = x.shape[-1]
        scale = self.param("scale", _ones(("embed",)), (features,), self.param_dtype)
        bias = self.param("bias", _zeros(("embed",)), (features,), self.param_dtype)
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(self.dtype)


def _norm(config: ModelConfig, name: str) -> nn.Module:
    if config.is_opt:
        return LayerNorm(config.norm_eps, config.compute_dtype, config.params_dtype, name=name)
    return RMSNorm(config.norm_eps, config.compute_dtype, config.params_dtype, name=name)


class Linear(nn.Module):
    """`y = x @ kernel (+ bias)` contracting the last `len(in_axes)` dims of x.

    The kernel `[*in_shape, *features]` is created at its full shape with logical
    `axes` (flax's DenseGeneral initialises a flattened kernel, which breaks logical
    sharding constraints under a mesh).
    """

    features: tuple[int, ...]
    axes: tuple[str | None, ...]
    num_in: int
    use_bias: bool
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x: Array) -> Array:
        in_shape = x.shape[x.ndim - self.num_in:]
        kernel = self.param("kernel", _init(self.axes), (*in_shape, *self.features),
                            self.param_dtype)
        contract = tuple(range(x.ndim - self.num_in, x.ndim))
        y = jax.lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype),
                                ((contract, tuple(range(self.num_in))), ((), ())))
        if self.use_bias:
            bias = self.param("bias", _zeros(self.axes[self.num_in:]), self.features,
                              self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y


def _dense(features, axes, use_bias: bool, config: ModelConfig, name: str, num_in: int = 1):
    features = features if isinstance(features, tuple) else (features,)
    return Linear(features, axes, num_in, use_bias, config.compute_dtype, config.params_dtype,
                  name=name)
