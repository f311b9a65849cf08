"""Params of a model without loading weights: random init, abstract shapes, and the
logical axis names of every leaf.

    params = init_params(model, jax.random.key(0))     # plain nested dicts
    shapes = abstract_params(model)                    # ShapeDtypeStructs, no allocation
    specs = logical_specs(model)                       # PartitionSpecs of logical names
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxstep.models.config import ModelConfig
from jaxstep.models.decoder import Decoder

def _as_module(model_or_config) -> nn.Module:
    if isinstance(model_or_config, ModelConfig):
        return Decoder(model_or_config)
    return model_or_config


def _init_boxed(module: nn.Module, key):
    dummy = jnp.zeros((1, 1), jnp.int32)
    return module.init(key, dummy)["params"]


def init_params(model_or_config, key: jax.Array) -> dict:
    """Randomly initialised params (plain nested dicts) of a Decoder/ScalarModel or config."""
    module = _as_module(model_or_config)
    return nn.meta.unbox(jax.jit(lambda k: _init_boxed(module, k))(key))


def abstract_params(model_or_config) -> dict:
    """`jax.ShapeDtypeStruct` tree of the params, without allocating them."""
    module = _as_module(model_or_config)
    boxed = jax.eval_shape(lambda: _init_boxed(module, jax.random.key(0)))
    return nn.meta.unbox(boxed)


def logical_specs(model_or_config) -> dict:
    """Params tree of `PartitionSpec`s of logical axis names (e.g. `("embed", "mlp")`).

    Map them to mesh shardings with `jaxstep.parallel.rules.shard_params` or
    `flax.linen.logical_to_mesh_sharding`.
    """
    module = _as_module(model_or_config)
    boxed = jax.eval_shape(lambda: _init_boxed(module, jax.random.key(0)))
    return nn.get_partition_spec(boxed)
