"""Reward-model training records -> padded token batches (numpy).

    batch = encode_labeled(records, tokenizer, max_len, kind="prm")   # BCE on step ends
    batch = encode_pairs(pairs, tokenizer, max_len)                   # Bradley-Terry pairs

Lengths are padded to `batching.auto_buckets(max_len)` ("auto"); with `max_steps =
step_slots(records)` the step axis is the same for every batch too, so a jitted step
sees at most one shape per length bucket (one compile each).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxstep.data import batching, formatting, step_offsets
from jaxstep.rm import labels as labels_lib


def encode_labeled(records: Sequence[labels_lib.StepLabels], tokenizer, max_len: int, *, kind: str,
                   delimiter: str = formatting.DEFAULT_DELIMITER, max_steps: int | None = None,
                   buckets="auto", template: str = formatting.PROMPT_TEMPLATE,
                   step_positions: str = "delimiter") -> dict[str, np.ndarray]:
    """Token batch for BCE training/scoring of labelled solutions.

    Sequences are `[bos] prompt steps [eos]` (`batching.encode_sft`; the prompt written
    with `template`, `formatting.config_template(config)`, as the policy's). PRM: targets at
    every step end, and `lm_mask` bool `[B, T]` on the tokens of steps labelled correct
    (the targets of `rm.lm_loss_weight`); ORM: one target at the last real token (the EOS).
    `step_positions` "offsets": steps end at their last non-whitespace character's token
    (`jaxstep.data.step_offsets`, the DeBERTa reward models' `step_positions`).

    Returns numpy arrays: ids int32 `[B, T]`, mask bool `[B, T]`, step_ends int32
    `[B, S]`, step_mask bool `[B, S]` (steps present in the tokens), labels float32
    `[B, S]`, label_mask bool `[B, S]` (a target exists), truncated bool `[B]`,
    misaligned bool `[B]` (a row whose step count in tokens differs from its labels;
    its labels are dropped). For the ORM S = 1.
    """
    problems = [r.problem for r in records]
    texts = [r.text(delimiter) for r in records]
    enc = step_offsets.encode(problems, tokenizer, max_len, step_positions=step_positions,
                              solutions=texts, delimiter=delimiter,
                              max_steps=max_steps if kind == "prm" else None, buckets=buckets,
                              template=template)
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


def step_slots(records: Sequence) -> int:
    """Step slots S that hold every step of `records` (`StepLabels`: its steps;
    `StepPreference`: its prefix + the alternative): the largest count rounded up to a
    multiple of 4, at least 4. Passed as `max_steps`, it fixes the step axis of every
    batch of these records (no step is cut: a text has at most one step end per step)."""
    counts = [len(r.prefix) + 1 if isinstance(r, labels_lib.StepPreference) else len(r.steps) for r in records]
    return batching.step_bucket(max(counts, default=0))


def encode_pairs(pairs: Sequence[labels_lib.StepPreference], tokenizer, max_len: int, *,
                 delimiter: str = formatting.DEFAULT_DELIMITER, buckets="auto",
                 template: str = formatting.PROMPT_TEMPLATE, step_positions: str = "delimiter",
                 with_steps: bool = False, max_steps: int | None = None) -> dict[str, np.ndarray]:
    """Token batch for Bradley-Terry training: per pair a chosen and a rejected row.

    Each row is `[bos] prompt prefix step` (no EOS; the prompt written with
    `template`); its score is read at the last step's end (`target`). Pairs stay
    together on the batch axis (so the batch shards over devices and hosts like any
    other). Returns ids int32 / mask bool `[B, 2, T]`
    (index 0 chosen, 1 rejected), target int32 `[B, 2]`, pair_mask bool `[B]` (False
    when either side was cut by `max_len`); `with_steps` adds every row's step_ends int32
    / step_mask bool `[B, 2, S]` (for a block-causal PRM; `max_steps` fixes S, e.g.
    `step_slots(pairs)`). `step_positions` as in `encode_labeled`.
    """
    texts = [t for p in pairs for t in p.texts(delimiter)]
    problems = [p.problem for p in pairs for _ in range(2)]
    enc = step_offsets.encode(problems, tokenizer, max_len, step_positions=step_positions, solutions=texts,
                              delimiter=delimiter, buckets=buckets, add_eos=False, template=template,
                              max_steps=max_steps)
    n_steps = enc["step_mask"].sum(1)
    last = np.maximum(n_steps - 1, 0)
    target = enc["step_ends"][np.arange(len(problems)), last].astype(np.int32)
    ok = (~enc["truncated"] & (n_steps > 0)).reshape(-1, 2)
    B, T = len(pairs), enc["ids"].shape[1]
    out = {"ids": enc["ids"].reshape(B, 2, T), "mask": enc["mask"].reshape(B, 2, T),
           "target": target.reshape(B, 2), "pair_mask": ok.all(axis=1)}
    if with_steps:
        S = enc["step_ends"].shape[1]
        out.update(step_ends=enc["step_ends"].reshape(B, 2, S), step_mask=enc["step_mask"].reshape(B, 2, S))
    return out


def encode_labeled_batch(records, *, tokenizer, max_len, kind, delimiter,
                         template=formatting.PROMPT_TEMPLATE, step_positions="delimiter", max_steps=None,
                         buckets="auto"):
    """`encode_labeled` with keyword arguments only (a loader's transform)."""
    return encode_labeled(records, tokenizer, max_len, kind=kind, delimiter=delimiter, template=template,
                          step_positions=step_positions, max_steps=max_steps, buckets=buckets)


def encode_pairs_batch(pairs, *, tokenizer, max_len, delimiter, template=formatting.PROMPT_TEMPLATE,
                       step_positions="delimiter", with_steps=False, max_steps=None, buckets="auto"):
    """`encode_pairs` with keyword arguments only (a loader's transform)."""
    return encode_pairs(pairs, tokenizer, max_len, delimiter=delimiter, template=template,
                        step_positions=step_positions, with_steps=with_steps, max_steps=max_steps,
                        buckets=buckets)
