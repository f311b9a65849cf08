"""Reward-model training records -> padded token batches (numpy).

    batch = encode_labeled(records, tokenizer, max_len, kind="prm")   # BCE on step ends
    batch = encode_pairs(pairs, tokenizer, max_len)                   # Bradley-Terry pairs
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxstep.data import batching, formatting
from jaxstep.rm import labels as labels_lib


def encode_labeled(records: Sequence[labels_lib.StepLabels], tokenizer, max_len: int, *, kind: str,
                   delimiter: str = formatting.DEFAULT_DELIMITER, max_steps: int | None = None,
                   buckets="auto") -> dict[str, np.ndarray]:
    """Token batch for BCE training/scoring of labelled solutions.

    Sequences are `[bos] prompt steps [eos]` (`batching.encode_sft`). PRM: targets at
    every step end, and `lm_mask` bool `[B, T]` on the tokens of steps labelled correct
    (the targets of `rm.lm_loss_weight`); ORM: one target at the last real token (the EOS).

    Returns numpy arrays: ids int32 `[B, T]`, mask bool `[B, T]`, step_ends int32
    `[B, S]`, step_mask bool `[B, S]` (steps present in the tokens), labels float32
    `[B, S]`, label_mask bool `[B, S]` (a target exists), truncated bool `[B]`,
    misaligned bool `[B]` (a row whose step count in tokens differs from its labels;
    its labels are dropped). For the ORM S = 1.
    """
    problems = [r.problem for r in records]
    texts = [r.text(delimiter) for r in records]
    enc = batching.encode_sft(problems, tokenizer, max_len, solutions=texts, delimiter=delimiter,
                              max_steps=max_steps if kind == "prm" else None, buckets=buckets)
    B = len(records)
    if kind == "orm":
        step_ends = (enc["lengths"] - 1).astype(np.int32)[:, None]
        labels = np.array([[float(bool(r.correct))] for r in records], np.float32).reshape(B, 1)
        label_mask = np.array([[r.correct is not None] for r in records], bool).reshape(B, 1)
        return {"ids": enc["ids"], "mask": enc["mask"], "step_ends": step_ends,
                "step_mask": np.ones((B, 1), bool), "labels": labels, "label_mask": label_mask,
                "lm_mask": np.zeros(enc["ids"].shape, bool), "truncated": enc["truncated"],
                "misaligned": np.zeros(B, bool)}
    S = enc["step_ends"].shape[1]
    labels = np.zeros((B, S), np.float32)
    label_mask = np.zeros((B, S), bool)
    lm_mask = np.zeros(enc["ids"].shape, bool)
    misaligned = enc["num_steps"] != np.array([len(r.steps) for r in records])
    for b, r in enumerate(records):
        if misaligned[b]:
            continue
        start = int(enc["prompt_lens"][b])
        for k, label in enumerate(r.labels[:S]):
            if not enc["step_mask"][b, k]:
                break
            end = int(enc["step_ends"][b, k])
            if label is not None:
                labels[b, k] = label
                label_mask[b, k] = True
                lm_mask[b, start:end + 1] = label >= 0.5
            start = end + 1
    return {"ids": enc["ids"], "mask": enc["mask"], "step_ends": enc["step_ends"],
            "step_mask": enc["step_mask"], "labels": labels, "label_mask": label_mask,
            "lm_mask": lm_mask, "truncated": enc["truncated"], "misaligned": misaligned}


def encode_pairs(pairs: Sequence[labels_lib.StepPreference], tokenizer, max_len: int, *,
                 delimiter: str = formatting.DEFAULT_DELIMITER, buckets="auto") -> dict[str, np.ndarray]:
    """Token batch for Bradley-Terry training: per pair a chosen and a rejected row.

    Each row is `[bos] prompt prefix step` (no EOS); its score is read at the last
    step's end (`target`). Pairs stay together on the batch axis (so the batch shards
    over devices and hosts like any other). Returns ids int32 / mask bool `[B, 2, T]`
    (index 0 chosen, 1 rejected), target int32 `[B, 2]`, pair_mask bool `[B]` (False
    when either side was cut by `max_len`).
    """
    texts = [t for p in pairs for t in p.texts(delimiter)]
    problems = [p.problem for p in pairs for _ in range(2)]
    enc = batching.encode_sft(problems, tokenizer, max_len, solutions=texts,
                              delimiter=delimiter, buckets=buckets, add_eos=False)
    n_steps = enc["step_mask"].sum(1)
    last = np.maximum(n_steps - 1, 0)
    target = enc["step_ends"][np.arange(len(problems)), last].astype(np.int32)
    ok = (~enc["truncated"] & (n_steps > 0)).reshape(-1, 2)
    B, T = len(pairs), enc["ids"].shape[1]
    return {"ids": enc["ids"].reshape(B, 2, T), "mask": enc["mask"].reshape(B, 2, T),
            "target": target.reshape(B, 2), "pair_mask": ok.all(axis=1)}


def encode_labeled_batch(records, *, tokenizer, max_len, kind, delimiter):
    return encode_labeled(records, tokenizer, max_len, kind=kind, delimiter=delimiter)


def encode_pairs_batch(pairs, *, tokenizer, max_len, delimiter):
    return encode_pairs(pairs, tokenizer, max_len, delimiter=delimiter)
