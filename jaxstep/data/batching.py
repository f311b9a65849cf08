"""Token arrays for the stages: prompts, SFT sequences, step boundaries, and a grain loader.

Conventions (numpy arrays, converted to jnp by the caller):
  * ids are int32; masks are bool.
  * Prompts are LEFT-padded (the last prompt token sits at P-1, generation continues
    at P); SFT sequences are `[bos] prompt solution [eos]` RIGHT-padded.
  * Lengths are padded to one of a few bucket sizes (`bucket_length`) so that jitted
    functions compile a handful of shapes, not one per batch.
  * A step ends at the token holding the last character of its delimiter; the last
    step (the "#### N" line, or whatever follows the last delimiter) ends at its
    last non-blank token. Positions are indices into the token array given.
"""
from __future__ import annotations

import math
import weakref
from typing import Any, Callable, Sequence

import numpy as np

from jaxstep.data import formatting
from jaxstep.data.problem import Problem
from jaxstep.data.tokenizer import special_ids

AUTO = "auto"


# ---------------------------------------------------------------------------- shapes

def auto_buckets(max_len: int) -> tuple[int, ...]:
    """Quarter steps of max_len, rounded up to multiples of 8: e.g. 96 -> (24, 48, 72, 96)."""
    sizes = {min(max_len, 8 * math.ceil(max_len * q / 4 / 8)) for q in (1, 2, 3, 4)}
    return tuple(sorted(s for s in sizes if s > 0))


def bucket_length(length: int, max_len: int, buckets: Sequence[int] | str | None = AUTO) -> int:
    """The padded length for a batch whose longest row has `length` tokens.

    buckets: "auto" (`auto_buckets(max_len)`), an explicit sorted tuple, or None
    (always max_len: a single static shape).
    """
    if buckets is None:
        return max_len
    sizes = auto_buckets(max_len) if buckets == AUTO else tuple(sorted(buckets))
    for size in sizes:
        if length <= size:
            return min(size, max_len)
    return max_len


def step_bucket(count: int) -> int:
    """Step slots for `count` steps: rounded up to a multiple of 4, at least 4."""
    return max(4, 4 * math.ceil(count / 4))


# ---------------------------------------------------------------------------- tokens

def _encode_texts(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def _encode_prompt_texts(tokenizer, texts: list[str]) -> list[tuple[str, list[int]]]:
    return list(zip(texts, _encode_texts(tokenizer, texts)))


def _bos_for(text: str, bos: list[int], tokenizer, template: str) -> list[int]:
    """`bos`, or none when a chat-template prompt already starts with the BOS token."""
    bos_token = getattr(tokenizer, "bos_token", None)
    chat_bos = template == formatting.CHAT and bos_token and text.startswith(bos_token)
    return [] if bos and chat_bos else bos


def encode_prompts(problems: Sequence[Problem | str], tokenizer, max_len: int, *,
                   template: str = formatting.PROMPT_TEMPLATE,
                   buckets: Sequence[int] | str | None = None, add_bos: bool = True) -> dict[str, np.ndarray]:
    """Tokenized prompts, LEFT-padded, for generation.

    Args:
      problems: Problems or question strings (both formatted with `template`).
      template: a `str.format` template with `{question}`, or `formatting.CHAT` for the
        tokenizer's chat template (`formatting.prompt_template(config.data.prompt_template)`).
      tokenizer: a transformers tokenizer.
      max_len: P, the prompt length; longer prompts lose their first tokens
        (`truncated`; `int(truncated.sum())` is the number cut).
      buckets: None (default: always P = max_len), "auto" or explicit sizes.
      add_bos: prepend the tokenizer's BOS token if it has one.

    Returns:
      ids: int32 [batch, P], pad on the left; mask: bool [batch, P];
      lengths: int32 [batch] real prompt tokens; truncated: bool [batch].
    """
    ids_of = special_ids(tokenizer)
    bos = [ids_of["bos"]] if add_bos and ids_of["bos"] is not None else []
    rows = [_bos_for(text, bos, tokenizer, template) + ids for text, ids in
            _encode_prompt_texts(tokenizer, formatting.format_prompts(problems, template, tokenizer))]
    truncated = np.array([len(r) > max_len for r in rows], dtype=bool)
    rows = [r[-max_len:] for r in rows]
    width = bucket_length(max((len(r) for r in rows), default=1), max_len, buckets)
    ids = np.full((len(rows), width), ids_of["pad"], dtype=np.int32)
    mask = np.zeros((len(rows), width), dtype=bool)
    for b, r in enumerate(rows):
        if r:
            ids[b, width - len(r):] = r
            mask[b, width - len(r):] = True
    return {"ids": ids, "mask": mask, "lengths": np.array([len(r) for r in rows], dtype=np.int32),
            "truncated": truncated}


def encode_sft(problems: Sequence[Problem], tokenizer, max_len: int, *,
               solutions: Sequence[str] | None = None, delimiter: str = formatting.DEFAULT_DELIMITER,
               template: str = formatting.PROMPT_TEMPLATE, max_steps: int | None = None,
               buckets: Sequence[int] | str | None = AUTO, add_bos: bool = True,
               add_eos: bool = True, answer_steps=None) -> dict[str, np.ndarray]:
    """`[bos] prompt solution [eos]` sequences with loss and step-end positions.

    Args:
      problems: the Problems (their prompts; their reference solutions unless
        `solutions` is given).
      tokenizer: a transformers tokenizer.
      max_len: T at most; longer sequences are cut on the right (`truncated`).
      solutions: rendered solution texts to use instead of the references (e.g.
        sampled or corrupted solutions for ORM/PRM training).
      delimiter: the step delimiter used to render and to locate steps.
      max_steps: S; None = the batch's largest step count rounded up to a multiple
        of 4. Steps past S are dropped (see `num_steps`).
      buckets: "auto" (default), explicit sizes, or None for T = max_len.
      answer_steps: `(tokenizer, solutions, delimiter) -> (token lists, step ends per
        solution)`; None finds each step's end at its delimiter token
        (`step_ends_from_tokens`); `jaxstep.data.step_offsets.solution_step_ends` uses
        character offsets instead.

    Returns:
      ids int32 [batch, T] (right-padded); mask bool [batch, T];
      loss_mask bool [batch, T]: True where ids[b, t] is a solution token or the eos
        (the targets; predict ids[t] from position t-1);
      step_ends int32 [batch, S]: index of the last token of each step (the answer
        line is the last step); step_mask bool [batch, S];
      num_steps int32 [batch] (before the S cap); prompt_lens int32 [batch]
        (solution starts there); lengths int32 [batch]; truncated bool [batch].
    """
    if solutions is None:
        solutions = [formatting.reference_solution(p, delimiter) for p in problems]
    if len(solutions) != len(problems):
        raise ValueError(f"{len(problems)} problems but {len(solutions)} solutions")
    ids_of = special_ids(tokenizer)
    bos = [ids_of["bos"]] if add_bos and ids_of["bos"] is not None else []
    eos = [ids_of["eos"]] if add_eos and ids_of["eos"] is not None else []
    prompts = _encode_prompt_texts(tokenizer, formatting.format_prompts(problems, template, tokenizer))
    if answer_steps is None:
        answers = _encode_texts(tokenizer, list(solutions))
        answer_ends = [step_ends_from_tokens(answer, tokenizer, delimiter) for answer in answers]
    else:
        answers, answer_ends = answer_steps(tokenizer, list(solutions), delimiter)
    rows, prompt_lens, ends_per_row = [], [], []
    for (text, prompt), answer, ends in zip(prompts, answers, answer_ends):
        row_bos = _bos_for(text, bos, tokenizer, template)
        start = len(row_bos) + len(prompt)
        rows.append(row_bos + prompt + answer + eos)
        prompt_lens.append(start)
        ends_per_row.append([start + e for e in ends])
    truncated = np.array([len(r) > max_len for r in rows], dtype=bool)
    rows = [r[:max_len] for r in rows]
    ends_per_row = [[e for e in ends if e < len(r)] for ends, r in zip(ends_per_row, rows)]
    width = bucket_length(max((len(r) for r in rows), default=1), max_len, buckets)
    num_steps = np.array([len(e) for e in ends_per_row], dtype=np.int32)
    steps_width = max_steps if max_steps is not None else step_bucket(int(num_steps.max(initial=0)))
    batch = len(rows)
    ids = np.full((batch, width), ids_of["pad"], dtype=np.int32)
    mask = np.zeros((batch, width), dtype=bool)
    loss_mask = np.zeros((batch, width), dtype=bool)
    step_ends = np.zeros((batch, steps_width), dtype=np.int32)
    step_mask = np.zeros((batch, steps_width), dtype=bool)
    for b, (r, start, ends) in enumerate(zip(rows, prompt_lens, ends_per_row)):
        ids[b, :len(r)] = r
        mask[b, :len(r)] = True
        loss_mask[b, min(start, len(r)):len(r)] = True
        ends = ends[:steps_width]
        step_ends[b, :len(ends)] = ends
        step_mask[b, :len(ends)] = True
    return {"ids": ids, "mask": mask, "loss_mask": loss_mask, "step_ends": step_ends,
            "step_mask": step_mask, "num_steps": num_steps,
            "prompt_lens": np.array(prompt_lens, dtype=np.int32),
            "lengths": np.array([len(r) for r in rows], dtype=np.int32), "truncated": truncated}


# ---------------------------------------------------------------------------- step ends

_TEXT_CACHE: "weakref.WeakKeyDictionary[Any, dict[int, str]]" = weakref.WeakKeyDictionary()


def _token_texts(tokenizer, ids: Sequence[int]) -> list[str]:
    """Decoded text of each token alone ("" for special tokens), cached per tokenizer."""
    try:
        cache = _TEXT_CACHE.setdefault(tokenizer, {})
    except TypeError:  # not weak-referenceable
        cache = {}
    if "special" not in cache:
        cache["special"] = frozenset(tokenizer.all_special_ids)  # type: ignore[assignment]
    special = cache["special"]
    out = []
    for i in ids:
        i = int(i)
        text = cache.get(i)
        if text is None:
            text = "" if i in special else tokenizer.decode([i], clean_up_tokenization_spaces=False)
            cache[i] = text
        out.append(text)
    return out


def step_ends_from_tokens(token_ids: Sequence[int], tokenizer, delimiter: str = formatting.DEFAULT_DELIMITER,
                          *, stop_at_eos: bool = True) -> list[int]:
    """Token index of the last token of each step in a (generated) response.

    The response is cut at the delimiter; each non-blank segment is a step. A step
    ends at the token holding the last character of the delimiter that closes it;
    the final segment (no closing delimiter, e.g. "#### 8") ends at the token of its
    last non-blank character. Special tokens count as empty text; with
    `stop_at_eos` nothing after the first EOS is read.

    Args:
      token_ids: [response_len] token ids of the response only.
      tokenizer: the tokenizer that produced them.
      delimiter: the step delimiter ("\\n" by default).

    Returns:
      Increasing token indices, one per step.
    """
    if not delimiter:
        raise ValueError("the step delimiter must be a non-empty string")
    ids = [int(i) for i in token_ids]
    eos = tokenizer.eos_token_id
    if stop_at_eos and eos is not None and eos in ids:
        ids = ids[:ids.index(eos)]
    texts = _token_texts(tokenizer, ids)
    owner = np.repeat(np.arange(len(texts)), [len(t) for t in texts]) if texts else np.zeros(0, int)
    text = "".join(texts)
    ends: list[int] = []
    pos = 0
    while True:
        hit = text.find(delimiter, pos)
        if hit < 0:
            break
        if text[pos:hit].strip():
            ends.append(int(owner[hit + len(delimiter) - 1]))
        pos = hit + len(delimiter)
    tail = text[pos:]
    if tail.strip():
        last_char = pos + len(tail.rstrip()) - 1
        ends.append(int(owner[last_char]))
    deduped: list[int] = []
    for e in ends:  # a token can close two steps only if it holds a whole step; keep one
        if not deduped or e > deduped[-1]:
            deduped.append(e)
    return deduped


def batch_step_ends(token_ids: np.ndarray, tokenizer, delimiter: str = formatting.DEFAULT_DELIMITER, *,
                    max_steps: int | None = None, offset: int = 0) -> dict[str, np.ndarray]:
    """`step_ends_from_tokens` for a batch of responses.

    Args:
      token_ids: int [batch, R] responses (anything after EOS is ignored).
      max_steps: S; None = the batch's largest count rounded up to a multiple of 4.
        Steps past S are dropped (their count stays in `num_steps`).
      offset: added to every index (e.g. P, when responses follow P prompt tokens).

    Returns:
      step_ends int32 [batch, S], step_mask bool [batch, S], num_steps int32 [batch].
    """
    token_ids = np.asarray(token_ids)
    per_row = [step_ends_from_tokens(row, tokenizer, delimiter) for row in token_ids]
    num_steps = np.array([len(e) for e in per_row], dtype=np.int32)
    width = max_steps if max_steps is not None else step_bucket(int(num_steps.max(initial=0)))
    step_ends = np.zeros((len(per_row), width), dtype=np.int32)
    step_mask = np.zeros((len(per_row), width), dtype=bool)
    for b, ends in enumerate(per_row):
        ends = ends[:width]
        step_ends[b, :len(ends)] = np.asarray(ends, dtype=np.int32) + offset
        step_mask[b, :len(ends)] = True
    return {"step_ends": step_ends, "step_mask": step_mask, "num_steps": num_steps}


# ---------------------------------------------------------------------------- loader

def make_loader(records: Sequence[Any], batch_size: int, seed: int = 0,
                shard_index: int | None = None, shard_count: int | None = None, *,
                num_epochs: int | None = None, shuffle: bool = True, drop_remainder: bool = True,
                transform: Callable[[list[Any]], Any] | None = None):
    """A deterministic, resumable, per-process-sharded batch iterator (grain).

    Process `shard_index` of `shard_count` reads records[shard_index::shard_count];
    each epoch is reshuffled with a seed derived from `seed`. The result is a grain
    `DatasetIterator`: `it.get_state()` returns a small JSON-able dict and
    `it.set_state(state)` on a fresh iterator (same arguments) continues with exactly
    the next batch.

    Args:
      records: any sequence (e.g. Problems).
      batch_size: records per batch (per process).
      seed: shuffle seed.
      shard_index, shard_count: default jax.process_index() / jax.process_count().
      num_epochs: None = repeat forever.
      shuffle: shuffle within the shard each epoch.
      drop_remainder: drop a last partial batch (only matters with num_epochs).
      transform: applied to each batch (a list of records), e.g.
        `lambda b: encode_sft(b, tokenizer, max_len)`.
    """
    import grain  # noqa: PLC0415 - heavy import, only for loaders

    if shard_index is None or shard_count is None:
        import jax  # noqa: PLC0415

        shard_index = jax.process_index() if shard_index is None else shard_index
        shard_count = jax.process_count() if shard_count is None else shard_count
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"need 0 <= shard_index < shard_count, got {shard_index}, {shard_count}")
    if len(records) < shard_count:
        raise ValueError(f"{len(records)} records cannot be split into {shard_count} shards")
    dataset = grain.MapDataset.source(list(records))[shard_index::shard_count]
    if shuffle:
        dataset = dataset.shuffle(seed=seed)
    dataset = dataset.repeat(num_epochs).batch(batch_size, drop_remainder=drop_remainder, batch_fn=list)
    if transform is not None:
        dataset = dataset.map(transform)
    # No background threads: batches are cheap, the 2-core CI machine is shared, and
    # the state then points exactly at the next batch to produce.
    options = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
    return iter(dataset.to_iter_dataset(options))
