"""Step ends through character offsets, for tokenizers that drop the step delimiter.

`jaxstep.data.batching.encode_sft` finds a step's end at the token holding its
delimiter. Sentencepiece tokenizers (DeBERTa-v3's) normalise the newline away, so
no token holds it. Here a step ends at the token holding the step's LAST
NON-WHITESPACE CHARACTER, found through a fast tokenizer's `offset_mapping`:

    enc = encode_sft_offsets(problems, tokenizer, max_len, solutions=texts)   # encode_sft's keys

The reward models that read steps this way declare `step_positions = "offsets"`
(`jaxstep.models.deberta_heads`); training, evaluation and the PPO scorer all use it for them.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxstep.data import batching, formatting
from jaxstep.data.problem import Problem

STEP_POSITIONS = ("delimiter", "offsets")  # where a reward model's steps end


def step_char_ends(text: str, delimiter: str = formatting.DEFAULT_DELIMITER) -> list[int]:
    """Index of the last non-whitespace character of every non-blank step of `text`
    (the segments between delimiters), in order."""
    if not delimiter:
        raise ValueError("the step delimiter must be a non-empty string")
    ends, pos = [], 0
    for segment in text.split(delimiter):
        stripped = segment.rstrip()
        if stripped.strip():
            ends.append(pos + len(stripped) - 1)
        pos += len(segment) + len(delimiter)
    return ends


def token_of_chars(offsets: Sequence[tuple[int, int]], chars: Sequence[int]) -> list[int]:
    """For each character index, the token holding it (`start <= c < end`; the last
    such token if several), else the last token starting at or before it.

    Args:
      offsets: `[tokens]` (start, end) character spans (a fast tokenizer's offset_mapping).
      chars: character indices.

    Returns:
      token indices (-1 where no token starts at or before the character).
    """
    spans = np.asarray(offsets, np.int64).reshape(-1, 2)
    out = []
    for c in chars:
        holding = np.nonzero((spans[:, 0] <= c) & (c < spans[:, 1]))[0]
        if holding.size:
            out.append(int(holding[-1]))
            continue
        before = np.nonzero((spans[:, 0] <= c) & (spans[:, 1] > spans[:, 0]))[0]
        out.append(int(before[-1]) if before.size else -1)
    return out


def _offsets(tokenizer, texts: list[str]) -> tuple[list[list[int]], list[list[tuple[int, int]]]]:
    if not texts:
        return [], []
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"step ends through character offsets need a fast tokenizer; "
                         f"{type(tokenizer).__name__} has no offset_mapping")
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    return [list(i) for i in enc["input_ids"]], [list(map(tuple, o)) for o in enc["offset_mapping"]]


def solution_step_ends(tokenizer, texts: Sequence[str], delimiter: str = formatting.DEFAULT_DELIMITER):
    """`(ids, step_ends)` per text: its tokens (no specials) and the token index of each
    step's last non-whitespace character (increasing; a token closing two steps kept once)."""
    ids, offsets = _offsets(tokenizer, list(texts))
    ends = []
    for text, spans in zip(texts, offsets):
        row: list[int] = []
        for e in token_of_chars(spans, step_char_ends(text, delimiter)):
            if e >= 0 and (not row or e > row[-1]):
                row.append(e)
        ends.append(row)
    return ids, ends


def encode_sft_offsets(problems: Sequence[Problem], tokenizer, max_len: int, *,
                       solutions: Sequence[str], delimiter: str = formatting.DEFAULT_DELIMITER,
                       template: str = formatting.PROMPT_TEMPLATE, max_steps: int | None = None,
                       buckets: Sequence[int] | str | None = batching.AUTO, add_bos: bool = True,
                       add_eos: bool = True) -> dict[str, np.ndarray]:
    """`batching.encode_sft` (same layout `[bos] prompt solution [eos]`, same keys and
    shapes: ids/mask `[batch, T]`, step_ends/step_mask `[batch, S]`, ...) with each step
    ending at the token of its last non-whitespace character (`solution_step_ends`)."""
    return batching.encode_sft(problems, tokenizer, max_len, solutions=solutions, delimiter=delimiter,
                               template=template, max_steps=max_steps, buckets=buckets, add_bos=add_bos,
                               add_eos=add_eos, answer_steps=solution_step_ends)


def encode(problems: Sequence[Problem], tokenizer, max_len: int, *, step_positions: str = "delimiter",
           **kwargs) -> dict[str, np.ndarray]:
    """`batching.encode_sft` ("delimiter") or `encode_sft_offsets` ("offsets")."""
    if step_positions == "offsets":
        return encode_sft_offsets(problems, tokenizer, max_len, **kwargs)
    if step_positions == "delimiter":
        return batching.encode_sft(problems, tokenizer, max_len, **kwargs)
    raise ValueError(f"unknown step_positions {step_positions!r}; expected one of {STEP_POSITIONS}")
