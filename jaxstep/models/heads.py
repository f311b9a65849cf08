"""`ScalarModel`: the decoder backbone with a scalar head (critic, ORM, PRM).

    model = ScalarModel(config)
    scores = model.apply({"params": params}, input_ids, attention_mask=None, positions=None)
    # scores: [batch, time] float32, one scalar per position

Params are `{"decoder": <Decoder params without lm_head>, "score": {"kernel", "bias"}}`,
so a critic or reward model starts from a generator with
`scalar_params_from_decoder(generator_params, key)`.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxstep.models.config import ModelConfig
from jaxstep.models.decoder import Decoder

SCORE_INIT_STD = 0.02


class ScalarModel(nn.Module):
    """Decoder hidden states -> Dense(1) -> `[batch, time]` float32."""

    config: ModelConfig
    remat: bool = False

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, positions=None):
        hidden = Decoder(self.config, remat=self.remat, name="decoder")(
            input_ids, attention_mask, positions, lm_head=False)
        return _score_head(self.config)(hidden.astype(jnp.float32))[..., 0]


def _score_head(config: ModelConfig) -> nn.Module:
    return nn.Dense(1, dtype=jnp.float32, param_dtype=config.params_dtype,
                    kernel_init=nn.with_logical_partitioning(nn.initializers.normal(SCORE_INIT_STD),
                                                             ("embed", None)),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (None,)),
                    name="score")


def apply_score(score_params: dict, hidden: jax.Array) -> jax.Array:
    """The scalar head alone: `hidden` `[..., embed_dim]` -> `[...]` float32."""
    kernel = score_params["kernel"].astype(jnp.float32)
    return (hidden.astype(jnp.float32) @ kernel)[..., 0] + score_params["bias"][0].astype(jnp.float32)


def scalar_params_from_decoder(decoder_params: dict, key: jax.Array, config: ModelConfig | None = None,
                               std: float = SCORE_INIT_STD) -> dict:
    """ScalarModel params from a generator's Decoder params (the LM head is dropped).

    The score kernel `[embed_dim, 1]` is drawn from N(0, std^2) with `key` (std=0 gives a
    head that scores every position 0); the bias starts at 0. `config` is only needed
    to read the hidden width; without it the width comes from the params.
    """
    decoder = {k: v for k, v in decoder_params.items() if k != "lm_head"}
    embed_dim = (config.embed_dim if config is not None
                 else _embed_dim_from_params(decoder_params))
    kernel = std * jax.random.normal(key, (embed_dim, 1), jnp.float32)
    return {"decoder": decoder, "score": {"kernel": kernel, "bias": jnp.zeros((1,), jnp.float32)}}


def _embed_dim_from_params(params: dict) -> int:
    if "project_out" in params:
        return params["project_out"]["kernel"].shape[-1]
    return params["embed"]["embedding"].shape[-1]
