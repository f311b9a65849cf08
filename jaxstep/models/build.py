"""Model building from the config: an HF checkpoint, or the tiny decoder from scratch.

    tokenizer = jaxstep.data.tokenizer.resolve_tokenizer(config, path)
    model, params = build_model(config, tokenizer, path)
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxstep.data import tokenizer as tokenizer_lib
from jaxstep.models import hf
from jaxstep import models, paths


def tiny_model_config(config, tokenizer) -> models.ModelConfig:
    """The from-scratch decoder of `config.model`, sized to the tokenizer's vocabulary."""
    m = config.model
    ids = tokenizer_lib.special_ids(tokenizer)
    return models.tiny(
        vocab_size=len(tokenizer), model_type=m.arch, hidden_size=m.hidden_size,
        num_layers=m.num_layers, num_heads=m.num_heads, num_kv_heads=m.num_kv_heads,
        intermediate_size=m.intermediate_size, max_position_embeddings=m.max_position_embeddings,
        tie_word_embeddings=m.tie_word_embeddings, rope_theta=m.rope_theta,
        bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"],
        dtype=m.dtype, param_dtype="float32")


def remat_of(config) -> str:
    """`config.model.remat` ("none" when the field is absent)."""
    return config.model.get("remat", "none") or "none"


def with_remat(model, config):
    """`model` (a Decoder or ScalarModel) with `config.model.remat` and
    `config.model.attention` (`jaxstep.models.attention`); the same object when those
    are "none" and "einsum"."""
    remat = remat_of(config)
    attention = config.model.get("attention", "einsum") or "einsum"
    if remat != "none":
        model = model.clone(remat=remat)
    return model if attention == "einsum" else model.clone(attention=attention)


def build_model(config, tokenizer, path: str = "", key: jax.Array | None = None):
    """`(Decoder, params)`: the HF checkpoint at `path` (or `config.model.hf_path`), else
    the tiny decoder of `config.model` initialised from `key` (default: `config.seed`).

    Params are float32 (training master weights); the model computes in `config.model.dtype`
    and rematerialises its layers per `config.model.remat` (`with_remat`).
    Raises ValueError when the tokenizer has ids the checkpoint's vocabulary lacks.
    """
    path = paths.local_copy(path or config.model.hf_path)  # a URL is downloaded once
    if path:
        model, params = hf.load(path, dtype=jnp.dtype(config.model.dtype), param_dtype=jnp.float32)
        if len(tokenizer) > model.config.vocab_size:
            raise ValueError(f"{path}: the model's vocabulary has {model.config.vocab_size} rows but "
                             f"the tokenizer has {len(tokenizer)} tokens")
        return with_remat(model, config), params
    model = models.Decoder(tiny_model_config(config, tokenizer))
    key = jax.random.key(config.seed) if key is None else key
    return with_remat(model, config), models.init_params(model, key)


def count_params(params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
