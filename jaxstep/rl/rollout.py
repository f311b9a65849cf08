"""PPO rollouts: sample -> decode text -> grade -> step boundaries, as `[B, P + R]` arrays.

    rollout = sample(policy, params, tokenizer, problems, key, settings, mesh=mesh)
    batch = sequence_batch(rollout)                     # numpy, [B, P + R]
    scorer = jaxstep.rl.scorer.make_scorer(policy, critic, reward_model, rm_kind, shaping, prompt_len=P)
    out = scorer(params_tree, shard_batch(batch))       # ref logprobs, values, RM scores, rewards

Layout (the `jaxstep.rl` token convention): a row is the prompt, LEFT-padded to P
tokens, followed by the response, RIGHT-padded to R = `max_new_tokens` tokens; index t
of every `[batch, P + R]` array refers to token t. Responses end with their EOS (kept,
trained on) or run out of tokens. Step boundaries are found in the generated tokens
(`jaxstep.data.batching.batch_step_ends`: a step ends at the token holding its
delimiter; the final-answer line is the last step), relative to the response.

Sampling goes through `jaxstep.generation.generate_batch`, the path every eval and
reward-model sample takes; grading is `jaxstep.generation.grade`.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import numpy as np

from jaxstep import generation
from jaxstep.data import batching, formatting, step_offsets
from jaxstep.data import tokenizer as tokenizer_lib
from jaxstep.data.problem import Problem
from jaxstep.models import hf_reward
from jaxstep.models.sampler import DECODE_BLOCK


@dataclasses.dataclass(frozen=True)
class SampleSettings:
    """How rollouts are generated (static: a change recompiles the sampler).

    max_prompt_len: P, prompts are left-padded (and cut on the left) to it.
    max_new_tokens: R, the response budget.
    max_steps: S, step slots per response (steps past S get no reward and no score).
    temperature, top_k, top_p: sampling (`jaxstep.models.sampler.generate`).
    delimiter: the step delimiter.
    decode_block: new tokens per decode segment (`jaxstep.models.sampler.generate`).
    template: the prompt template (`formatting.config_template(config)`).
    """
    max_prompt_len: int
    max_new_tokens: int
    max_steps: int = 16
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    delimiter: str = "\n"
    template: str = formatting.PROMPT_TEMPLATE
    decode_block: int = DECODE_BLOCK


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
           settings: SampleSettings, *, mesh: jax.sharding.Mesh, rules=None,
           chunk_size: int = 0) -> Rollout:
    """Samples one response per problem (`jaxstep.generation.generate_chunked`), then
    grades it and finds its step boundaries on the host.

    `len(problems)` must divide over the mesh's data axes. Every process passes the same
    problems and gets the same Rollout (each feeds its rows of the global batch).
    `chunk_size` (`sampler.batch_size`): at most that many prompts per sampler call;
    0 or >= `len(problems)` is one call with `key` (bitwise the unchunked rollout); more
    chunks sample chunk i with `fold_in(key, i)`: reproducible, greedy-equal, but other
    sampled tokens than one call.
    """
    ids_of = tokenizer_lib.special_ids(tokenizer)
    eos_ids = generation.stop_token_ids(model, tokenizer)
    encoded = batching.encode_prompts(problems, tokenizer, settings.max_prompt_len,
                                      template=settings.template)
    prompt_ids, prompt_mask = encoded["ids"], encoded["mask"]
    out = generation.generate_chunked(
        model, params, prompt_ids, prompt_mask, key, chunk_size=chunk_size,
        max_new_tokens=settings.max_new_tokens, eos_ids=eos_ids, pad_id=ids_of["pad"], mesh=mesh,
        rules=rules, temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p,
        with_logprobs=True, decode_block=settings.decode_block)
    # Log-probs under softmax(logits / temperature), what the update's ratio uses (with
    # top-k/top-p the stage recomputes them instead).
    plain = settings.top_k == 0 and settings.top_p >= 1.0
    tokens, lengths = out.tokens, out.lengths
    logprobs = out.sampling_logprobs if plain and settings.temperature != 1.0 else out.logprobs
    texts = tokenizer.batch_decode([row[:n] for row, n in zip(tokens, lengths)], skip_special_tokens=True)
    graded = [generation.grade(p, t) for p, t in zip(problems, texts)]
    correct = np.array([a is not None and ok for a, ok in graded], bool)
    finished = np.array([n > 0 and row[n - 1] in eos_ids for row, n in zip(tokens, lengths)], bool)
    steps = batching.batch_step_ends(tokens, tokenizer, settings.delimiter, max_steps=settings.max_steps)
    return Rollout(problems=list(problems), prompt_ids=prompt_ids, prompt_mask=prompt_mask,
                   tokens=tokens.astype(np.int32), logprobs=logprobs.astype(np.float32),
                   lengths=lengths.astype(np.int32), texts=list(texts), correct=correct,
                   has_answer=np.array([a is not None for a, _ in graded], bool), finished=finished,
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


def reward_model_batch(rollout: Rollout, rm_tokenizer, max_len: int, delimiter: str, *,
                       layout: hf_reward.Layout | None = None, prefix: str = "rm_",
                       template: str = formatting.PROMPT_TEMPLATE,
                       step_positions: str = "delimiter") -> dict[str, np.ndarray]:
    """RM inputs for a reward model with ANOTHER tokenizer than the policy (or another
    layout, `jaxstep.models.hf_reward.layout_of`): each `[bos] prompt response [eos]`
    re-tokenized (right-padded to `max_len`), with the step ends found in its own
    tokens (absolute positions). The prompt is written with `template`
    (`reward_model_template`: the policy's, as the reward-model stage trained with it).

    Returns <prefix>ids int32 `[B, max_len]`, <prefix>mask int32, <prefix>step_ends int32
    `[B, S]` (the rollout's S; steps past it dropped), <prefix>step_mask bool `[B, S]`.
    """
    return reward_model_inputs(rollout.problems, rollout.texts, rm_tokenizer, max_len, delimiter,
                               max_steps=rollout.step_ends.shape[1], layout=layout, prefix=prefix,
                               template=template, step_positions=step_positions)


def reward_model_template(policy_template: str, rm_tokenizer) -> str:
    """The prompt template a re-tokenizing reward model gets: the policy's
    (`data.prompt_template`, which the reward-model stage also trains with), except that
    a chat template needs the reward model's tokenizer to have one; without it (e.g. an
    encoder) the plain template."""
    if policy_template == formatting.CHAT and not getattr(rm_tokenizer, "chat_template", None):
        return formatting.PROMPT_TEMPLATE
    return policy_template


def reward_model_inputs(problems: Sequence[Problem], texts: Sequence[str], rm_tokenizer, max_len: int,
                        delimiter: str, *, max_steps: int, layout: hf_reward.Layout | None = None,
                        template: str = formatting.PROMPT_TEMPLATE, prefix: str = "rm_",
                        step_positions: str = "delimiter") -> dict[str, np.ndarray]:
    """`reward_model_batch` for any responses `texts` to `problems` (e.g. best-of-N
    candidates): each response written for the reward model's `layout`
    (`hf_reward.format_response`: plain, a separator after every step, or Math-Shepherd's
    step tag) and tokenized with `rm_tokenizer`; a step ends at the token holding its
    delimiter (plain, separator) or its tag (step_tag); with `step_positions="offsets"` (the
    model's `step_positions`: DeBERTa reward models) at the token of the step's last
    non-whitespace character (`jaxstep.data.step_offsets`). Arrays `[B, max_len]`, `[B, max_steps]`."""
    layout = layout or hf_reward.Layout()
    written = [hf_reward.format_response(t, layout, delimiter) for t in texts]
    marker = hf_reward.format_response("x", layout, delimiter)[1]
    enc = step_offsets.encode(problems, rm_tokenizer, max_len, step_positions=step_positions,
                              solutions=[w for w, _ in written], delimiter=marker, max_steps=max_steps,
                              buckets=None, template=template)
    return {prefix + "ids": enc["ids"].astype(np.int32), prefix + "mask": enc["mask"].astype(np.int32),
            prefix + "step_ends": enc["step_ends"].astype(np.int32), prefix + "step_mask": enc["step_mask"]}


def same_tokenizer(a, b) -> bool:
    """Whether two tokenizers map text to the same ids (same vocabulary and specials)."""
    if a is b:
        return True
    return (len(a) == len(b) and a.get_vocab() == b.get_vocab()
            and tokenizer_lib.special_ids(a) == tokenizer_lib.special_ids(b))


# ----------------------------------------------------------------------------- forwards

