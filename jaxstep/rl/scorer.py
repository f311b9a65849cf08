"""The jitted rollout pass: reference log-probs, critic values, reward-model scores and
shaped token rewards, in one program; plus the policy/critic hooks of the PPO update.

    scorer = make_scorer(policy, critic, reward_model, "prm", ShapingSettings("clip_delta"), prompt_len=P)
    out = scorer({"policy", "ref", "critic", "rm"} params, batch)    # see make_scorer
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxstep.models.logprobs import response_logits, response_logprobs
from jaxstep.rewards import scoring, shaping
from jaxstep.rl.logprobs import shift_values
from jaxstep.parallel import rules as rules_lib


def make_policy_logprobs(model, prompt_len: int, logits_chunk: int = 0):
    """The `policy_logprobs` hook of `jaxstep.rl.update.make_ppo_update` (`response_logprobs`;
    `logits_chunk` > 0: the LM head over that many positions at a time)."""
    def policy_logprobs(params, ids, attention_mask, positions, *, temperature=1.0, with_entropy=False):
        return response_logprobs(model, params, ids, attention_mask, positions, prompt_len,
                                 temperature=temperature, with_entropy=with_entropy,
                                 logits_chunk=logits_chunk)
    return policy_logprobs


def make_policy_apply(model, prompt_len: int | None = None):
    """`policy_apply(params, ids, attention_mask, positions) -> logits [B, T, V]` for
    `jaxstep.rl.update.make_ppo_update`; with `prompt_len` the LM head only runs on
    the response-predicting positions (`response_logits`)."""
    if prompt_len is None:
        def policy_apply(params, ids, attention_mask, positions):
            return model.apply({"params": params}, ids, attention_mask=attention_mask,
                               positions=positions)
    else:
        def policy_apply(params, ids, attention_mask, positions):
            return response_logits(model, params, ids, attention_mask, positions, prompt_len)
    return policy_apply


def make_critic_apply(critic_model):
    """`critic_apply(params, ids, attention_mask, positions) -> [B, T]` for the update."""
    def critic_apply(params, ids, attention_mask, positions):
        return critic_model.apply({"params": params}, ids, attention_mask=attention_mask,
                                  positions=positions)
    return critic_apply


def make_scorer(policy_model, critic_model, rm_model, rm_kind: str, shaping_settings: ShapingSettings, *,
                prompt_len: int, temperature: float = 1.0, recompute_logprobs: bool = False,
                mesh: jax.sharding.Mesh | None = None, rules=None, logits_chunk: int = 0,
                orm_model=None):
    """The jitted rollout pass `scorer(params, batch) -> dict` (float32 outputs).

    Args:
      policy_model: the policy's Decoder (also the reference policy's).
      critic_model: the critic's ScalarModel, or None (a critic-free estimator: no critic
        forward, no `values` out); rm_model: the reward model's ScalarModel.
      rm_kind: "prm" (scores at step ends) or "orm" (score at the last token).
      shaping_settings: scheme, alpha, eta, success weight.
      prompt_len: P.
      temperature: the sampling temperature (logprobs use logits / temperature).
      recompute_logprobs: also recompute the rollout policy's logprobs with a full
        forward (instead of the sampler's; needed when sampling with top-k/top-p or a
        low-precision dtype).
      mesh, rules: run under this mesh and logical-axis rules.
      logits_chunk: > 0 computes the log-probs with the LM head over that many
        positions at a time (`jaxstep.models.logprobs.chunked_token_stats`).
      orm_model: a second reward model, an ORM, whose score is added at the last token
        with weight `shaping_settings.orm_coef` (PRM + ORM in one reward); its params
        are `params["orm"]` and, with another tokenizer or layout, its inputs
        `orm_ids`, `orm_mask` in the batch (`jaxstep.rl.rollout.reward_model_batch`
        with prefix "orm_"). Adds `orm_scores [B]` to the outputs.

    The returned function takes `params = {"policy", "ref", "critic", "rm"}` and a batch
    from `sequence_batch` (on the mesh), with `rm_ids`, `rm_mask`, `rm_step_ends`,
    `rm_step_mask` added when the reward model uses another tokenizer, and returns:
      ref_logprobs `[B, T]`, values `[B, T]`, token_rewards `[B, T]`, step_scores
      `[B, S]` (PRM; zeros for the ORM), outcome_scores `[B]` (ORM; the aggregate
      used by the scheme for a PRM), and old_logprobs `[B, T]` when recomputed.
    """
    P = prompt_len
    s = shaping_settings

    def logprobs_of(params, batch):
        logp = response_logprobs(policy_model, params, batch["input_ids"], batch["attention_mask"],
                                 batch["positions"], P, temperature=temperature, logits_chunk=logits_chunk)
        return logp * batch["response_mask"]

    def scorer(params, batch):
        ids, mask = batch["input_ids"], batch["attention_mask"]
        T = ids.shape[1]
        out = {"ref_logprobs": logprobs_of(params["ref"], batch)}
        if recompute_logprobs:
            out["old_logprobs"] = logprobs_of(params["policy"], batch)
        if critic_model is not None:
            values = critic_model.apply({"params": params["critic"]}, ids, attention_mask=mask,
                                        positions=batch["positions"])
            out["values"] = shift_values(values) * batch["response_mask"]
        if "rm_ids" in batch:
            rm_ids, rm_mask = batch["rm_ids"], batch["rm_mask"]
            rm_ends, rm_step_mask, rm_positions = batch["rm_step_ends"], batch["rm_step_mask"], None
        else:
            rm_ids, rm_mask, rm_positions = ids, mask, batch["positions"]
            rm_ends, rm_step_mask = batch["step_ends"] + P, batch["step_mask"]
        B = ids.shape[0]
        step_mask = batch["step_mask"]
        if rm_kind == "orm":
            outcome = scoring.score_outcome(rm_model, params["rm"], rm_ids, rm_mask, positions=rm_positions)
            step_scores = jnp.zeros(step_mask.shape, jnp.float32)
        else:
            step_scores = scoring.score_steps(rm_model, params["rm"], rm_ids, rm_mask, rm_ends,
                                              rm_step_mask & step_mask, positions=rm_positions)
            outcome = jnp.zeros((B,), jnp.float32)
        orm_scores = None
        if orm_model is not None:
            if "orm_ids" in batch:
                orm_scores = scoring.score_outcome(orm_model, params["orm"], batch["orm_ids"], batch["orm_mask"])
            else:
                orm_scores = scoring.score_outcome(orm_model, params["orm"], ids, mask, positions=batch["positions"])
            out["orm_scores"] = orm_scores
        rewards = shaping.shape_rewards(
            s.scheme, step_scores, step_mask, batch["step_ends"], batch["lengths"], batch["success"],
            time=T, alpha=s.alpha, eta=s.eta, success_coef=s.success_coef, outcome_scores=outcome,
            response_starts=jnp.full((B,), P, jnp.int32), orm_scores=orm_scores,
            orm_coef=s.orm_coef if orm_model is not None else 0.0)
        out.update(token_rewards=rewards, step_scores=step_scores, outcome_scores=outcome)
        return out

    jitted = jax.jit(scorer)
    if mesh is None:
        return jitted

    def call(params, batch):
        with rules_lib.activation_sharding(mesh, rules):
            return jitted(params, batch)
    call.jitted = jitted
    return call


@dataclasses.dataclass(frozen=True)
class ShapingSettings:
    """The reward: `alpha * scheme(RM scores) + success_coef * success` (static), plus
    `orm_coef * ORM score` at the last token when the scorer has a second model (an ORM)."""
    scheme: str = "prm_max"
    alpha: float = 1.0
    eta: float = 0.8
    success_coef: float = 1.0
    orm_coef: float = 0.0


def score_texts(model, params, kind: str, inputs: dict, *, prefix: str = "rm_") -> jax.Array:
    """A reward model's scores of re-tokenized responses (e.g. for best-of-N): `inputs` from
    `jaxstep.rl.rollout.reward_model_inputs` -> PRM `[B, S]` step scores (0 on missing
    steps) or ORM `[B]`, probabilities, float32."""
    return scoring.score(model, params, kind, inputs[prefix + "ids"], inputs[prefix + "mask"],
                         step_ends=inputs[prefix + "step_ends"], step_mask=inputs[prefix + "step_mask"])
