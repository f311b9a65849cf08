"""jaxstep.models: Flax decoders (Llama/Qwen2 family, OPT), scalar heads, HF I/O, sampler.

    from jaxstep import models
    config = models.tiny(vocab_size=256)
    model = models.Decoder(config)
    params = models.init_params(model, jax.random.key(0))     # plain nested dicts
    specs = models.logical_specs(model)                        # same tree, PartitionSpecs of logical names
    logits = model.apply({"params": params}, input_ids, attention_mask=mask)
"""
from __future__ import annotations

from jaxstep.models.config import (SUPPORTED_MODEL_TYPES, ModelConfig, UnsupportedModelError,
                                   tiny)
from jaxstep.models.decoder import Decoder, cache_logical_axes, init_cache, lm_logits
from jaxstep.models import hf  # noqa: F401 (jaxstep.models.hf.load / .save)
from jaxstep.models.heads import (ScalarModel, apply_score, scalar_params_from_decoder, segment_loglik,
                                   without_likelihood)
from jaxstep.models.params import abstract_params, init_params, logical_specs
from jaxstep.models.sampler import SampleOutput, generate

__all__ = [
    "SUPPORTED_MODEL_TYPES", "ModelConfig", "UnsupportedModelError", "tiny", "Decoder",
    "ScalarModel", "init_cache", "cache_logical_axes", "init_params", "logical_specs",
    "abstract_params", "scalar_params_from_decoder", "apply_score", "lm_logits", "generate",
    "segment_loglik", "without_likelihood",
    "SampleOutput",
]

