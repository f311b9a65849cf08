"""Token rewards from ORM/PRM scores: aggregate, dense, Clip, Delta, Clip-Delta (pure jnp).

Conventions (one sample)
------------------------
- `step_scores [max_steps]` float32, `step_mask [max_steps]` (1 = valid step),
  `step_ends [max_steps]` int32, `response_length` int.
- The valid steps come first: `step_mask` is a prefix of ones. K = `step_mask.sum()`
  is the number of valid steps.
- Steps are indexed from 0 in code: step j (0 <= j < K) has score s_j and ends at
  response token `step_ends[j]`, the 0-based index of the step's LAST token within the
  response. DESIGN.md counts steps from 1: its step k is our j = k - 1.
- Output: `[time]` float32 token rewards; response token i sits at index
  `response_start + i` (default 0: `time` is the response axis; pass the prompt length
  to get rewards aligned with a prompt+response sequence). The last token is
  `response_start + response_length - 1`, clamped to `time - 1`; step ends are clamped
  to `[0, response_length - 1]`. Two steps ending on one token add up. An empty
  response (length 0) gets no reward at all.

Schemes (the process part, before the weight alpha)
---------------------------------------------------
- `orm`: the ORM score (`outcome_score`, one scalar per sample) at the last token.
- `prm_avg | prm_prod | prm_min | prm_max`: the aggregate of s_0..s_{K-1} at the last
  token (0 when K = 0; see `jaxstep.rewards.aggregate`).
- `prm_dense`: s_j at step_ends[j].
- `clip`: c_j = min(s_j - eta, 0) at step_ends[j]; every reward is <= 0.
- `delta`: d_j = s_j - s_{j+1} for j < K-2; d_{K-2} = s_{K-2} (second-to-last kept);
  d_{K-1} = 0 (the last step; the success reward covers it). In DESIGN's 1-based
  words: r_k <- r_k - r_{k+1} for k < K-1, r_{K-1} kept, r_K <- 0.
  What telescopes: for K >= 2 the rewards from step j on sum to the raw score of step j,
  sum_{i >= j} d_i = s_j for every j <= K-2 (and 0 from j = K-1 on). In particular the
  total is s_0, the first step's score, whatever steps follow: repeating steps earns
  nothing. For K = 1 the only step is the last one, so the total is 0.
- `clip_delta`: `delta` applied to the clipped scores c_j (total = c_0 <= 0 for K >= 2).

Hand-worked example (eta = 0.8, response_length 12, time 12):
  s = [0.9, 0.6, 0.8, 0.7], step_mask = [1, 1, 1, 1, 0], step_ends = [2, 5, 9, 11, 0]
  prm_dense  -> 0.9 at token 2, 0.6 at 5, 0.8 at 9, 0.7 at 11
  prm_min    -> 0.6 at token 11;  prm_prod -> 0.3024 at token 11
  clip       -> c = [0, -0.2, 0, -0.1] at tokens 2, 5, 9, 11
  delta      -> [0.9-0.6, 0.6-0.8, 0.8, 0] = [0.3, -0.2, 0.8, 0] at tokens 2, 5, 9, 11;
                suffix sums 0.9, 0.6, 0.8, 0 = s_0, s_1, s_2, 0
  clip_delta -> [0-(-0.2), -0.2-0, 0, 0] = [0.2, -0.2, 0, 0]; total 0 = c_0

Full reward of a sample: `alpha * process + success_coef * success` (success at the
last token). The KL penalty is added later, in the PPO update (`jaxstep.rl`).

PRM + ORM in one reward (the Clip/Delta recipe, Gao et al. 2024): with a second reward
model, an ORM, and `orm_coef` > 0 the sample also gets `orm_coef * orm_score` at its
last token (`prm_plus_orm`). Same example, clip_delta, ORM score 0.7, orm_coef 0.5,
success 1: [0.2, -0.2, 0, 0.35 + 1] at tokens 2, 5, 9, 11.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jaxstep.rewards.aggregate import aggregate


def _last_token(response_length, response_start, time):
    """Index of the last response token in the output, or `time` (dropped) if empty."""
    length = jnp.asarray(response_length, jnp.int32)
    last = jnp.minimum(response_start + length, time) - 1
    return jnp.where(length > 0, last, time)


def place_at_last_token(value, response_length, *, time: int, response_start=0) -> jnp.ndarray:
    """`[time]` float32 zeros with `value` at the last response token."""
    idx = _last_token(response_length, response_start, time)
    return jnp.zeros((time,), jnp.float32).at[idx].add(jnp.asarray(value, jnp.float32), mode="drop")


def place_at_step_ends(step_values, step_mask, step_ends, response_length, *, time: int,
                       response_start=0) -> jnp.ndarray:
    """`[time]` float32 with each valid step's value at its last token (summed on ties)."""
    length = jnp.asarray(response_length, jnp.int32)
    ends = jnp.clip(jnp.asarray(step_ends, jnp.int32), 0, jnp.maximum(length - 1, 0))
    idx = jnp.minimum(response_start + ends, time - 1)
    valid = jnp.asarray(step_mask).astype(bool) & (length > 0)
    idx = jnp.where(valid, idx, time)  # out of range: dropped
    values = jnp.where(valid, jnp.asarray(step_values, jnp.float32), 0.0)
    return jnp.zeros((time,), jnp.float32).at[idx].add(values, mode="drop")


def clip_scores(step_scores, eta) -> jnp.ndarray:
    """Clip: `min(s - eta, 0)`, elementwise, float32."""
    return jnp.minimum(jnp.asarray(step_scores, jnp.float32) - eta, 0.0)


def delta_scores(step_scores, step_mask) -> jnp.ndarray:
    """Delta over one sample's steps `[max_steps]` (valid steps first), float32.

    d_j = s_j - s_{j+1} for j < K-2, d_{K-2} = s_{K-2}, d_{K-1} = 0, and 0 on invalid
    slots, where K = step_mask.sum().
    """
    scores = jnp.asarray(step_scores, jnp.float32)
    mask = jnp.asarray(step_mask).astype(bool)
    num_steps = mask.sum()
    j = jnp.arange(scores.shape[-1])
    next_scores = jnp.concatenate([scores[1:], jnp.zeros((1,), jnp.float32)])
    out = jnp.where(j < num_steps - 2, scores - next_scores, 0.0)
    out = jnp.where(j == num_steps - 2, scores, out)
    return jnp.where(mask, out, 0.0)


# --- one function per scheme: the process part of one sample's rewards, [time] --------

def orm(step_scores, step_mask, step_ends, response_length, *, time: int, eta=0.8,
        outcome_score=0.0, response_start=0):
    """ORM score at the last token."""
    del step_scores, step_mask, step_ends, eta
    return place_at_last_token(outcome_score, response_length, time=time, response_start=response_start)


def _aggregate_scheme(how: str):
    def scheme(step_scores, step_mask, step_ends, response_length, *, time: int, eta=0.8,
               outcome_score=0.0, response_start=0):
        del step_ends, eta, outcome_score
        value = aggregate(step_scores, step_mask, how)
        return place_at_last_token(value, response_length, time=time, response_start=response_start)
    scheme.__name__ = f"prm_{how}"
    scheme.__doc__ = f"PRM-{how.capitalize()}: the {how} of the valid step scores at the last token."
    return scheme


prm_avg = _aggregate_scheme("avg")
prm_prod = _aggregate_scheme("prod")
prm_min = _aggregate_scheme("min")
prm_max = _aggregate_scheme("max")


def prm_dense(step_scores, step_mask, step_ends, response_length, *, time: int, eta=0.8,
              outcome_score=0.0, response_start=0):
    """Each step's score at its last token."""
    del eta, outcome_score
    return place_at_step_ends(step_scores, step_mask, step_ends, response_length, time=time,
                              response_start=response_start)


def clip(step_scores, step_mask, step_ends, response_length, *, time: int, eta=0.8,
         outcome_score=0.0, response_start=0):
    """`min(s_j - eta, 0)` at each step end."""
    del outcome_score
    return place_at_step_ends(clip_scores(step_scores, eta), step_mask, step_ends, response_length,
                              time=time, response_start=response_start)


def delta(step_scores, step_mask, step_ends, response_length, *, time: int, eta=0.8,
          outcome_score=0.0, response_start=0):
    """Delta of the raw step scores at each step end (see the module docstring)."""
    del eta, outcome_score
    return place_at_step_ends(delta_scores(step_scores, step_mask), step_mask, step_ends,
                              response_length, time=time, response_start=response_start)


def clip_delta(step_scores, step_mask, step_ends, response_length, *, time: int, eta=0.8,
               outcome_score=0.0, response_start=0):
    """Clip, then Delta, at each step end."""
    del outcome_score
    shaped = delta_scores(clip_scores(step_scores, eta), step_mask)
    return place_at_step_ends(shaped, step_mask, step_ends, response_length, time=time,
                              response_start=response_start)


def prm_plus_orm(scheme: str, step_scores, step_mask, step_ends, response_length, orm_score, *,
                 time: int, alpha: float = 1.0, eta: float = 0.8, orm_coef: float = 1.0,
                 response_start=0) -> jnp.ndarray:
    """Two reward models in one reward, one sample: `[time]` float32
    `alpha * SCHEMES[scheme](PRM step scores) + orm_coef * orm_score` (the ORM's score at
    the last token), e.g. scheme `clip`: sum_k min(s_k - eta, 0) + ORM (Gao et al. 2024).

    `orm_score` is a scalar (the second model's probability); an empty response gets nothing.
    """
    process = SCHEMES[scheme](step_scores, step_mask, step_ends, response_length, time=time, eta=eta,
                              outcome_score=orm_score, response_start=response_start)
    outcome = place_at_last_token(jnp.asarray(orm_score, jnp.float32) * orm_coef, response_length,
                                  time=time, response_start=response_start)
    return alpha * process + outcome


SchemeFn = Callable[..., jnp.ndarray]

SCHEMES: dict[str, SchemeFn] = {
    "orm": orm,
    "prm_avg": prm_avg,
    "prm_prod": prm_prod,
    "prm_min": prm_min,
    "prm_max": prm_max,
    "prm_dense": prm_dense,
    "clip": clip,
    "delta": delta,
    "clip_delta": clip_delta,
}


def shape_sample(scheme: str, step_scores, step_mask, step_ends, response_length, success=0.0,
                 outcome_score=0.0, response_start=0, orm_score=0.0, *, time: int, alpha: float = 1.0,
                 eta: float = 0.8, success_coef: float = 1.0, orm_coef: float = 0.0) -> jnp.ndarray:
    """One sample's token rewards `[time]` float32: `alpha * process + success_coef * success`
    (+ `orm_coef * orm_score` at the last token when `orm_coef` is not 0: `prm_plus_orm`).

    The process part is `SCHEMES[scheme]`; `success` (0/1, or any float),
    `outcome_score` (the ORM score, used by `orm` only) and `orm_score` (a second
    reward model's ORM score) are scalars.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"shaping: unknown reward scheme {scheme!r}; expected one of {sorted(SCHEMES)}.")
    if orm_coef:
        process = prm_plus_orm(scheme, step_scores, step_mask, step_ends, response_length, orm_score,
                               time=time, alpha=alpha, eta=eta, orm_coef=orm_coef,
                               response_start=response_start)
    else:
        process = alpha * SCHEMES[scheme](step_scores, step_mask, step_ends, response_length, time=time,
                                          eta=eta, outcome_score=outcome_score, response_start=response_start)
    bonus = place_at_last_token(jnp.asarray(success, jnp.float32) * success_coef, response_length,
                                time=time, response_start=response_start)
    return process + bonus


def shape_rewards(scheme: str, step_scores, step_mask, step_ends, response_lengths, success=None,
                  *, time: int, alpha: float = 1.0, eta: float = 0.8, success_coef: float = 1.0,
                  outcome_scores=None, response_starts=None, orm_scores=None,
                  orm_coef: float = 0.0) -> jnp.ndarray:
    """Token rewards for a batch, `shape_sample` vmapped over the batch.

    Args:
      scheme: a key of `SCHEMES`.
      step_scores: `[batch, max_steps]` reward-model scores per step (valid steps first).
      step_mask: `[batch, max_steps]` 1 for valid steps.
      step_ends: `[batch, max_steps]` int32 index of each step's last token in the response.
      response_lengths: `[batch]` int32 number of response tokens.
      success: `[batch]` 0/1 final-answer correctness, or None for no success reward.
      time: length of the output's time axis (static).
      alpha: weight of the reward-model (process or ORM) part.
      eta: Clip threshold.
      success_coef: weight of the success reward.
      outcome_scores: `[batch]` ORM scores; required by `orm`, ignored by the others.
      response_starts: `[batch]` int32 output index of each response's first token
        (e.g. the prompt length); None means 0.
      orm_scores: `[batch]` a second reward model's (an ORM's) scores, added with weight
        `orm_coef` at the last token (`prm_plus_orm`); needed when `orm_coef` is not 0.

    Returns:
      `[batch, time]` float32 token rewards.
    """
    step_scores = jnp.asarray(step_scores, jnp.float32)
    batch = step_scores.shape[0]
    if scheme == "orm" and outcome_scores is None:
        raise ValueError("shape_rewards: scheme 'orm' needs outcome_scores [batch] (the ORM scores).")
    zeros = jnp.zeros((batch,), jnp.float32)
    success = zeros if success is None else jnp.asarray(success, jnp.float32)
    outcome_scores = zeros if outcome_scores is None else jnp.asarray(outcome_scores, jnp.float32)
    response_starts = (jnp.zeros((batch,), jnp.int32) if response_starts is None
                       else jnp.asarray(response_starts, jnp.int32))
    if orm_coef and orm_scores is None:
        raise ValueError("shape_rewards: orm_coef != 0 needs orm_scores [batch] (the second model's scores).")
    orm_scores = zeros if orm_scores is None else jnp.asarray(orm_scores, jnp.float32)

    def one(scores, mask, ends, length, succ, outcome, start, orm_score):
        return shape_sample(scheme, scores, mask, ends, length, succ, outcome, start, orm_score, time=time,
                            alpha=alpha, eta=eta, success_coef=success_coef, orm_coef=orm_coef)

    return jax.vmap(one)(step_scores, jnp.asarray(step_mask), jnp.asarray(step_ends, jnp.int32),
                         jnp.asarray(response_lengths, jnp.int32), success, outcome_scores,
                         response_starts, orm_scores)


def reward_model_kind(scheme: str) -> str:
    """The reward model a scheme needs: "orm" for `orm`, else "prm"."""
    if scheme not in SCHEMES:
        raise ValueError(f"ppo.scheme must be one of {tuple(SCHEMES)}, got {scheme!r}")
    return "orm" if scheme == "orm" else "prm"
