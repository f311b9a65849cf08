"""jaxstep.models: Flax decoders (Llama/Qwen2 family, OPT), scalar heads, HF I/O, sampler.

    from jaxstep import models
    config = models.tiny(vocab_size=256)
    model = models.Decoder(config)
    params = models.init_params(model, jax.random.key(0))     # plain nested dicts
    specs = models.logical_specs(model)                        # same tree, PartitionSpecs of logical names
    logits = model.apply({"params": params}, input_ids, attention_mask=mask)
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxstep.models.config import (SUPPORTED_MODEL_TYPES, ModelConfig, UnsupportedModelError,
                                   tiny)
from jaxstep.models.decoder import Decoder, cache_logical_axes, init_cache, lm_logits
from jaxstep.models.heads import (ScalarModel, apply_score, scalar_params_from_decoder, segment_loglik,
                                   without_likelihood)
from jaxstep.models.sampler import SampleOutput, generate

__all__ = [
    "SUPPORTED_MODEL_TYPES", "ModelConfig", "UnsupportedModelError", "tiny", "Decoder",
    "ScalarModel", "init_cache", "cache_logical_axes", "init_params", "logical_specs",
    "abstract_params", "scalar_params_from_decoder", "apply_score", "lm_logits", "generate",
    "segment_loglik", "without_likelihood",
    "SampleOutput",
]


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


from jaxstep.models import hf  # noqa: E402  (jaxstep.models.hf.load / .save)
