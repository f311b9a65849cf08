"""PPO rollouts: sample -> decode text -> grade -> step boundaries -> scores and rewards.

    rollout = sample(policy, params, tokenizer, problems, key, settings, mesh=mesh)
    batch = sequence_batch(rollout)                     # numpy, [B, P + R]
    scorer = make_scorer(policy, critic, reward_model, rm_kind, shaping, prompt_len=P)
    out = scorer(params_tree, shard_batch(batch))       # ref logprobs, values, RM scores, rewards

Layout (the `jaxstep.rl` token convention): a row is the prompt, LEFT-padded to P
tokens, followed by the response, RIGHT-padded to R = `max_new_tokens` tokens; index t
of every `[batch, P + R]` array refers to token t. Responses end with their EOS (kept,
trained on) or run out of tokens. Step boundaries are found in the generated tokens
(`jaxstep.data.batching.batch_step_ends`: a step ends at the token holding its
delimiter; the final-answer line is the last step), relative to the response.

The scorer is one jitted function: reference-policy logprobs (frozen SFT params), critic
values, reward-model scores at the step ends (PRM) or the last token (ORM), and the
shaped float32 token rewards (`jaxstep.rewards.shaping.shape_rewards`: the configured
scheme, alpha, eta and the 0/1 success reward from `grading.is_correct`). The LM head is
applied to the response-predicting positions only (the prompt's logits are never
needed), which is most of a small model's FLOPs at a large vocabulary.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxstep.data import batching, grading
from jaxstep.data import tokenizer as tokenizer_lib
from jaxstep.data.problem import Problem
from jaxstep.models import lm_logits
from jaxstep.models import sampler as sampler_lib
from jaxstep.parallel import distributed
from jaxstep.parallel import rules as rules_lib
from jaxstep.rewards import scoring, shaping
from jaxstep.rl.logprobs import shift_values
from jaxstep.train import common


@dataclasses.dataclass(frozen=True)
class SampleSettings:
    """How rollouts are generated (static: a change recompiles the sampler).

    max_prompt_len: P, prompts are left-padded (and cut on the left) to it.
    max_new_tokens: R, the response budget.
    max_steps: S, step slots per response (steps past S get no reward and no score).
    temperature, top_k, top_p: sampling (`jaxstep.models.sampler.generate`).
    delimiter: the step delimiter.
    """
    max_prompt_len: int
    max_new_tokens: int
    max_steps: int = 16
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    delimiter: str = "\n"


@dataclasses.dataclass(frozen=True)
class ShapingSettings:
    """The reward: `alpha * scheme(RM scores) + success_coef * success` (static)."""
    scheme: str = "prm_max"
    alpha: float = 1.0
    eta: float = 0.8
    success_coef: float = 1.0


@dataclasses.dataclass
class Rollout:
    """Sampled and graded responses to `B` prompts (host numpy arrays).

    problems: the `B` problems.
    prompt_ids: int32 `[B, P]` left-padded; prompt_mask: bool `[B, P]`.
    tokens: int32 `[B, R]` responses (pad after the end); logprobs: float32 `[B, R]`
      log softmax(logits / temperature)[token] under the sampling policy (0 on padding).
    lengths: int32 `[B]` response tokens (EOS included).
    texts: the response texts (special tokens dropped).
    correct, has_answer, finished: bool `[B]`: final answer right, stated, EOS emitted.
    step_ends: int32 `[B, S]` index of each step's last token in the response;
      step_mask: bool `[B, S]`; num_steps: int32 `[B]` steps found (before the S cap).
    """
    problems: list[Problem]
    prompt_ids: np.ndarray
    prompt_mask: np.ndarray
    tokens: np.ndarray
    logprobs: np.ndarray
    lengths: np.ndarray
    texts: list[str]
    correct: np.ndarray
    has_answer: np.ndarray
    finished: np.ndarray
    step_ends: np.ndarray
    step_mask: np.ndarray
    num_steps: np.ndarray

    @property
    def batch_size(self) -> int:
        return len(self.problems)


def sample(model, params, tokenizer, problems: Sequence[Problem], key: jax.Array,
           settings: SampleSettings, *, mesh: jax.sharding.Mesh, rules=None) -> Rollout:
    """Samples one response per problem with the KV-cache sampler, then grades it and
    finds its step boundaries on the host.

    `len(problems)` must divide over the mesh's data axes. Every process passes the same
    problems and gets the same Rollout (each feeds its rows of the global batch).
    """
    ids_of = tokenizer_lib.special_ids(tokenizer)
    encoded = batching.encode_prompts(problems, tokenizer, settings.max_prompt_len)
    prompt_ids, prompt_mask = encoded["ids"], encoded["mask"]
    local = distributed.process_shard(np.arange(len(problems)))
    inputs = common.shard_batch({"ids": prompt_ids[local], "mask": prompt_mask[local]}, mesh)
    with rules_lib.activation_sharding(mesh, rules):
        out = sampler_lib.generate(
            model, params, inputs["ids"], inputs["mask"], key,
            max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
            top_k=settings.top_k, top_p=settings.top_p, eos_id=ids_of["eos"], pad_id=ids_of["pad"])
    # Log-probs under softmax(logits / temperature), what the update's ratio uses (with
    # top-k/top-p the stage recomputes them instead).
    plain = settings.top_k == 0 and settings.top_p >= 1.0
    sampled = out.sampling_logprobs if plain and settings.temperature != 1.0 else out.logprobs
    tokens, logprobs, lengths = common.to_host((out.tokens, sampled, out.lengths))
    tokens, logprobs, lengths = np.asarray(tokens), np.asarray(logprobs), np.asarray(lengths)
    rows = [row[:n] for row, n in zip(tokens, lengths)]
    texts = tokenizer.batch_decode(rows, skip_special_tokens=True)
    answers = [grading.extract_answer(t) for t in texts]
    correct = np.array([a is not None and grading.is_correct(t, p.answer)
                        for t, a, p in zip(texts, answers, problems)], bool)
    finished = np.array([n > 0 and row[n - 1] == ids_of["eos"] for row, n in zip(tokens, lengths)], bool)
    steps = batching.batch_step_ends(tokens, tokenizer, settings.delimiter, max_steps=settings.max_steps)
    return Rollout(problems=list(problems), prompt_ids=prompt_ids, prompt_mask=prompt_mask,
                   tokens=tokens.astype(np.int32), logprobs=logprobs.astype(np.float32),
                   lengths=lengths.astype(np.int32), texts=list(texts), correct=correct,
                   has_answer=np.array([a is not None for a in answers], bool), finished=finished,
                   step_ends=steps["step_ends"], step_mask=steps["step_mask"],
                   num_steps=steps["num_steps"])


def sequence_batch(rollout: Rollout) -> dict[str, np.ndarray]:
    """The rollout as `[B, P + R]` sequences plus per-response arrays (numpy).

    Returns:
      input_ids int32, attention_mask int32, response_mask float32, old_logprobs
      float32 (the sampler's, aligned), positions int32 `[B, P + R]`; step_ends int32
      `[B, S]` (response-relative), step_mask bool `[B, S]`, lengths int32 `[B]`,
      success float32 `[B]`.
    """
    B, P = rollout.prompt_ids.shape
    R = rollout.tokens.shape[1]
    response_mask = (np.arange(R)[None, :] < rollout.lengths[:, None])
    attention = np.concatenate([rollout.prompt_mask, response_mask], axis=1).astype(np.int32)
    input_ids = np.concatenate([rollout.prompt_ids, rollout.tokens], axis=1).astype(np.int32)
    old_logprobs = np.zeros((B, P + R), np.float32)
    old_logprobs[:, P:] = np.where(response_mask, rollout.logprobs, 0.0)
    full_response = np.zeros((B, P + R), np.float32)
    full_response[:, P:] = response_mask
    positions = np.maximum(np.cumsum(attention, axis=1) - 1, 0).astype(np.int32)
    return {"input_ids": input_ids, "attention_mask": attention, "response_mask": full_response,
            "old_logprobs": old_logprobs, "positions": positions,
            "step_ends": rollout.step_ends.astype(np.int32), "step_mask": rollout.step_mask,
            "lengths": rollout.lengths.astype(np.int32),
            "success": rollout.correct.astype(np.float32)}


def reward_model_batch(rollout: Rollout, rm_tokenizer, max_len: int, delimiter: str) -> dict[str, np.ndarray]:
    """RM inputs for a reward model with ANOTHER tokenizer than the policy: each
    `[bos] prompt response [eos]` re-tokenized (right-padded to `max_len`), with the
    step ends found in its own tokens (absolute positions).

    Returns rm_ids int32 `[B, max_len]`, rm_mask int32, rm_step_ends int32 `[B, S]`
    (the rollout's S; steps past it dropped), rm_step_mask bool `[B, S]`.
    """
    S = rollout.step_ends.shape[1]
    enc = batching.encode_sft(rollout.problems, rm_tokenizer, max_len, solutions=rollout.texts,
                              delimiter=delimiter, max_steps=S, buckets=None)
    return {"rm_ids": enc["ids"].astype(np.int32), "rm_mask": enc["mask"].astype(np.int32),
            "rm_step_ends": enc["step_ends"].astype(np.int32), "rm_step_mask": enc["step_mask"]}


def same_tokenizer(a, b) -> bool:
    """Whether two tokenizers map text to the same ids (same vocabulary and specials)."""
    if a is b:
        return True
    return (len(a) == len(b) and a.get_vocab() == b.get_vocab()
            and tokenizer_lib.special_ids(a) == tokenizer_lib.special_ids(b))


# ----------------------------------------------------------------------------- forwards

def response_logits(model, params, input_ids, attention_mask, positions, prompt_len: int):
    """Logits `[B, T, V]` (float32) that are real only where they predict a response
    token (positions P-1 .. T-2); elsewhere 0. The LM head runs on those R positions only.

    With `token_logprobs(logits, input_ids)` this gives exact log-probabilities on the
    response tokens (and -log V, masked away, on the prompt).
    """
    hidden = model.apply({"params": params}, input_ids, attention_mask=attention_mask,
                         positions=positions, lm_head=False)
    T = input_ids.shape[1]
    start = max(prompt_len - 1, 0)
    logits = lm_logits(model.config, params, hidden[:, start:T - 1])
    return jnp.pad(logits, ((0, 0), (start, 1), (0, 0)))  # [B, T, V]: positions start .. T-2 real


def response_logprobs(model, params, input_ids, attention_mask, positions, prompt_len: int, *,
                      temperature: float = 1.0, with_entropy: bool = False):
    """Log-probabilities `[B, T]` float32 of the response tokens (positions P .. T-1; 0 on
    the prompt), aligned as `jaxstep.rl.logprobs.token_logprobs`, with the LM head run on
    the R response-predicting positions only and no `[B, T, V]` array (with
    `with_entropy`, also the entropies `[B, T]`, 0 on the prompt)."""
    hidden = model.apply({"params": params}, input_ids, attention_mask=attention_mask,
                         positions=positions, lm_head=False)
    T = input_ids.shape[1]
    start = max(prompt_len, 1)
    logits = lm_logits(model.config, params, hidden[:, start - 1:T - 1])  # [B, R, V], predicts start..T-1
    logits = logits.astype(jnp.float32)
    if temperature != 1.0:
        logits = logits / temperature
    targets = input_ids[:, start:]
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    pad = ((0, 0), (start, 0))
    logp = jnp.pad(picked - lse, pad)
    if not with_entropy:
        return logp
    probs = jnp.exp(logits - lse[..., None])
    entropy = lse - jnp.sum(probs * logits, axis=-1)
    return logp, jnp.pad(entropy, pad)


def make_policy_logprobs(model, prompt_len: int):
    """The `policy_logprobs` hook of `jaxstep.rl.update.make_ppo_update` (`response_logprobs`)."""
    def policy_logprobs(params, ids, attention_mask, positions, *, temperature=1.0, with_entropy=False):
        return response_logprobs(model, params, ids, attention_mask, positions, prompt_len,
                                 temperature=temperature, with_entropy=with_entropy)
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
                mesh: jax.sharding.Mesh | None = None, rules=None):
    """The jitted rollout pass `scorer(params, batch) -> dict` (float32 outputs).

    Args:
      policy_model: the policy's Decoder (also the reference policy's).
      critic_model: the critic's ScalarModel; rm_model: the reward model's ScalarModel.
      rm_kind: "prm" (scores at step ends) or "orm" (score at the last token).
      shaping_settings: scheme, alpha, eta, success weight.
      prompt_len: P.
      temperature: the sampling temperature (logprobs use logits / temperature).
      recompute_logprobs: also recompute the rollout policy's logprobs with a full
        forward (instead of the sampler's; needed when sampling with top-k/top-p or a
        low-precision dtype).
      mesh, rules: run under this mesh and logical-axis rules.

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
                                 batch["positions"], P, temperature=temperature)
        return logp * batch["response_mask"]

    def scorer(params, batch):
        ids, mask = batch["input_ids"], batch["attention_mask"]
        T = ids.shape[1]
        out = {"ref_logprobs": logprobs_of(params["ref"], batch)}
        if recompute_logprobs:
            out["old_logprobs"] = logprobs_of(params["policy"], batch)
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
        rewards = shaping.shape_rewards(
            s.scheme, step_scores, step_mask, batch["step_ends"], batch["lengths"], batch["success"],
            time=T, alpha=s.alpha, eta=s.eta, success_coef=s.success_coef, outcome_scores=outcome,
            response_starts=jnp.full((B,), P, jnp.int32))
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

