"""Training labels for reward models: exact (synthetic), PRM800K (human), Monte-Carlo.

A labelled solution is a `StepLabels`: a problem, the solution's steps (the final
answer line "#### N" is the last step when present), one label per step in [0, 1]
(None = not labelled) and the outcome (final answer correct or not). The text a
reward model reads is `prompt + delimiter.join(steps)`, so step k ends at the k-th
step end that `jaxstep.data.batching.step_ends_from_tokens` finds in it; steps are
cleaned (`clean_step`) so that none holds the delimiter itself.

Sources:
  * `exact_labels`: steps of generated solutions to synthetic problems labelled by
    `step_checks.label_steps`; `corrupted_solutions` / `reference_solutions` add flawed /
    correct references when the samples lack one class (`balance_classes`).
  * `prm800k_outcome_labels`: PRM800K solutions labelled by final-answer correctness (ORM).
  * `jaxstep.rm.label_files.prm800k_labels`: per-step ratings (1 good, 0 neutral -> `neutral_is_positive`,
    -1 bad) of every rated alternative after the path's prefix, and Bradley-Terry
    pairs of alternatives of the same step.
  * `jaxstep.rm.montecarlo.montecarlo_labels` (Math-Shepherd): from each step prefix, N completions by the
    generator; soft label = fraction reaching the reference answer, hard = any does.
    Finished solutions are appended to a JSON-lines cache, so a rerun resumes.
  * `outcome_labels` / `jaxstep.rm.label_files.read_labeled_solutions`: solution-level labels for the ORM.
  * `preference_pairs`: Bradley-Terry pairs from any step labels (two solutions of one
    problem with the same prefix whose next steps differ in label).
"""
from __future__ import annotations

import dataclasses
import json
import logging
from typing import Iterable, Sequence

import jax
import numpy as np

from jaxstep import paths
from jaxstep.data import formatting, grading
from jaxstep.data.jsonio import iter_records
from jaxstep.data.problem import DataError, ErrorPolicy, Problem
from jaxstep.data import step_checks

logger = logging.getLogger(__name__)

ORIGINS = ("sample", "reference", "corrupt", "prm800k", "file")


# ----------------------------------------------------------------------------- records

@dataclasses.dataclass(frozen=True)
class StepLabels:
    """One solution with per-step labels.

    Attributes:
      problem: the problem it solves (question and reference answer).
      steps: the solution's steps (cleaned; the answer line is the last step if present).
      labels: one per step, P(step is correct) in [0, 1], or None where unlabelled.
      correct: whether the final answer is right (the ORM label), None if unknown.
      origin: "sample" (generator), "reference", "corrupt", "prm800k" or "file".
    """

    problem: Problem
    steps: tuple[str, ...]
    labels: tuple[float | None, ...]
    correct: bool | None
    origin: str = "sample"

    def __post_init__(self):
        if len(self.steps) != len(self.labels):
            raise ValueError(f"problem {self.problem.id}: {len(self.steps)} steps but "
                             f"{len(self.labels)} labels")

    def text(self, delimiter: str = formatting.DEFAULT_DELIMITER) -> str:
        """The solution as the reward model reads it (after the prompt)."""
        return solution_text(self.steps, delimiter)

    def to_json(self) -> dict:
        return {"problem": self.problem.to_json(), "steps": list(self.steps),
                "labels": list(self.labels), "correct": self.correct, "origin": self.origin}

    @classmethod
    def from_json(cls, d: dict) -> "StepLabels":
        return cls(Problem(**d["problem"]), tuple(d["steps"]),
                   tuple(None if x is None else float(x) for x in d["labels"]),
                   d.get("correct"), d.get("origin", "file"))


@dataclasses.dataclass(frozen=True)
class StepPreference:
    """Two alternatives for the same step after the same prefix; `chosen` is better."""

    problem: Problem
    prefix: tuple[str, ...]
    chosen: str
    rejected: str

    def texts(self, delimiter: str = formatting.DEFAULT_DELIMITER) -> tuple[str, str]:
        """(chosen solution text, rejected solution text); each ends with its step."""
        return (solution_text(self.prefix + (self.chosen,), delimiter),
                solution_text(self.prefix + (self.rejected,), delimiter))

    def to_json(self) -> dict:
        return {"problem": self.problem.to_json(), "prefix": list(self.prefix),
                "chosen": self.chosen, "rejected": self.rejected}

    @classmethod
    def from_json(cls, d: dict) -> "StepPreference":
        return cls(Problem(**d["problem"]), tuple(d["prefix"]), d["chosen"], d["rejected"])


def clean_step(text: str, delimiter: str = formatting.DEFAULT_DELIMITER) -> str:
    """A step as one segment: the delimiter and line breaks inside it become spaces."""
    text = text.replace(delimiter, " ")
    return " ".join(text.split())


def solution_text(steps: Sequence[str], delimiter: str = formatting.DEFAULT_DELIMITER) -> str:
    """Steps joined by the delimiter (a reference renders as steps + "#### N")."""
    return delimiter.join(steps)


def split_solution(text: str, delimiter: str = formatting.DEFAULT_DELIMITER) -> tuple[str, ...]:
    """A generated solution's steps (`formatting.split_steps`, cleaned)."""
    return tuple(s for s in (clean_step(x, delimiter) for x in formatting.split_steps(text, delimiter)) if s)


def save_records(path: str, records: Iterable[StepLabels | StepPreference]) -> str:
    """Writes records as JSON lines, whole (a partial file is never left; local or
    remote, `jaxstep.paths.write_text`)."""
    return paths.write_text(path, "".join(json.dumps(r.to_json()) + "\n" for r in records))


def load_records(path: str) -> list[StepLabels | StepPreference]:
    """Reads `save_records` output back (DataError naming the line on a bad record)."""
    out = []
    policy = ErrorPolicy(skip=False)
    for line, record in iter_records(path, policy):
        try:
            out.append(StepPreference.from_json(record) if "chosen" in record
                       else StepLabels.from_json(record))
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(path, line, f"not a labelled-solution record: {e}") from None
    return out


# ----------------------------------------------------------------------------- exact

def exact_labels(problems: Sequence[Problem], texts: Sequence[str], *,
                 delimiter: str = formatting.DEFAULT_DELIMITER, origin: str = "sample",
                 rule: str = "valid") -> list[StepLabels]:
    """Exact step labels of solutions to synthetic problems (`step_checks.label_steps`).

    Args:
      problems, texts: aligned; `texts[i]` is a generated solution to `problems[i]`.
      rule: "valid" (right arithmetic on known numbers) or "reference" (see label_steps).
    """
    if len(problems) != len(texts):
        raise ValueError(f"{len(problems)} problems but {len(texts)} solutions")
    out = []
    for problem, text in zip(problems, texts):
        steps = split_solution(text, delimiter)
        labels = step_checks.label_steps(problem, steps, rule=rule)
        out.append(StepLabels(problem, steps, tuple(float(x) for x in labels),
                              grading.is_correct(text, problem.answer), origin))
    return out


def reference_solutions(problems: Sequence[Problem]) -> list[StepLabels]:
    """Each problem's reference solution, every step (and the answer line) correct."""
    out = []
    for p in problems:
        steps = tuple(clean_step(s) for s in p.steps) + (formatting.ANSWER_PREFIX + p.answer,)
        out.append(StepLabels(p, steps, (1.0,) * len(steps), True, "reference"))
    return out


def corrupted_solutions(problems: Sequence[Problem], key: jax.Array, *,
                        rule: str = "valid", kinds: Sequence[str] | None = None) -> list[StepLabels]:
    """One `step_checks.corrupt` solution per problem with its exact labels (answer line last).

    `kinds` restricts the corruption to a subset of `step_checks.KINDS` (one drawn per
    problem); None = any. Problems that cannot be corrupted are skipped.
    """
    out = []
    for i, p in enumerate(problems):
        k = jax.random.fold_in(key, i)
        kind = None if not kinds else str(kinds[int(jax.random.randint(k, (), 0, len(kinds)))])
        try:
            c = step_checks.corrupt(p, k, rule=rule, kind=kind)
        except ValueError:
            continue
        out.append(_corrupted_record(p, c))
    return out


def _corrupted_record(problem: Problem, c: step_checks.CorruptedSolution) -> StepLabels:
    """A `step_checks.corrupt` solution as StepLabels (the answer line last)."""
    steps = tuple(clean_step(s) for s in c.steps) + (formatting.ANSWER_PREFIX + c.answer,)
    labels = tuple(float(x) for x in c.labels) + (float(c.answer_correct),)
    return StepLabels(problem, steps, labels, c.answer_correct, "corrupt")


@dataclasses.dataclass(frozen=True)
class FlawPair:
    """A reference solution and the same solution with one flaw (a minimal pair).

    Both agree up to step `position`; `flawed.steps[position]` is where the flaw is.
    A reward model that checks the steps scores `reference` above `flawed` there.
    """

    reference: StepLabels
    flawed: StepLabels
    position: int
    kind: str


def flaw_pairs(problems: Sequence[Problem], key: jax.Array, *,
               kinds: Sequence[str] = ("arithmetic", "operand"),
               rule: str = "reference") -> list[FlawPair]:
    """One minimal pair per synthetic problem and flaw kind (`step_checks.corrupt`).

    Kinds whose flaw sits in one step (a wrong result, a wrong operand); "skip" and
    "repeat" shift the later steps, so they make no pair. Problems that cannot take a
    flaw of a kind are skipped for that kind.
    """
    refs = reference_solutions(problems)
    out = []
    for j, kind in enumerate(kinds):
        for i, (p, ref) in enumerate(zip(problems, refs)):
            try:
                c = step_checks.corrupt(p, jax.random.fold_in(jax.random.fold_in(key, j), i), kind=kind, rule=rule)
            except ValueError:
                continue
            flawed = _corrupted_record(p, c)
            if flawed.steps[:c.position] != ref.steps[:c.position] or flawed.labels[c.position] != 0.0:
                continue
            out.append(FlawPair(ref, flawed, c.position, kind))
    return out


def label_balance(records: Sequence[StepLabels]) -> dict[str, float]:
    """Counts of labelled steps and the fraction that are positive (label >= 0.5)."""
    labels = [x for r in records for x in r.labels if x is not None]
    positive = float(np.mean([x >= 0.5 for x in labels])) if labels else float("nan")
    outcomes = [r.correct for r in records if r.correct is not None]
    return {"steps": len(labels), "positive_fraction": positive, "solutions": len(records),
            "correct_fraction": float(np.mean(outcomes)) if outcomes else float("nan")}


def balance_classes(records: list[StepLabels], problems: Sequence[Problem], key: jax.Array, *,
                    min_fraction: float = 0.2, rule: str = "valid", by: str = "steps") -> list[StepLabels]:
    """Adds corrupted (or reference) solutions until each class is >= `min_fraction`.

    A strong generator rarely errs, a weak one rarely is right; either way a reward
    model needs both classes. `by` = "steps" balances the step labels (PRM),
    "outcome" the final-answer labels (ORM). Added solutions cycle through `problems`
    (synthetic ones: `step_checks.corrupt` needs their one-operation steps).
    """
    if by not in ("steps", "outcome"):
        raise ValueError(f"balance_classes: by must be 'steps' or 'outcome', got {by!r}")
    records = list(records)
    if not problems or min_fraction <= 0:
        return records
    field = "positive_fraction" if by == "steps" else "correct_fraction"
    count = "steps" if by == "steps" else "solutions"
    cursor = 0
    for rnd in range(8):
        stats = label_balance(records)
        positive = stats[field] if stats[count] and stats[field] == stats[field] else 0.5
        if min_fraction <= positive <= 1 - min_fraction:
            break
        negative = positive > 1 - min_fraction  # too few wrong ones: add corrupted solutions
        n = stats[count]
        have = n * ((1 - positive) if negative else positive)
        per_solution = (2.0 if negative else 4.0) if by == "steps" else (0.8 if negative else 1.0)
        need = max(1, int(np.ceil(max(min_fraction * n - have, 1.0) / (1 - min_fraction) / per_solution)))
        chosen = [problems[(cursor + i) % len(problems)] for i in range(need)]
        cursor += need
        sub = jax.random.fold_in(key, rnd)
        extra = corrupted_solutions(chosen, sub, rule=rule) if negative else reference_solutions(chosen)
        if not extra:
            break
        records.extend(extra)
        logger.info("labels: added %d %s solutions to balance %s labels (positive fraction was %.2f)",
                    len(extra), extra[0].origin, by, positive)
    return records


# ----------------------------------------------------------------------------- outcomes

def outcome_labels(problems: Sequence[Problem], texts: Sequence[str], *,
                   delimiter: str = formatting.DEFAULT_DELIMITER, origin: str = "sample") -> list[StepLabels]:
    """Solutions labelled by final-answer correctness only (`is_correct`); steps unlabelled."""
    if len(problems) != len(texts):
        raise ValueError(f"{len(problems)} problems but {len(texts)} solutions")
    out = []
    for p, text in zip(problems, texts):
        steps = split_solution(text, delimiter)
        out.append(StepLabels(p, steps, (None,) * len(steps), grading.is_correct(text, p.answer), origin))
    return out


# ----------------------------------------------------------------------------- PRM800K


# ----------------------------------------------------------------------------- pairs

def preference_pairs(records: Sequence[StepLabels], *, max_pairs_per_problem: int = 16,
                     key: jax.Array | None = None) -> list[StepPreference]:
    """Bradley-Terry pairs from step labels: solutions of the same problem that agree on
    steps `[0, k)` and whose step k labels differ give (better step k, worse step k).

    At most `max_pairs_per_problem` pairs per problem (a random subset with `key`).
    """
    by_problem: dict[str, list[StepLabels]] = {}
    for r in records:
        by_problem.setdefault(r.problem.id or r.problem.question, []).append(r)
    rng = np.random.default_rng(None if key is None else np.asarray(jax.random.key_data(key)).ravel().tolist())
    out: list[StepPreference] = []
    for group in by_problem.values():
        found: dict[tuple, StepPreference] = {}
        for a in group:
            for b in group:
                for k in range(min(len(a.steps), len(b.steps))):
                    if k and a.steps[k - 1] != b.steps[k - 1]:
                        break
                    la, lb = a.labels[k], b.labels[k]
                    if la is not None and lb is not None and la > lb and a.steps[k] != b.steps[k]:
                        pair = StepPreference(a.problem, a.steps[:k], a.steps[k], b.steps[k])
                        found.setdefault((pair.prefix, pair.chosen, pair.rejected), pair)
        pairs = list(found.values())
        if len(pairs) > max_pairs_per_problem:
            pairs = [pairs[i] for i in sorted(rng.choice(len(pairs), max_pairs_per_problem, replace=False))]
        out.extend(pairs)
    return out


# ----------------------------------------------------------------------------- Monte-Carlo

# complete(problems, prefixes, num_samples, key) -> texts: for each i, `num_samples`
# continuations of prompt(problems[i]) + prefixes[i] (problem-major, flat list).

