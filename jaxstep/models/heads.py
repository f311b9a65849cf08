"""`ScalarModel`: the decoder backbone with a scalar head (critic, ORM, PRM).

    model = ScalarModel(config)
    scores = model.apply({"params": params}, input_ids, attention_mask=None, positions=None)
    # scores: [batch, time] float32, one scalar per position

Params are `{"decoder": <Decoder params without lm_head>, "score": {"kernel", "bias"}}`,
so a critic or reward model starts from a generator with
`scalar_params_from_decoder(generator_params, key)`.

Likelihood feature (`ScalarModel(config, boundary_ids=...)`): the head's logit at
position t also gets `weight * l_t`, where `l_t` is the log-likelihood under the
backbone's own LM head of the tokens since the last step boundary (a token in
`boundary_ids`, e.g. the newline) up to and including t. At a step's last token that
is the step's log-likelihood. A generator already assigns its wrong steps low
likelihood; a scalar head on the last hidden state cannot read that (the hidden state
at t sees token t but not the prediction made for it at t-1), so a small reward model
fine-tuned from the generator learns which problems are hard instead of which step is
wrong. The params then also hold the LM head (`decoder["lm_head"]` when untied) and
`{"likelihood": {"weight": [1]}}`.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxstep.models.config import ModelConfig
from jaxstep.models.decoder import Decoder
from jaxstep.models.logprobs import token_logprobs

SCORE_INIT_STD = 0.02


class ScalarModel(nn.Module):
    """Decoder hidden states -> Dense(1) [+ weight * step log-likelihood] -> `[batch, time]` float32."""

    config: ModelConfig
    remat: bool | str = False  # a `decoder.REMAT_POLICIES` name; True/False = full/none
    boundary_ids: tuple[int, ...] = ()  # non-empty: add the likelihood feature (module docstring)
    attention: str = "einsum"  # the backbone's attention product (jaxstep.models.attention)

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, positions=None, return_token_logprobs: bool = False):
        """`[batch, time]` float32 head logits; with `return_token_logprobs` (likelihood
        feature only) also the backbone LM's `[batch, time]` log p(token t | tokens < t)."""
        decoder = Decoder(self.config, remat=self.remat, attention=self.attention, name="decoder")
        if not self.boundary_ids:
            if return_token_logprobs:
                raise ValueError("ScalarModel: token log-probs need the likelihood feature (boundary_ids)")
            hidden = decoder(input_ids, attention_mask, positions, lm_head=False)
            return _score_head(self.config)(hidden.astype(jnp.float32))[..., 0]
        logits, hidden = decoder(input_ids, attention_mask, positions, return_hidden=True)
        weight = self.param("likelihood", lambda _: {"weight": jnp.ones((1,), jnp.float32)})["weight"]
        token_lp = token_logprobs(logits, input_ids)
        scores = (_score_head(self.config)(hidden.astype(jnp.float32))[..., 0]
                  + weight[0] * segment_sums(token_lp, input_ids, self.boundary_ids))
        return (scores, token_lp) if return_token_logprobs else scores


def segment_loglik(logits: jax.Array, input_ids: jax.Array, boundary_ids: tuple[int, ...]) -> jax.Array:
    """Log-likelihood of the tokens since the last boundary token, up to and including t.

    Args:
      logits: `[batch, time, vocab]`; position t predicts token t+1.
      input_ids: `[batch, time]` int.
      boundary_ids: token ids that end a segment (a step).

    Returns:
      `[batch, time]` float32: sum of log p(token s) for s in (b, t], b the last position
      before t holding a boundary token (or the start of the row).
    """
    return segment_sums(token_logprobs(logits, input_ids), input_ids, boundary_ids)


def segment_sums(token_lp: jax.Array, input_ids: jax.Array, boundary_ids: tuple[int, ...]) -> jax.Array:
    """`token_lp [batch, time]` summed over (last boundary before t, t] (see `segment_loglik`)."""
    total = jnp.cumsum(token_lp, axis=1)
    T = input_ids.shape[1]
    is_boundary = jnp.isin(input_ids, jnp.asarray(boundary_ids, input_ids.dtype))
    last = jax.lax.cummax(jnp.where(is_boundary, jnp.arange(T), -1), axis=1)  # last boundary <= t
    before = jnp.pad(last[:, :-1], ((0, 0), (1, 0)), constant_values=-1)  # last boundary < t
    base = jnp.where(before >= 0, jnp.take_along_axis(total, jnp.maximum(before, 0), axis=1), 0.0)
    return total - base


def without_likelihood(params: dict) -> dict:
    """A plain ScalarModel's params from likelihood-feature params (drops the LM head and weight)."""
    return {"decoder": {k: v for k, v in params["decoder"].items() if k != "lm_head"},
            "score": params["score"]}


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
                               std: float = SCORE_INIT_STD, likelihood: bool = False) -> dict:
    """ScalarModel params from a generator's Decoder params (the LM head is dropped, unless
    `likelihood`: then it is kept and the likelihood weight starts at 1).

    The score kernel `[embed_dim, 1]` is drawn from N(0, std^2) with `key` (std=0 gives a
    head that scores every position 0); the bias starts at 0. `config` is only needed
    to read the hidden width; without it the width comes from the params.
    """
    decoder = {k: v for k, v in decoder_params.items() if likelihood or k != "lm_head"}
    embed_dim = (config.embed_dim if config is not None
                 else _embed_dim_from_params(decoder_params))
    kernel = std * jax.random.normal(key, (embed_dim, 1), jnp.float32)
    out = {"decoder": decoder, "score": {"kernel": kernel, "bias": jnp.zeros((1,), jnp.float32)}}
    if likelihood:
        out["likelihood"] = {"weight": jnp.ones((1,), jnp.float32)}
    return out


def _embed_dim_from_params(params: dict) -> int:
    if "project_out" in params:
        return params["project_out"]["kernel"].shape[-1]
    return params["embed"]["embedding"].shape[-1]
