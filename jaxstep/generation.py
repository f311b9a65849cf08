"""The one generation path: problems -> prompts -> sharded sampler -> host -> text -> grade.

    results = decode_problems(model, params, tokenizer, problems, max_prompt_len=64,
                              max_new_tokens=96, batch_size=64, mesh=mesh)   # greedy
    accuracy = np.mean([r.correct for r in results])

Evals, the reward models' samples, Monte-Carlo step labels and PPO rollouts all
generate through `generate_batch` (one sampler call on one encoded batch).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from jaxstep.data import Problem, batching, formatting, grading
from jaxstep.data import tokenizer as tokenizer_lib
from jaxstep.models import sampler
from jaxstep.parallel import distributed
from jaxstep.parallel import mesh as mesh_lib
from jaxstep.parallel import rules as rules_lib
from jaxstep.parallel.placement import is_main_process, place_on_mesh, round_batch, shard_batch, to_host


@dataclasses.dataclass(frozen=True)
class Decoded:
    """One generated solution to one problem, graded.

    Attributes:
      problem: the Problem it answers.
      sample: index of this sample among the problem's samples (0 for greedy).
      text: the response text (special tokens dropped, cut at EOS).
      tokens: the response token ids, without padding (EOS included if emitted).
      answer: the final answer extracted from `text` (None if it states none).
      correct: `grading.is_correct(text, problem.answer)`.
      finished: the response ended with EOS (False: it ran out of tokens).
      prompt_truncated: the prompt lost its first tokens to `max_prompt_len`.
    """

    problem: Problem
    sample: int
    text: str
    tokens: tuple[int, ...]
    answer: str | None
    correct: bool
    finished: bool
    prompt_truncated: bool = False  # the prompt was longer than max_prompt_len (cut on the left)

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)


def stop_token_ids(model, tokenizer) -> tuple[int, ...]:
    """EOS ids that end a response: the tokenizer's and the model config's."""
    found = [tokenizer_lib.special_ids(tokenizer)["eos"]]
    config_eos = model.config.eos_token_id
    found += list(config_eos) if isinstance(config_eos, tuple) else [config_eos]
    return tuple(dict.fromkeys(int(t) for t in found if t is not None))


def grade(problem: Problem, text: str) -> tuple[str | None, bool]:
    """(extracted answer, correct) of a response to `problem`."""
    return grading.extract_answer(text), grading.is_correct(text, problem.answer)


@dataclasses.dataclass(frozen=True)
class Generated:
    """One sampler call's output on the host (numpy), all processes alike.

    tokens: int32 `[batch, new]` responses (pad after the end); lengths: int32 `[batch]`
    (EOS included); logprobs: float32 `[batch, new]` log p(token) under the unscaled
    model; sampling_logprobs: the same under the sampling distribution (logits /
    temperature, after top-k/top-p). The two log-prob arrays are None unless asked for
    (`generate_batch(..., with_logprobs=True)`): evals need only the tokens.
    """

    tokens: np.ndarray
    lengths: np.ndarray
    logprobs: np.ndarray | None = None
    sampling_logprobs: np.ndarray | None = None


def generate_batch(model, params, prompt_ids: np.ndarray, prompt_mask: np.ndarray, key: jax.Array, *,
                   max_new_tokens: int, eos_ids: Sequence[int], pad_id: int, mesh: jax.sharding.Mesh,
                   rules=None, greedy: bool = False, temperature: float = 1.0, top_k: int = 0,
                   top_p: float = 1.0, with_logprobs: bool = False,
                   decode_block: int = sampler.DECODE_BLOCK) -> Generated:
    """One batch through the KV-cache sampler: shard the prompts over the mesh's data
    axes, generate, gather to the host.

    Args:
      prompt_ids, prompt_mask: `[batch, prompt_len]` numpy, the same on every process
        (each feeds its rows); `batch` must divide over the data axes.
      key: the sampling key of this batch.
      with_logprobs: compute the log-probs and gather them to the host (PPO rollouts);
        without, the sampler skips them (`sampler.generate(with_logprobs=False)`).
      the rest: `jaxstep.models.sampler.generate`.
    """
    local = distributed.process_shard(np.arange(prompt_ids.shape[0]))
    inputs = shard_batch({"ids": prompt_ids[local], "mask": prompt_mask[local]}, mesh)
    with rules_lib.activation_sharding(mesh, rules):
        out = sampler.generate(
            model, params, inputs["ids"], inputs["mask"], key, max_new_tokens=max_new_tokens,
            temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy, eos_id=eos_ids,
            pad_id=pad_id, decode_block=decode_block, with_logprobs=with_logprobs)
    arrays = (out.tokens, out.lengths) + ((out.logprobs, out.sampling_logprobs) if with_logprobs else ())
    return Generated(*(np.asarray(x) for x in to_host(arrays)))


def chunk_rows(rows: int, chunk_size: int, mesh: jax.sharding.Mesh) -> int:
    """Rows per sampler/scorer call for `rows` rows in chunks of `chunk_size`
    (`sampler.batch_size`): `rows` itself (ONE call) when `chunk_size` <= 0 or >= rows,
    else `chunk_size` rounded up to the mesh's data-parallel size (`round_batch`)."""
    if chunk_size <= 0 or chunk_size >= rows:
        return rows
    return min(rows, round_batch(chunk_size, mesh))


def chunk_slices(rows: int, size: int) -> list[slice]:
    """`[0, size), [size, 2 size), ...` covering `rows` (the last may be shorter)."""
    return [slice(start, min(start + size, rows)) for start in range(0, rows, size)]


def pad_rows(x: np.ndarray, size: int) -> np.ndarray:
    """`x` `[n, ...]` padded to `size` rows with copies of its first row (one compiled
    shape for a short last chunk; the copies are dropped after the call)."""
    pad = size - x.shape[0]
    return np.concatenate([x, np.repeat(x[:1], pad, 0)]) if pad else x


def generate_chunked(model, params, prompt_ids: np.ndarray, prompt_mask: np.ndarray, key: jax.Array, *,
                     chunk_size: int, mesh: jax.sharding.Mesh, **kwargs) -> Generated:
    """`generate_batch` over any number of rows, `chunk_rows(rows, chunk_size, mesh)`
    rows per sampler call (the last chunk padded with copies of its first row), the
    outputs concatenated in row order.

    One chunk (`chunk_size` 0 or >= rows, the default sizes of the PPO stage) is one
    `generate_batch` call with `key` itself: bitwise what an unchunked call returns.
    Several chunks: chunk i samples with `jax.random.fold_in(key, i)`, so a chunked run
    is reproducible (same key, same chunk size: same tokens) but its SAMPLED tokens
    differ from one unchunked call's (other keys per row); greedy tokens are the same
    (each row's argmax does not depend on the other rows).

    Args:
      prompt_ids, prompt_mask: `[rows, prompt_len]` numpy, the same on every process.
      chunk_size: rows per call (`sampler.batch_size`); 0 = one call.
      kwargs: `generate_batch`'s keyword arguments (max_new_tokens, eos_ids, pad_id, ...).
    """
    rows = prompt_ids.shape[0]
    size = chunk_rows(rows, chunk_size, mesh)
    if size == rows:
        return generate_batch(model, params, prompt_ids, prompt_mask, key, mesh=mesh, **kwargs)
    parts = []
    for i, part in enumerate(chunk_slices(rows, size)):
        n = part.stop - part.start
        out = generate_batch(model, params, pad_rows(prompt_ids[part], size),
                             pad_rows(prompt_mask[part], size), jax.random.fold_in(key, i), mesh=mesh,
                             **kwargs)
        fields = (getattr(out, f.name) for f in dataclasses.fields(out))
        parts.append([None if x is None else x[:n] for x in fields])
    return Generated(*(None if column[0] is None else np.concatenate(column) for column in zip(*parts)))


def decode_problems(model, params, tokenizer, problems: Sequence[Problem], *,
                    max_prompt_len: int, max_new_tokens: int, batch_size: int,
                    greedy: bool = True, temperature: float = 1.0, top_k: int = 0,
                    top_p: float = 1.0, num_samples: int = 1, key: jax.Array | None = None,
                    mesh: jax.sharding.Mesh | None = None, rules=None, progress: bool = True,
                    desc: str = "decode", prefixes: Sequence[str] | None = None,
                    template: str = formatting.PROMPT_TEMPLATE,
                    decode_block: int = sampler.DECODE_BLOCK) -> list[Decoded]:
    """Generates `num_samples` responses per problem with the KV-cache sampler and grades them.

    Prompts are left-padded to `max_prompt_len` and decoded `batch_size` at a time
    (rounded up to the mesh's data-parallel size; the last batch is padded with copies
    of its first row), so the jitted sampler compiles once. Every process runs this with
    the same problems and gets the same results.

    Args:
      model, params: the Decoder and its params.
      problems: what to solve.
      greedy: argmax decoding (then `num_samples` is usually 1); otherwise sampling with
        `temperature`, `top_k` (0 = off), `top_p` (1.0 = off).
      num_samples: responses per problem (pass@k: k).
      key: sampling key (default `jax.random.key(0)`); batch i uses `fold_in(key, i)`.
      mesh: decode with the batch split over its data axes (default: all devices on data).
      rules: logical-axis rules for the model's activation constraints.
      prefixes: optional text per problem placed after its prompt (a partial solution,
        e.g. the first steps for Monte-Carlo step labels); generation continues it,
        `Decoded.text` is the continuation only and `correct` grades prefix + text.
      template: the prompt template (`formatting.config_template(config)`).

    Returns:
      `len(problems) * num_samples` Decoded, problem-major (problem 0's samples first).
    """

    if not problems:
        return []
    mesh = mesh if mesh is not None else mesh_lib.make_mesh()
    batch_size = round_batch(batch_size, mesh)
    key = jax.random.key(0) if key is None else key
    ids = tokenizer_lib.special_ids(tokenizer)
    eos_ids = stop_token_ids(model, tokenizer)
    if prefixes is not None and len(prefixes) != len(problems):
        raise ValueError(f"decode_problems: {len(problems)} problems but {len(prefixes)} prefixes")
    prefix_of = list(prefixes) if prefixes is not None else [""] * len(problems)
    rows = [(p, k, prefix_of[i]) for i, p in enumerate(problems) for k in range(num_samples)]
    results: list[Decoded] = []
    batches = range(0, len(rows), batch_size)
    bar = _progress(len(rows), desc, progress)
    params = place_on_mesh(params, mesh)
    for i, start in enumerate(batches):
        chunk = rows[start:start + batch_size]
        if prefixes is None:
            encoded = batching.encode_prompts([p for p, _, _ in chunk], tokenizer, max_prompt_len,
                                              template=template)
        else:
            texts = formatting.format_prompts([p for p, _, _ in chunk], template, tokenizer)
            encoded = batching.encode_prompts([t + x for t, (_, _, x) in zip(texts, chunk)],
                                              tokenizer, max_prompt_len, template="{question}")
        prompt_ids, prompt_mask = encoded["ids"], encoded["mask"]
        pad = batch_size - len(chunk)
        if pad:
            prompt_ids = np.concatenate([prompt_ids, np.repeat(prompt_ids[:1], pad, 0)])
            prompt_mask = np.concatenate([prompt_mask, np.repeat(prompt_mask[:1], pad, 0)])
        out = generate_batch(model, params, prompt_ids, prompt_mask, jax.random.fold_in(key, i),
                             max_new_tokens=max_new_tokens, eos_ids=eos_ids, pad_id=ids["pad"],
                             mesh=mesh, rules=rules, greedy=greedy, temperature=temperature,
                             top_k=top_k, top_p=top_p, decode_block=decode_block)
        for (problem, sample, prefix), row, length, cut in zip(chunk, out.tokens, out.lengths,
                                                               encoded["truncated"]):
            response = [int(t) for t in row[:int(length)]]
            finished = bool(response) and response[-1] in eos_ids
            text = tokenizer.decode(response, skip_special_tokens=True)
            answer, correct = grade(problem, prefix + text)
            results.append(Decoded(problem, sample, text, tuple(response), answer, correct, finished,
                                   bool(cut)))
        bar.update(len(chunk))
    bar.close()
    return results


def _progress(total: int, desc: str, enabled: bool):
    return tqdm(total=total, desc=desc, unit="sol", dynamic_ncols=True,
                disable=not (enabled and is_main_process()))
