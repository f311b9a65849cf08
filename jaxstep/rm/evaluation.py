"""Reward-model evaluation: step and outcome AUC, best-of-N reranking, report.

    result = evaluate({"PRM": (model, params, "prm")}, tokenizer, samples=samples,
                      records=held_out, num_per_problem=8, greedy_accuracy=0.31, max_len=160,
                      batch_size=64, mesh=mesh)
    write_report("report.md", result, title="PRM")

Inputs:
  * `samples`: held-out generator samples as `labels.StepLabels`, problem-major,
    `num_per_problem` per problem (step labels where known, outcome always).
  * `records`: held-out labelled records of the training source (PRM800K, a solutions
    file), scored for step / outcome AUC only.

Measures (per reward model):
  * step AUC and accuracy (score >= 0.5 vs label >= 0.5) over labelled steps (PRM);
  * outcome AUC: the ORM score, or the PRM's aggregate (min, prod, avg, max, last) of
    its step scores, against final-answer correctness;
  * best-of-n accuracy for n = 1, 2, 4, ..., N: per problem, the highest-scoring of its
    first n samples (ties: the first), against the baselines: majority vote over the
    extracted answers, random pick (the expected accuracy of one sample), pass@n (an
    oracle) and the generator's greedy accuracy.
Accuracies come with their binomial standard error over problems.
"""
from __future__ import annotations

import collections
import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from jaxstep.data import formatting, grading
from jaxstep.rewards import aggregate as aggregate_lib
from jaxstep.rewards import scoring
from jaxstep.parallel import placement
from jaxstep.parallel import mesh as mesh_lib
from jaxstep.rm.encoding import encode_labeled, step_slots

PRM_AGGREGATIONS = ("min", "prod", "avg", "max", "last")


# ----------------------------------------------------------------------------- metrics

def roc_auc(scores: Sequence[float], labels: Sequence[float]) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties).

    Labels >= 0.5 are positive. NaN when a class is missing.
    """
    from scipy.stats import rankdata  # noqa: PLC0415

    scores = np.asarray(scores, np.float64)
    positive = np.asarray(labels, np.float64) >= 0.5
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def threshold_accuracy(scores: Sequence[float], labels: Sequence[float], threshold: float = 0.5) -> float:
    """Fraction where (score >= threshold) equals (label >= 0.5); NaN if empty."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, np.float64)
    if scores.size == 0:
        return float("nan")
    return float(np.mean((scores >= threshold) == (labels >= 0.5)))


def standard_error(accuracy: float, n: int) -> float:
    """Binomial standard error of an accuracy over n problems."""
    if n <= 0 or accuracy != accuracy:
        return float("nan")
    return math.sqrt(max(accuracy * (1 - accuracy), 0.0) / n)


def best_of_n(scores: np.ndarray, correct: np.ndarray, n: int | None = None) -> float:
    """Accuracy when each problem keeps its highest-scoring sample among the first n.

    Args:
      scores, correct: `[problems, N]`; n: samples considered (default N). Ties go to
        the earliest sample.
    """
    picked = picked_correct(scores, correct, n)
    return float(np.mean(picked)) if len(picked) else float("nan")


def picked_correct(scores: np.ndarray, correct: np.ndarray, n: int | None = None) -> np.ndarray:
    """`[problems]` float: whether each problem's highest-scoring sample among the first n
    (ties: the earliest) is correct."""
    scores, correct = np.asarray(scores, np.float64), np.asarray(correct, bool)
    n = scores.shape[1] if n is None else n
    return correct[np.arange(len(correct)), np.argmax(scores[:, :n], axis=1)].astype(np.float64)


def minus_greedy(scores: np.ndarray, correct: np.ndarray, greedy_correct: Sequence[bool]) -> tuple[float, float]:
    """Best-of-N accuracy minus greedy accuracy on the same problems, with the paired s.e.

    Args:
      scores, correct: `[problems, N]`; greedy_correct: `[problems]` the greedy response's correctness.
    """
    d = picked_correct(scores, correct) - np.asarray(greedy_correct, np.float64)
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("nan")
    return float(d.mean()) if len(d) else float("nan"), se


def majority_vote(answers: Sequence[Sequence[str | None]], correct: np.ndarray, n: int | None = None) -> float:
    """Accuracy of the most frequent final answer among each problem's first n samples.

    Answers are compared after `grading.normalize_answer`; samples without an answer
    do not vote; ties go to the answer seen first; a problem with no answer is wrong.
    """
    correct = np.asarray(correct, bool)
    hits = []
    for row_answers, row_correct in zip(answers, correct):
        row_answers = list(row_answers)[:n] if n is not None else list(row_answers)
        votes: collections.OrderedDict[str, list[int]] = collections.OrderedDict()
        for i, a in enumerate(row_answers):
            if a is not None:
                votes.setdefault(grading.normalize_answer(a), []).append(i)
        if not votes:
            hits.append(False)
            continue
        best = max(votes.values(), key=len)  # max keeps the first of equal counts
        hits.append(bool(row_correct[best[0]]))
    return float(np.mean(hits)) if hits else float("nan")


def pass_at_n(correct: np.ndarray, n: int | None = None) -> float:
    """Fraction of problems with at least one correct sample among the first n (an oracle)."""
    correct = np.asarray(correct, bool)
    n = correct.shape[1] if n is None else n
    return float(np.mean(correct[:, :n].any(axis=1))) if len(correct) else float("nan")


def within_problem_auc(scores: np.ndarray, correct: np.ndarray) -> float:
    """P(a correct sample outscores a wrong one of the SAME problem), ties count half.

    Pooled AUC also rewards telling easy problems from hard ones; best-of-N only needs
    this within-problem ranking. NaN when no problem has both kinds.
    """
    scores, correct = np.asarray(scores, np.float64), np.asarray(correct, bool)
    wins, pairs = 0.0, 0
    for s, c in zip(scores, correct):
        good, bad = s[c], s[~c]
        if good.size and bad.size:
            diff = good[:, None] - bad[None, :]
            wins += float((diff > 0).sum() + 0.5 * (diff == 0).sum())
            pairs += diff.size
    return wins / pairs if pairs else float("nan")


def random_pick(correct: np.ndarray) -> float:
    """Expected accuracy of a uniformly random sample per problem (the mean of `correct`)."""
    correct = np.asarray(correct, np.float64)
    return float(correct.mean()) if correct.size else float("nan")


# ----------------------------------------------------------------------------- scoring

def score_records(model, params, kind: str, records: Sequence, tokenizer, *, max_len: int,
                  batch_size: int, mesh=None, delimiter: str = formatting.DEFAULT_DELIMITER,
                  desc: str = "score", template: str = formatting.PROMPT_TEMPLATE) -> list[np.ndarray]:
    """Reward-model scores (probabilities) of labelled solutions, prompts written with
    `template` (as in training: `jaxstep.rm.encoding.encode_labeled`).

    Returns one array per record: PRM `[num_steps]` step scores (NaN for steps cut off
    by `max_len` or a misaligned row), ORM `[1]` the outcome score.

    A PRM's step axis is fixed for the whole call (`step_slots(records)`), so the jitted
    scorer compiles once per length bucket, not once per step count.
    """

    if not records:
        return []
    if mesh is None:
        mesh = mesh_lib.make_mesh()
    batch_size = placement.round_batch(batch_size, mesh)
    params = placement.place_on_mesh(params, mesh)
    scorer = placement.jit_step(lambda p, ids, mask, ends, smask: scoring.score(
        model, p, kind, ids, mask, step_ends=ends, step_mask=smask), mesh, donate_argnums=())
    max_steps = step_slots(records) if kind == "prm" else None
    out: list[np.ndarray] = []
    bar = tqdm(total=len(records), desc=desc, unit="sol", dynamic_ncols=True,
               disable=not placement.is_main_process())
    for start in range(0, len(records), batch_size):
        chunk = list(records[start:start + batch_size])
        pad = batch_size - len(chunk)
        enc = encode_labeled(chunk + chunk[:1] * pad, tokenizer, max_len, kind=kind, delimiter=delimiter,
                             template=template, step_positions=getattr(model, "step_positions", "delimiter"),
                             max_steps=max_steps)
        batch = placement.shard_batch({"ids": enc["ids"], "mask": enc["mask"], "ends": enc["step_ends"],
                                    "smask": enc["step_mask"]}, mesh)
        scores = np.asarray(placement.to_host(scorer(params, batch["ids"], batch["mask"], batch["ends"],
                                                  batch["smask"])))
        for b, record in enumerate(chunk):
            if kind == "orm":
                out.append(scores[b:b + 1].astype(np.float64))
                continue
            row = np.full(len(record.steps), np.nan)
            if not enc["misaligned"][b]:
                valid = enc["step_mask"][b][:len(record.steps)]
                row[:len(valid)] = np.where(valid, scores[b][:len(valid)], np.nan)
            out.append(row)
        bar.update(len(chunk))
    bar.close()
    return out


def aggregate_steps(step_scores: Sequence[np.ndarray], how: str) -> np.ndarray:
    """Per-solution aggregate of PRM step scores (`jaxstep.rewards.aggregate`; NaN steps skipped)."""
    width = max((len(s) for s in step_scores), default=1) or 1
    padded = np.zeros((len(step_scores), width), np.float32)
    mask = np.zeros((len(step_scores), width), bool)
    for i, s in enumerate(step_scores):
        valid = ~np.isnan(s)
        k = int(valid.sum())
        padded[i, :k] = s[valid]  # valid steps first (`last` needs a prefix mask)
        mask[i, :k] = True
    return np.asarray(aggregate_lib.aggregate(padded, mask, how))


def _step_pairs(records: Sequence, step_scores: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    scores, labels = [], []
    for record, row in zip(records, step_scores):
        for label, s in zip(record.labels, row):
            if label is not None and not np.isnan(s):
                scores.append(s)
                labels.append(label)
    return np.asarray(scores), np.asarray(labels)


# ----------------------------------------------------------------------------- evaluate

def _ns(num: int) -> list[int]:
    ns, n = [], 1
    while n < num:
        ns.append(n)
        n *= 2
    return ns + [num]


def flaw_detection(ref_scores: Sequence[np.ndarray], flawed_scores: Sequence[np.ndarray],
                   positions: Sequence[int] | None) -> float:
    """How often the reference outscores its flawed twin (ties count half; NaN pairs skipped).

    PRM: the scores of the flawed step (`positions`); ORM (`positions` None): the outcome scores.
    """
    wins = []
    for i, (a, b) in enumerate(zip(ref_scores, flawed_scores)):
        k = 0 if positions is None else positions[i]
        if k >= len(a) or k >= len(b) or np.isnan(a[k]) or np.isnan(b[k]):
            continue
        wins.append(1.0 if a[k] > b[k] else 0.5 if a[k] == b[k] else 0.0)
    return float(np.mean(wins)) if wins else float("nan")


def evaluate(reward_models: Mapping[str, tuple[Any, Any, str]], tokenizer, *, samples: Sequence = (),
             records: Sequence = (), flaw_pairs: Sequence = (), num_per_problem: int = 8, greedy_accuracy: float | None = None,
             greedy_correct: Sequence[bool] | None = None,
             max_len: int = 160, batch_size: int = 64, mesh=None,
             delimiter: str = formatting.DEFAULT_DELIMITER, key: jax.Array | None = None,
             template: str = formatting.PROMPT_TEMPLATE) -> dict:
    """Evaluates reward models on held-out samples and records (see the module docstring).

    Args:
      reward_models: {name: (ScalarModel, params, kind)}.
      samples: generator samples, problem-major, `num_per_problem` each.
      records: held-out labelled records of the training source.
      flaw_pairs: `labels.FlawPair` minimal pairs (synthetic): per flaw kind, how often
        the reference step outscores the flawed one (ORM: the outcome score).
      greedy_accuracy: the generator's greedy accuracy on the same problems (a baseline).
      greedy_correct: per problem, whether the greedy response is right: adds the paired
        difference best-of-N minus greedy (`minus_greedy`).
      key: unused today (ties are broken by sample order); kept for a random tie-break.
      template: the prompt template the reward models were trained with.

    Returns:
      {"models": {name: {...}}, "baselines": {...}, "problems": P, "n": N, "ns": [...],
       "flat": {metric name: value}} with every number a float.
    """
    del key
    samples, records = list(samples), list(records)
    N = num_per_problem
    P = len(samples) // N if N else 0
    if samples and P * N != len(samples):
        raise ValueError(f"evaluate: {len(samples)} samples is not a multiple of num_per_problem={N}")
    ns = _ns(N) if P else []
    correct = np.array([bool(s.correct) for s in samples], bool).reshape(P, N) if P else np.zeros((0, N), bool)
    answers = [[grading.extract_answer(s.text(delimiter)) for s in samples[p * N:(p + 1) * N]]
               for p in range(P)]
    baselines: dict[str, Any] = {}
    if P:
        baselines = {"majority": {n: majority_vote(answers, correct, n) for n in ns},
                     "random": {n: random_pick(correct[:, :n]) for n in ns},
                     "pass": {n: pass_at_n(correct, n) for n in ns}}
    if greedy_accuracy is not None:
        baselines["greedy"] = float(greedy_accuracy)
    out_models: dict[str, dict] = {}
    flat: dict[str, float] = {}
    for name, (model, params, kind) in reward_models.items():
        m: dict[str, Any] = {"kind": kind}
        tag = name.lower().replace(" ", "_")
        if samples:
            scores = score_records(model, params, kind, samples, tokenizer, max_len=max_len,
                                   batch_size=batch_size, mesh=mesh, delimiter=delimiter,
                                   desc=f"score {name}", template=template)
            if kind == "prm":
                step_s, step_l = _step_pairs(samples, scores)
                m["sample_steps"] = int(step_l.size)
                m["sample_step_positive"] = float(np.mean(step_l >= 0.5)) if step_l.size else float("nan")
                m["step_auc"] = roc_auc(step_s, step_l)
                m["step_accuracy"] = threshold_accuracy(step_s, step_l)
                by = {how: aggregate_steps(scores, how).reshape(P, N) for how in PRM_AGGREGATIONS}
            else:
                by = {"orm": np.concatenate(scores).reshape(P, N)}
            m["outcome_auc"] = {how: roc_auc(v.ravel(), correct.ravel()) for how, v in by.items()}
            m["within_problem_auc"] = {how: within_problem_auc(v, correct) for how, v in by.items()}
            m["best_of"] = {how: {n: best_of_n(v, correct, n) for n in ns} for how, v in by.items()}
            if greedy_correct is not None and len(greedy_correct) == P:
                m["minus_greedy"] = {how: minus_greedy(v, correct, greedy_correct) for how, v in by.items()}
                for how, (diff, se) in m["minus_greedy"].items():
                    flat[f"{tag}/best_of_{N}_{how}_minus_greedy"] = diff
                    flat[f"{tag}/best_of_{N}_{how}_minus_greedy_se"] = se
            for how in by:
                flat[f"{tag}/outcome_auc_{how}"] = m["outcome_auc"][how]
                flat[f"{tag}/within_problem_auc_{how}"] = m["within_problem_auc"][how]
                flat[f"{tag}/best_of_{N}_{how}"] = m["best_of"][how][N]
            if kind == "prm":
                flat[f"{tag}/step_auc"] = m["step_auc"]
                flat[f"{tag}/step_accuracy"] = m["step_accuracy"]
        if records:
            scores = score_records(model, params, kind, records, tokenizer, max_len=max_len,
                                   batch_size=batch_size, mesh=mesh, delimiter=delimiter,
                                   desc=f"score {name} records", template=template)
            if kind == "prm":
                step_s, step_l = _step_pairs(records, scores)
                m["records_steps"] = int(step_l.size)
                m["records_step_auc"] = roc_auc(step_s, step_l)
                m["records_step_accuracy"] = threshold_accuracy(step_s, step_l)
                flat[f"{tag}/records_step_auc"] = m["records_step_auc"]
            else:
                outcome = np.concatenate(scores) if scores else np.zeros(0)
                labels = np.array([float(bool(r.correct)) for r in records])
                m["records_outcome_auc"] = roc_auc(outcome, labels)
                m["records_outcome_accuracy"] = threshold_accuracy(outcome, labels)
                flat[f"{tag}/records_outcome_auc"] = m["records_outcome_auc"]
        if flaw_pairs:
            scored = score_records(model, params, kind, [x.reference for x in flaw_pairs] + [x.flawed for x in flaw_pairs],
                                   tokenizer, max_len=max_len, batch_size=batch_size, mesh=mesh,
                                   delimiter=delimiter, desc=f"score {name} flaw pairs", template=template)
            ref_s, flawed_s = scored[:len(flaw_pairs)], scored[len(flaw_pairs):]
            m["flaw_detection"] = {}
            for flaw in dict.fromkeys(x.kind for x in flaw_pairs):
                idx = [i for i, x in enumerate(flaw_pairs) if x.kind == flaw and (kind == "prm" or not x.flawed.correct)]
                m["flaw_detection"][flaw] = flaw_detection(
                    [ref_s[i] for i in idx], [flawed_s[i] for i in idx],
                    [flaw_pairs[i].position for i in idx] if kind == "prm" else None)
                flat[f"{tag}/flaw_detection_{flaw}"] = m["flaw_detection"][flaw]
        out_models[name] = m
    if P:
        flat[f"majority_of_{N}"] = baselines["majority"][N]
        flat[f"random_of_{N}"] = baselines["random"][N]
        flat[f"pass_at_{N}"] = baselines["pass"][N]
    if greedy_accuracy is not None:
        flat["greedy_accuracy"] = float(greedy_accuracy)
    flat["eval_problems"] = float(P)
    return {"models": out_models, "baselines": baselines, "problems": P, "n": N, "ns": ns,
            "records": len(records), "flat": flat}


# ----------------------------------------------------------------------------- report

