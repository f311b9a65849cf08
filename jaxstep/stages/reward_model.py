"""Stages `orm` and `prm`: reward models on a decoder backbone with a scalar head.

    python -m jaxstep.main --config=configs/train_prm.py --workdir=runs/prm
    python -m jaxstep.main --config=configs/train_orm.py --workdir=runs/orm

A reward model is `jaxstep.models.ScalarModel` (the generator's decoder without its LM
head, plus a Dense(1) head) initialised from a generator export folder or an HF model.
The ORM is trained on the logit at the last token of a solution, the PRM on the logit
at the last token of every step (`jaxstep.rewards.scoring` reads them the same way):

  * `orm`: N sampled solutions per training problem labelled by final-answer
    correctness (or pre-labelled solutions from `rm.solutions_path`), binary
    cross-entropy.
  * `prm`: step labels from `rm.labels` = exact | prm800k | montecarlo
    (`jaxstep.train.labels`), loss `rm.loss` = bce (per step, soft labels allowed) or
    bt (Bradley-Terry `-log sigmoid(r_chosen - r_rejected)` between alternatives of the
    same step).

PRM options for small backbones (see the README's ablation): `rm.likelihood_feature`
adds w * (the step's log-likelihood under the backbone's own LM head) to the head's
logit (`jaxstep.models.heads`), `rm.lm_loss_weight` adds the next-token loss on correct
steps, and `rm.corrupted_per_problem` / `rm.references_per_problem` with
`rm.corruption_kinds` add minimal pairs of synthetic problems. The report also gives
flaw detection on minimal pairs of the held-out problems (`rm_eval.flaw_detection`).

Training data are built once and kept in `<workdir>/data/` (Monte-Carlo labels are
cached per finished solution). Training: AdamW with warmup and cosine decay, one
jitted step sharded over the mesh, Orbax checkpoints (params, optimizer, step, data
position) with resume. Then `jaxstep.train.rm_eval` evaluates on held-out samples of
the generator (step/outcome AUC, best-of-N) and writes `report.md`. The product is
`<workdir>/export`: an HF causal-LM folder of the backbone (with the generator's LM
head, unchanged unless the likelihood feature trained it) plus `score.safetensors` and `reward_model.json`;
`load_reward_model(path)` reads it back in one call.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import shutil
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxstep import checkpoint as checkpoint_lib
from jaxstep import models
from jaxstep.data import batching, formatting, synthetic
from jaxstep.data import tokenizer as tokenizer_lib
from jaxstep.data.problem import Problem
from jaxstep.metrics import MetricWriter
from jaxstep.train import common
from jaxstep.train import labels as labels_lib

logger = logging.getLogger(__name__)

KINDS = ("orm", "prm")
LABEL_SOURCES = ("exact", "prm800k", "montecarlo")
LOSSES = ("bce", "bt")
RM_CONFIG_FILE = "reward_model.json"
SCORE_FILE = "score.safetensors"
FORMAT = "jaxstep-reward-model"
FORMAT_VERSION = 1
DATA_DIR = "data"


# ============================================================================ model I/O

def reward_model_from_generator(model: models.Decoder, params: dict, key: jax.Array,
                                boundary_ids: Sequence[int] = ()):
    """`(ScalarModel, rm_params, lm_head)` from a generator: same backbone, fresh head.

    `boundary_ids` (the step delimiter's token ids) turns on the likelihood feature
    (`jaxstep.models.heads`); the LM head is then part of the params. Otherwise
    `lm_head` is the generator's untied LM head (None when tied), kept only so the
    export stays a loadable causal LM.
    """
    boundary_ids = tuple(int(i) for i in boundary_ids)
    rm = models.ScalarModel(model.config, boundary_ids=boundary_ids)
    rm_params = models.scalar_params_from_decoder(params, key, model.config, likelihood=bool(boundary_ids))
    return rm, rm_params, params.get("lm_head")


def boundary_token_ids(tokenizer, delimiter: str) -> tuple[int, ...]:
    """Ids of every vocabulary token whose text contains the step delimiter (e.g. "\n", ".\n")."""
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    ids = sorted(i for i in vocab.values() if delimiter in tokenizer.decode([i]))
    if not ids:
        raise ValueError(f"no token of the tokenizer contains the step delimiter {delimiter!r}; "
                         "the likelihood feature needs one (set rm.likelihood_feature=False)")
    return tuple(ids)


def save_reward_model(path: str, model: models.ScalarModel, params: dict, tokenizer, kind: str, *,
                      lm_head: Any = None, metadata: dict | None = None) -> str:
    """Writes a reward model as an HF causal-LM folder + `score.safetensors` + `reward_model.json`.

    Args:
      path: output folder (replaced; written beside it, then renamed).
      model, params: the ScalarModel and its `{"decoder", "score"}` params.
      tokenizer: saved with it.
      kind: "orm" or "prm".
      lm_head: the generator's LM head `[embed, vocab]` for an untied model (None: tied,
        or zeros are written for an untied one; it is never used for scoring).
      metadata: extra JSON fields for reward_model.json (labels, loss, ...).
    """
    from safetensors.numpy import save_file

    from jaxstep.models import hf

    if kind not in KINDS:
        raise ValueError(f"reward-model kind must be one of {KINDS}, got {kind!r}")
    config = model.config
    params = common.host_params(params)
    if common.is_main_process():
        decoder = dict(params["decoder"])
        if not config.tie_word_embeddings and "lm_head" in decoder:
            lm_head = decoder.pop("lm_head")  # the likelihood feature's trained LM head
        if not config.tie_word_embeddings:
            if lm_head is None:
                logger.warning("save_reward_model: untied model without an LM head; writing zeros")
                lm_head = np.zeros((config.embed_dim, config.vocab_size), np.float32)
            decoder["lm_head"] = np.asarray(jax.device_get(lm_head))
        tmp = path + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        hf.save(tmp, config, decoder, tokenizer=tokenizer)
        kernel = np.asarray(params["score"]["kernel"], np.float32)  # [embed, 1]
        bias = np.asarray(params["score"]["bias"], np.float32).reshape(1)
        head = {"score.weight": np.ascontiguousarray(kernel.T), "score.bias": bias}
        if model.boundary_ids:
            head["likelihood.weight"] = np.asarray(params["likelihood"]["weight"], np.float32).reshape(1)
        save_file(head, os.path.join(tmp, SCORE_FILE), metadata={"format": "pt"})
        info = {"format": FORMAT, "version": FORMAT_VERSION, "kind": kind,
                "score_position": "step_ends" if kind == "prm" else "last_token",
                "score_activation": "sigmoid", "score_file": SCORE_FILE,
                "prompt_template": formatting.PROMPT_TEMPLATE,
                "step_delimiter": formatting.DEFAULT_DELIMITER,
                "likelihood_boundary_ids": list(model.boundary_ids), **(metadata or {})}
        with open(os.path.join(tmp, RM_CONFIG_FILE), "w", encoding="utf-8") as f:
            json.dump(info, f, indent=2)
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    common.sync("jaxstep_save_reward_model")
    return path


def is_reward_model(path: str) -> bool:
    """Whether `path` is a folder written by `save_reward_model`."""
    return bool(path) and os.path.isfile(os.path.join(path, RM_CONFIG_FILE))


def read_reward_model_info(path: str) -> dict:
    """The folder's reward_model.json (kind, score position, delimiter, training metadata)."""
    file = os.path.join(path, RM_CONFIG_FILE)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{file}: not found (expected a reward-model folder written by "
                                "jaxstep.train.reward_models.save_reward_model)")
    with open(file, encoding="utf-8") as f:
        info = json.load(f)
    if info.get("format") != FORMAT or info.get("kind") not in KINDS:
        raise ValueError(f"{file}: not a {FORMAT} file (format={info.get('format')!r}, "
                         f"kind={info.get('kind')!r})")
    return info


def load_reward_model(path: str, dtype=jnp.float32, param_dtype=jnp.float32):
    """Loads a reward-model folder in one call.

    Args:
      path: a folder written by `save_reward_model` (e.g. `<prm workdir>/export`).
      dtype: compute dtype of the model; param_dtype: dtype of the returned params.

    Returns:
      `(model, params, tokenizer, kind)`: a `ScalarModel`, its params
      `{"decoder": ..., "score": {"kernel" [embed, 1], "bias" [1]}}`, the tokenizer
      saved with it, and "orm" or "prm". Score with `jaxstep.rewards.scoring`.
    """
    from safetensors.numpy import load_file

    from jaxstep.models import hf

    info = read_reward_model_info(path)
    decoder, decoder_params = hf.load(path, dtype=dtype, param_dtype=param_dtype)
    boundary_ids = tuple(int(i) for i in info.get("likelihood_boundary_ids") or ())
    if not boundary_ids:
        decoder_params = {k: v for k, v in decoder_params.items() if k != "lm_head"}
    head_file = os.path.join(path, info.get("score_file", SCORE_FILE))
    if not os.path.isfile(head_file):
        raise FileNotFoundError(f"{head_file}: the reward model's score head is missing")
    head = load_file(head_file)
    weight = head.get("score.weight")
    if weight is None or weight.shape != (1, decoder.config.embed_dim):
        raise ValueError(f"{head_file}: expected 'score.weight' of shape (1, {decoder.config.embed_dim}), "
                         f"got {None if weight is None else weight.shape}")
    bias = head.get("score.bias", np.zeros((1,), np.float32)).reshape(1)
    params = {"decoder": decoder_params,
              "score": {"kernel": jnp.asarray(weight.T, param_dtype), "bias": jnp.asarray(bias, param_dtype)}}
    if boundary_ids:
        if "likelihood.weight" not in head:
            raise ValueError(f"{head_file}: reward_model.json names likelihood boundary ids but "
                             "'likelihood.weight' is missing")
        params["likelihood"] = {"weight": jnp.asarray(head["likelihood.weight"].reshape(1), jnp.float32)}
    tokenizer = tokenizer_lib.load_tokenizer(path)
    return models.ScalarModel(decoder.config, boundary_ids=boundary_ids), params, tokenizer, info["kind"]


# ============================================================================ batches

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


# ============================================================================ losses

def bce_loss(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> tuple[jax.Array, dict]:
    """Mean binary cross-entropy over masked targets (soft labels allowed).

    Args:
      logits: `[...]` float head logits; labels: `[...]` in [0, 1]; mask: `[...]` bool.

    Returns:
      (loss, {"accuracy": sign agreement with label >= 0.5, "targets": count}).
    """
    logits = logits.astype(jnp.float32)
    labels = labels.astype(jnp.float32)
    weights = mask.astype(jnp.float32)
    count = jnp.maximum(weights.sum(), 1.0)
    losses = optax.sigmoid_binary_cross_entropy(logits, labels)
    hits = ((logits > 0) == (labels >= 0.5)).astype(jnp.float32)
    return (losses * weights).sum() / count, {"accuracy": (hits * weights).sum() / count,
                                              "targets": weights.sum()}


def bt_loss(chosen: jax.Array, rejected: jax.Array, mask: jax.Array) -> tuple[jax.Array, dict]:
    """Bradley-Terry loss `-log sigmoid(r_chosen - r_rejected)`, mean over masked pairs.

    Returns (loss, {"accuracy": fraction with r_chosen > r_rejected, "targets": count}).
    """
    margin = chosen.astype(jnp.float32) - rejected.astype(jnp.float32)
    weights = mask.astype(jnp.float32)
    count = jnp.maximum(weights.sum(), 1.0)
    losses = -jax.nn.log_sigmoid(margin)
    return (losses * weights).sum() / count, {"accuracy": ((margin > 0) * weights).sum() / count,
                                              "targets": weights.sum()}


def batch_loss(model, params: dict, batch: dict, loss: str, lm_weight: float = 0.0) -> tuple[jax.Array, dict]:
    """The training loss of one batch (`encode_labeled` for "bce", `encode_pairs` for "bt").

    `lm_weight` > 0 (bce, likelihood feature) adds the backbone's next-token loss on the
    tokens of correct steps (`lm_mask`): the joint objective of Cobbe et al. (2021).
    """
    from jaxstep.rewards import scoring

    ids, mask = batch["ids"], batch["mask"]
    if loss == "bt":  # [B, 2, T] -> [2B, T]: chosen and rejected rows interleaved
        ids, mask = ids.reshape(-1, ids.shape[-1]), mask.reshape(-1, mask.shape[-1])
    if loss == "bce" and lm_weight > 0:
        logits, token_lp = model.apply({"params": params}, ids, attention_mask=mask, return_token_logprobs=True)
        picked = scoring.gather_steps(logits, batch["step_ends"], batch["step_mask"])
        value, aux = bce_loss(picked, batch["labels"], batch["label_mask"])
        weights = batch["lm_mask"].astype(jnp.float32)
        lm = -(token_lp * weights).sum() / jnp.maximum(weights.sum(), 1.0)
        return value + lm_weight * lm, {**aux, "bce": value, "lm_loss": lm}
    logits = scoring.position_logits(model, params, ids, mask)
    if loss == "bce":
        picked = scoring.gather_steps(logits, batch["step_ends"], batch["step_mask"])
        return bce_loss(picked, batch["labels"], batch["label_mask"])
    if loss == "bt":
        scores = jnp.take_along_axis(logits, batch["target"].reshape(-1, 1), axis=1).reshape(-1, 2)
        return bt_loss(scores[:, 0], scores[:, 1], batch["pair_mask"])
    raise ValueError(f"unknown reward-model loss {loss!r}; expected one of {LOSSES}")


def train_step(model, tx, loss: str, state: dict, batch: dict, lm_weight: float = 0.0) -> tuple[dict, dict]:
    """One AdamW step; `state` = {params, opt_state, step, rng}."""
    (value, aux), grads = jax.value_and_grad(
        lambda p: batch_loss(model, p, batch, loss, lm_weight), has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    new_state = {"params": params, "opt_state": opt_state, "step": state["step"] + 1,
                 "rng": jax.random.fold_in(state["rng"], state["step"])}
    return new_state, {"loss": value, "grad_norm": optax.global_norm(grads), **aux}


# ============================================================================ data

@dataclasses.dataclass
class StageData:
    """What a reward-model stage trains and evaluates on.

    Attributes:
      train: StepLabels (bce) or StepPreference (bt) records.
      eval_samples: held-out generator samples (problem-major, `best_of_n` each).
      eval_records: held-out records of the label source (PRM800K / a solutions file).
      greedy_accuracy: the generator's greedy accuracy on the eval problems.
      info: counts and label balance (for the summary).
    """

    train: list
    eval_samples: list
    eval_records: list
    greedy_accuracy: float | None
    info: dict


def stage_kind(config) -> str:
    """"orm" or "prm": the stage name when it is one of them, else `rm.kind`."""
    kind = config.stage if config.stage in KINDS else config.rm.kind
    if kind not in KINDS:
        raise ValueError(f"rm.kind must be one of {KINDS}, got {kind!r}")
    return kind


def generator_path(config, workdir: str) -> str:
    """`rm.generator`, else `<workdir>/../sft/export` if it exists, else ""."""
    if config.rm.generator:
        return config.rm.generator
    default = common.default_input(workdir, "sft")
    return default if os.path.isdir(default) else ""


def _max_len(config) -> int:
    return config.rm.max_len or (config.data.max_prompt_len + config.data.max_response_len)


def _sample(config, generator, problems: Sequence[Problem], num_samples: int, key, mesh,
            desc: str, greedy: bool = False, temperature: float = 0.0):
    model, params, tokenizer = generator
    s = config.sampler
    return common.decode_problems(
        model, params, tokenizer, problems, max_prompt_len=config.data.max_prompt_len,
        max_new_tokens=config.data.max_response_len, batch_size=s.batch_size, greedy=greedy,
        temperature=temperature or s.temperature, top_k=s.top_k, top_p=s.top_p, num_samples=num_samples,
        key=key, mesh=mesh, desc=desc)


def make_completer(config, generator, mesh) -> labels_lib.CompleteFn:
    """The Monte-Carlo sampler: continuations of `prompt + prefix` with the generator."""
    model, params, tokenizer = generator
    s = config.sampler

    def complete(problems, prefixes, num_samples, key):
        results = common.decode_problems(
            model, params, tokenizer, problems, prefixes=prefixes,
            max_prompt_len=config.data.max_prompt_len + config.data.max_response_len,
            max_new_tokens=config.data.max_response_len, batch_size=s.batch_size, greedy=False,
            temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, num_samples=num_samples,
            key=key, mesh=mesh, progress=False)
        return [r.text for r in results]

    return complete


def _split_held_out(records: list, fraction: float, key) -> tuple[list, list]:
    """(train, held-out) split by problem, `fraction` of the problems held out."""
    ids = sorted({r.problem.id or r.problem.question for r in records})
    if fraction <= 0 or len(ids) < 2:
        return records, []
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
    n_out = min(len(ids) - 1, max(1, int(round(fraction * len(ids)))))
    held = set(rng.permutation(ids)[:n_out].tolist())
    return ([r for r in records if (r.problem.id or r.problem.question) not in held],
            [r for r in records if (r.problem.id or r.problem.question) in held])


def _eval_problems(config) -> list[Problem]:
    if config.rm.eval_problems <= 0:
        return []
    source = common.parse_sources(config.data.eval_sources)[0][0]
    return common.load_source_problems(config, source, "test", config.rm.eval_problems)


def _label_samples(problems, texts, delimiter, rule):
    """Exact step labels where the problem is synthetic, outcome labels elsewhere."""
    out = []
    for p, t in zip(problems, texts):
        if p.source == "synthetic":
            out.extend(labels_lib.exact_labels([p], [t], delimiter=delimiter, rule=rule))
        else:
            out.extend(labels_lib.outcome_labels([p], [t], delimiter=delimiter))
    return out


def corruption_kinds(spec: str) -> tuple[str, ...]:
    """ "arithmetic, operand" -> ("arithmetic", "operand"), validated; "" = every kind."""
    kinds = tuple(k.strip() for k in spec.split(",") if k.strip())
    bad = [k for k in kinds if k not in synthetic.KINDS]
    if bad:
        raise ValueError(f"rm.corruption_kinds={spec!r}: unknown kind(s) {bad}; expected a comma list of {synthetic.KINDS}")
    return kinds


def _contrast_solutions(config, problems: Sequence[Problem], key: jax.Array) -> list:
    """Corrupted and reference solutions of synthetic training problems (`rm.corrupted_per_problem`,
    `rm.references_per_problem`: the share of problems that get one; over the first
    `rm.contrast_problems` train problems, 0 = the sampled ones).

    They differ from each other (and from the generator's samples of the same problem)
    only where a step goes wrong, so the model must check the arithmetic instead of
    judging how hard a problem looks.
    """
    r = config.rm
    if r.contrast_problems > len(problems):
        problems = common.load_problems(config, config.data.train_sources, "train", limit=r.contrast_problems)
    problems = [p for p in problems if p.source == "synthetic"][:r.contrast_problems or None]
    out: list = []
    k_c = jax.random.fold_in(key, 7)
    for share, make in ((r.corrupted_per_problem, lambda ps, k: labels_lib.corrupted_solutions(
            ps, k, rule=r.label_rule, kinds=corruption_kinds(r.corruption_kinds))), (r.references_per_problem, lambda ps, k: labels_lib.reference_solutions(ps))):
        whole, frac = int(share), share - int(share)
        for rep in range(whole + (1 if frac > 0 else 0)):
            chosen = problems if rep < whole else problems[:int(round(frac * len(problems)))]
            out.extend(make(chosen, jax.random.fold_in(k_c, rep)))
    return out


def build_data(config, workdir: str, kind: str, generator, mesh, key: jax.Array) -> StageData:
    """Builds (or reads back from `<workdir>/data/`) the stage's training and eval data."""
    r, d = config.rm, config.data
    folder = os.path.join(workdir, DATA_DIR)
    train_file = os.path.join(folder, "train.jsonl")
    samples_file = os.path.join(folder, "eval_samples.jsonl")
    records_file = os.path.join(folder, "eval_records.jsonl")
    info_file = os.path.join(folder, "info.json")
    if all(os.path.isfile(f) for f in (train_file, samples_file, records_file, info_file)):
        with open(info_file, encoding="utf-8") as f:
            info = json.load(f)
        logger.info("%s: reusing the training data in %s", kind, folder)
        return StageData(labels_lib.load_records(train_file), labels_lib.load_records(samples_file),
                         labels_lib.load_records(records_file), info.get("greedy_accuracy"), info)

    delimiter = d.step_delimiter
    k_sample, k_balance, k_mc, k_split, k_eval, k_pairs = jax.random.split(key, 6)
    info: dict[str, Any] = {"kind": kind, "labels": r.labels if kind == "prm" else "outcome",
                            "loss": r.loss if kind == "prm" else "bce"}
    eval_records: list = []
    started = time.time()

    if kind == "orm" and r.solutions_path:
        records = labels_lib.read_labeled_solutions(
            r.solutions_path, delimiter=delimiter, limit=r.num_problems or None,
            skip_bad_records=d.skip_bad_records)
        records, eval_records = _split_held_out(records, r.eval_fraction, k_split)
    elif kind == "prm" and r.labels == "prm800k":
        if not r.prm800k_path:
            raise ValueError("rm.labels='prm800k' needs rm.prm800k_path (a PRM800K .jsonl file or folder)")
        step_records, pairs = labels_lib.prm800k_labels(
            r.prm800k_path, neutral_is_positive=r.neutral_is_positive,
            skip_bad_records=d.skip_bad_records, delimiter=delimiter)
        step_records, eval_records = _split_held_out(step_records, r.eval_fraction, k_split)
        held = {x.problem.id for x in eval_records}
        records = [p for p in pairs if p.problem.id not in held] if r.loss == "bt" else step_records
        info["pairs"] = len(pairs)
    else:
        if generator is None:
            raise ValueError(f"stage {kind} with labels={r.labels!r} samples solutions from a generator, "
                             "but none was found: set rm.generator (an HF/export folder) or run the "
                             "sft stage in <workdir>/../sft first")
        problems = common.load_problems(config, d.train_sources, "train", limit=r.num_problems or None)
        decoded = _sample(config, generator, problems, r.samples_per_problem, k_sample, mesh, f"{kind} samples")
        sample_problems = [x.problem for x in decoded]
        texts = [x.text for x in decoded]
        info["sample_accuracy"] = float(np.mean([x.correct for x in decoded])) if decoded else None
        if kind == "orm":
            records = labels_lib.outcome_labels(sample_problems, texts, delimiter=delimiter)
            synthetic_problems = [p for p in problems if p.source == "synthetic"]
            records += _contrast_solutions(config, synthetic_problems, k_balance)
            records = labels_lib.balance_classes(records, synthetic_problems, k_balance,
                                                 min_fraction=r.min_class_fraction, by="outcome")
        elif r.labels == "exact":
            if any(p.source != "synthetic" for p in problems):
                raise ValueError("rm.labels='exact' needs synthetic problems (data.train_sources="
                                 f"{d.train_sources!r}); use montecarlo or prm800k for real data")
            records = labels_lib.exact_labels(sample_problems, texts, delimiter=delimiter, rule=r.label_rule)
            records += _contrast_solutions(config, problems, k_balance)
            records = labels_lib.balance_classes(records, problems, k_balance,
                                                 min_fraction=r.min_class_fraction, rule=r.label_rule)
        elif r.labels == "montecarlo":
            unlabelled = labels_lib.outcome_labels(sample_problems, texts, delimiter=delimiter)
            records = labels_lib.montecarlo_labels(
                unlabelled, make_completer(config, generator, mesh), num_completions=r.mc_samples,
                key=k_mc, cache_path=os.path.join(folder, "montecarlo.jsonl"), mode=r.mc_mode,
                delimiter=delimiter, chunk=r.mc_chunk)
        else:
            raise ValueError(f"rm.labels must be one of {LABEL_SOURCES}, got {r.labels!r}")
        if kind == "prm" and r.loss == "bt":
            records = labels_lib.preference_pairs(records, max_pairs_per_problem=r.pairs_per_problem,
                                                  key=k_pairs)
    if kind == "prm" and r.loss not in LOSSES:
        raise ValueError(f"rm.loss must be one of {LOSSES}, got {r.loss!r}")
    if kind == "orm":
        records = [x for x in records if x.correct is not None]
    elif r.loss == "bce":
        records = [x for x in records if any(v is not None for v in x.labels)]
    if not records:
        raise ValueError(f"{kind}: no training records with labels were built (labels={r.labels!r}, "
                         f"loss={r.loss!r})")
    if isinstance(records[0], labels_lib.StepLabels):
        info["train_balance"] = labels_lib.label_balance(records)
    info["train_records"] = len(records)
    info["data_seconds"] = time.time() - started

    # Held-out samples of the generator: step/outcome AUC and best-of-N.
    eval_samples: list = []
    greedy_accuracy = None
    eval_problems = _eval_problems(config) if generator is not None else []
    if eval_problems:
        started = time.time()
        decoded = _sample(config, generator, eval_problems, r.best_of_n, k_eval, mesh, f"{kind} eval samples",
                          temperature=r.eval_temperature)
        eval_samples = _label_samples([x.problem for x in decoded], [x.text for x in decoded],
                                      delimiter, r.label_rule)
        greedy = _sample(config, generator, eval_problems, 1, k_eval, mesh, "greedy", greedy=True)
        greedy_accuracy = float(np.mean([x.correct for x in greedy]))
        info["greedy_correct"] = [bool(x.correct) for x in greedy]
        info["eval_sample_accuracy"] = float(np.mean([x.correct for x in decoded]))
        info["eval_data_seconds"] = time.time() - started
    info["greedy_accuracy"] = greedy_accuracy
    info["eval_samples"] = len(eval_samples)
    info["eval_records"] = len(eval_records)

    if common.is_main_process():
        labels_lib.save_records(train_file, records)
        labels_lib.save_records(samples_file, eval_samples)
        labels_lib.save_records(records_file, eval_records)
        with open(info_file + ".tmp", "w", encoding="utf-8") as f:
            json.dump(common._jsonable(info), f, indent=2)
        os.replace(info_file + ".tmp", info_file)
    common.sync("jaxstep_rm_data")
    return StageData(records, eval_samples, eval_records, greedy_accuracy, info)


# ============================================================================ stage

def _load_generator(config, path: str):
    tokenizer = common.get_tokenizer(config, path)
    model, params = common.build_model(config, tokenizer, path)
    return model, params, tokenizer


def run(config, workdir: str, *, stop_after: int | None = None) -> dict:
    """Trains (or resumes, or reuses) the ORM/PRM in `workdir`; returns the summary.

    Args:
      stop_after: stop after this training step as if preempted (checkpoint saved, no
        summary); the next call resumes. For drills and tests.
    """
    from jaxstep.train import rm_eval, sft

    if common.is_done(workdir):
        logger.info("%s: %s is done; reusing it.", config.stage, workdir)
        return common.read_summary(workdir)
    started = time.time()
    kind = stage_kind(config)
    r = config.rm
    mesh = common.make_mesh(config)
    root = jax.random.key(config.seed)
    k_init, k_data, k_train = (jax.random.fold_in(root, i) for i in (101, 102, 103))

    gen_path = generator_path(config, workdir)
    generator = _load_generator(config, gen_path) if gen_path else None
    init_path = r.init_from or gen_path
    if generator is not None and init_path == gen_path:
        base_model, base_params, tokenizer = generator
    else:
        tokenizer = generator[2] if generator is not None else common.get_tokenizer(config, init_path)
        if not init_path:
            logger.warning("%s: no generator or rm.init_from; the backbone is the tiny model of "
                           "config.model with random weights", kind)
        base_model, base_params = common.build_model(config, tokenizer, init_path, key=k_init)
    data = build_data(config, workdir, kind, generator, mesh, k_data)
    loss = r.loss if kind == "prm" else "bce"

    if kind == "prm" and r.lm_loss_weight > 0 and not r.likelihood_feature:
        raise ValueError("rm.lm_loss_weight > 0 needs rm.likelihood_feature=True (the PRM keeps the LM head)")
    boundary_ids = (boundary_token_ids(tokenizer, config.data.step_delimiter)
                    if r.likelihood_feature and kind == "prm" else ())
    model, params, lm_head = reward_model_from_generator(base_model, base_params, k_init, boundary_ids)
    del base_params
    logger.info("%s: %.2fM params, %d training records (%s loss)", kind,
                common.count_params(params) / 1e6, len(data.train), loss)

    max_len = _max_len(config)
    batch_size = common.round_batch(r.batch_size, mesh)
    local_batch = batch_size // jax.process_count()
    train_records = data.train
    while len(train_records) < max(local_batch * jax.process_count(), jax.process_count()):
        train_records = train_records + data.train  # tiny data sets (tests): repeat
    if loss == "bt":
        transform = functools.partial(_encode_pairs_batch, tokenizer=tokenizer, max_len=max_len,
                                      delimiter=config.data.step_delimiter)
        keys = ("ids", "mask", "target", "pair_mask")
    else:
        transform = functools.partial(_encode_labeled_batch, tokenizer=tokenizer, max_len=max_len,
                                      kind=kind, delimiter=config.data.step_delimiter)
        keys = ("ids", "mask", "step_ends", "step_mask", "labels", "label_mask", "lm_mask")
    loader = batching.make_loader(train_records, local_batch, seed=config.seed, transform=transform)

    tx = sft.make_optimizer(r)
    params = common.shard_params(params, model, mesh)
    state = common.place_on_mesh({"params": params, "opt_state": tx.init(params),
                                  "step": jnp.zeros((), jnp.int32), "rng": k_train}, mesh)
    ckpt = checkpoint_lib.Checkpointer(
        os.path.join(workdir, common.CHECKPOINT_DIR), max_to_keep=config.checkpoint.keep,
        save_interval_steps=config.checkpoint.every_steps)
    restored = ckpt.restore_latest(state)
    if restored is not None:
        _, state, extra = restored
        state = common.place_on_mesh(state, mesh)
        loader.set_state(extra["data"])
        logger.info("%s: resumed from step %d", kind, int(state["step"]))
    step = int(state["step"])

    lm_weight = float(r.lm_loss_weight) if loss == "bce" and model.boundary_ids else 0.0
    step_fn = common.jit_step(functools.partial(train_step, model, tx, loss, lm_weight=lm_weight), mesh)
    writer = MetricWriter(workdir, prefix=kind)
    schedule = sft.learning_rate_schedule(r)
    history: dict[str, list] = {}
    bar = tqdm(total=r.steps, initial=step, desc=kind, unit="step", dynamic_ncols=True,
               disable=not common.is_main_process())
    stopped = False
    window_start = time.time()
    while step < r.steps:
        batch = common.shard_batch(next(loader), mesh, keys=keys)
        state, metrics = step_fn(state, batch)
        step += 1
        for k, v in metrics.items():
            history.setdefault(k, []).append(v)
        if step % r.log_every == 0 or step == r.steps:
            values = {k: float(np.mean(jax.device_get(v))) for k, v in history.items()}
            values["learning_rate"] = float(schedule(step - 1))
            values["steps_per_second"] = len(history["loss"]) / max(time.time() - window_start, 1e-9)
            history.clear()
            window_start = time.time()
            writer.write(step, values)
            bar.set_postfix({"loss": f"{values['loss']:.3f}", "acc": f"{values['accuracy']:.2f}"},
                            refresh=False)
        ckpt.save(step, state, extra={"data": loader.get_state()})
        bar.update(1)
        if ckpt.should_stop(step) or (stop_after is not None and step >= stop_after):
            ckpt.save(step, state, extra={"data": loader.get_state()}, force=True)
            stopped = step < r.steps
            break
    bar.close()
    if step >= r.steps:
        ckpt.save(step, state, extra={"data": loader.get_state()}, force=True)
    ckpt.close()
    if stopped:
        writer.close()
        logger.info("%s: stopped at step %d; run again to resume.", kind, step)
        return {"stopped_at": step, "done": False}
    train_seconds = time.time() - started

    export_path = ""
    metadata = {"labels": data.info.get("labels"), "loss": loss, "steps": step,
                "generator": gen_path, "init_from": init_path}
    if r.export:
        export_path = save_reward_model(os.path.join(workdir, common.EXPORT_DIR), model, state["params"],
                                        tokenizer, kind, lm_head=lm_head, metadata=metadata)

    started_eval = time.time()
    reward_models = {kind.upper(): (model, state["params"], kind)}
    for other in (p.strip() for p in r.compare_with.split(",") if p.strip()):
        m, p, _, k = load_reward_model(other)
        reward_models[f"{k.upper()} ({os.path.basename(os.path.normpath(other))})"] = (m, p, k)
    synthetic_eval = common.parse_sources(config.data.eval_sources)[0][0] == "synthetic"
    flaw_pairs = labels_lib.flaw_pairs(_eval_problems(config) if synthetic_eval else [],
                                       jax.random.fold_in(root, 105), rule=r.label_rule)
    evaluation = rm_eval.evaluate(
        reward_models, tokenizer, samples=data.eval_samples, records=data.eval_records, flaw_pairs=flaw_pairs,
        num_per_problem=r.best_of_n, greedy_accuracy=data.greedy_accuracy,
        greedy_correct=data.info.get("greedy_correct"), max_len=max_len,
        batch_size=r.eval_batch_size, mesh=mesh, delimiter=config.data.step_delimiter,
        key=jax.random.fold_in(root, 104))
    if common.is_main_process():
        rm_eval.write_report(os.path.join(workdir, "report.md"), evaluation,
                             title=f"{kind.upper()} ({data.info.get('labels')} labels, {loss} loss)",
                             info=data.info, metrics_path=os.path.join(workdir, "metrics.jsonl"))
    writer.write(step, {f"eval_{k}": v for k, v in evaluation["flat"].items()})
    writer.close()
    summary = {"stage": kind, "steps": step, "export": export_path, "labels": data.info.get("labels"),
               "loss": loss, "params": common.count_params(state["params"]),
               "final_loss": _last_metric(workdir, "loss"), "data": data.info,
               "eval": evaluation["flat"], "train_seconds": train_seconds,
               "eval_seconds": time.time() - started_eval, "seconds": time.time() - started}
    logger.info("%s: done in %.0f s: %s", kind, summary["seconds"], evaluation["flat"])
    return common.write_summary(workdir, summary)


def _encode_labeled_batch(records, *, tokenizer, max_len, kind, delimiter):
    return encode_labeled(records, tokenizer, max_len, kind=kind, delimiter=delimiter)


def _encode_pairs_batch(pairs, *, tokenizer, max_len, delimiter):
    return encode_pairs(pairs, tokenizer, max_len, delimiter=delimiter)


def _last_metric(workdir: str, key: str) -> Any:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.isfile(path):
        return None
    from jaxstep.metrics import read_metrics  # noqa: PLC0415
    values = [row[key] for row in read_metrics(path) if key in row]
    return values[-1] if values else None
