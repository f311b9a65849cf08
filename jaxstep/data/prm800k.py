"""PRM800K reader: step-labelled solutions with every rated alternative.

A PRM800K record is one labelled attempt at a MATH problem. Per step, the labeller
saw candidate completions (`completions`, each rated 1 / 0 / -1, or null when never
rated), and either accepted one (`chosen_completion`), wrote their own
(`human_completion`, unrated), or stopped (found an error, gave up).

The path a solution actually took (`LabeledStep.taken`) is, per step:
  completions[chosen_completion] if set; else the human completion if any; else, in
  phase 2 (pre-generated solutions), completions[0] -- the model's own step, which
  is where labelling stopped (rated -1 on `found_error`); else (phase 1 with no
  choice, e.g. a give-up or a final step nobody accepted) nothing: the path ends
  before that step.

Helpers: `path_labels` (binary labels along the path; how 0 and human steps map is
configurable), `step_examples` (one labelled example per rated alternative, with its
prefix), `preference_pairs` (Bradley-Terry pairs: alternatives of the same step with
different ratings, 1 > 0 > -1).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

from jaxstep.data.jsonio import get_field, iter_records
from jaxstep.data.problem import DataError, ErrorPolicy, Problem, Records

FINISH_REASONS = ("solution", "found_error", "give_up", "bad_problem")


@dataclasses.dataclass(frozen=True)
class Alternative:
    """One candidate text for a step.

    Attributes:
      text: the step text.
      rating: 1 (good), 0 (neutral/unhelpful), -1 (wrong) or None (never rated;
        always None for a human-written step).
      flagged: the labeller's flag (None when absent).
      source: "model" or "human".
    """

    text: str
    rating: int | None
    flagged: bool | None
    source: str = "model"


@dataclasses.dataclass(frozen=True)
class LabeledStep:
    """One step position: all alternatives, what was chosen, and the path's step."""

    alternatives: tuple[Alternative, ...]
    chosen: int | None
    human: Alternative | None
    taken: Alternative | None

    @property
    def rated(self) -> tuple[Alternative, ...]:
        """Model alternatives that carry a rating."""
        return tuple(a for a in self.alternatives if a.rating is not None)


@dataclasses.dataclass(frozen=True)
class LabeledSolution:
    """One PRM800K record.

    Attributes:
      problem, ground_truth_answer (None on screening questions), ground_truth_solution.
      steps: every labelled step position, in order.
      finish_reason: "solution" | "found_error" | "give_up" | "bad_problem".
      phase: 1 (generation null) or 2; generation: the raw field (-1 = screening).
      pre_generated_steps / pre_generated_answer / pre_generated_verifier_score: phase 2.
      labeler, timestamp, is_quality_control_question, is_initial_screening_question.
      id: "<file>:<line>".
    """

    problem: str
    ground_truth_answer: str | None
    ground_truth_solution: str | None
    steps: tuple[LabeledStep, ...]
    finish_reason: str
    phase: int
    generation: int | None
    pre_generated_steps: tuple[str, ...] | None
    pre_generated_answer: str | None
    pre_generated_verifier_score: float | None
    labeler: str | None
    timestamp: str | None
    is_quality_control_question: bool
    is_initial_screening_question: bool
    id: str

    @property
    def path(self) -> tuple[Alternative, ...]:
        """The steps actually taken, up to the first step with none (see module doc)."""
        out = []
        for step in self.steps:
            if step.taken is None:
                break
            out.append(step.taken)
        return tuple(out)

    def to_problem(self) -> Problem:
        """The record as a Problem: the path's texts as steps, the ground truth as answer."""
        if not self.ground_truth_answer:
            raise DataError(self.id, None, "PRM800K record has no ground_truth_answer")
        steps = tuple(a.text for a in self.path)
        if not steps:
            raise DataError(self.id, None, "empty solution: no labelled step was taken")
        return Problem(self.problem, steps, self.ground_truth_answer, "prm800k", None, None, self.id)


# ---------------------------------------------------------------------------- parsing

def _alternative(obj: Any, path: str, line: int | None, where: str, source: str) -> Alternative:
    if not isinstance(obj, dict):
        raise DataError(path, line, f"{where}: expected an object, got {type(obj).__name__}")
    text = get_field(obj, "text", str, path, line)
    rating = obj.get("rating")
    if rating is not None and (isinstance(rating, bool) or rating not in (-1, 0, 1)):
        raise DataError(path, line, f"{where}: rating must be 1, 0, -1 or null, got {rating!r}")
    flagged = obj.get("flagged")
    if flagged is not None and not isinstance(flagged, bool):
        raise DataError(path, line, f"{where}: flagged must be a boolean or null, got {flagged!r}")
    return Alternative(text, rating, flagged, obj.get("source") or source)


def _step(obj: Any, k: int, phase: int, path: str, line: int | None) -> LabeledStep:
    where = f"label.steps[{k}]"
    if not isinstance(obj, dict):
        raise DataError(path, line, f"{where}: expected an object, got {type(obj).__name__}")
    raw = obj.get("completions")
    if raw is not None and not isinstance(raw, list):
        raise DataError(path, line, f"{where}.completions: expected a list or null")
    alternatives = tuple(_alternative(c, path, line, f"{where}.completions[{i}]", "model")
                         for i, c in enumerate(raw or []))
    human_raw = obj.get("human_completion")
    if isinstance(human_raw, str):  # some copies store the bare text
        human_raw = {"text": human_raw, "rating": None, "source": "human"}
    human = None if human_raw is None else _alternative(human_raw, path, line,
                                                        f"{where}.human_completion", "human")
    chosen = obj.get("chosen_completion")
    if chosen is not None:
        if isinstance(chosen, bool) or not isinstance(chosen, int) or not 0 <= chosen < len(alternatives):
            raise DataError(path, line, f"{where}.chosen_completion {chosen!r} is not an index into "
                            f"{len(alternatives)} completions")
        taken = alternatives[chosen]
    elif human is not None:
        taken = human
    elif phase == 2 and alternatives:
        taken = alternatives[0]
    else:
        taken = None
    return LabeledStep(alternatives, chosen, human, taken)


def parse_record(record: dict, path: str, line: int | None) -> LabeledSolution:
    """One PRM800K JSON record -> LabeledSolution (DataError naming file/line otherwise)."""
    question = get_field(record, "question", dict, path, line)
    label = get_field(record, "label", dict, path, line)
    problem = get_field(question, "problem", str, path, line)
    if not problem.strip():
        raise DataError(path, line, "field 'question.problem' is empty")
    generation = get_field(record, "generation", int, path, line, optional=True)
    phase = 1 if generation is None else 2
    steps_raw = get_field(label, "steps", list, path, line)
    finish = get_field(label, "finish_reason", str, path, line)
    if finish not in FINISH_REASONS:
        raise DataError(path, line, f"label.finish_reason must be one of {FINISH_REASONS}, got {finish!r}")
    steps = tuple(_step(s, k, phase, path, line) for k, s in enumerate(steps_raw))
    if not steps:
        raise DataError(path, line, "empty solution: label.steps is empty")
    pre_steps = get_field(question, "pre_generated_steps", list, path, line, optional=True)
    score = get_field(question, "pre_generated_verifier_score", (int, float), path, line, optional=True)
    return LabeledSolution(
        problem=problem,
        ground_truth_answer=get_field(question, "ground_truth_answer", str, path, line, optional=True),
        ground_truth_solution=get_field(question, "ground_truth_solution", str, path, line, optional=True),
        steps=steps,
        finish_reason=finish,
        phase=phase,
        generation=generation,
        pre_generated_steps=None if pre_steps is None else tuple(str(s) for s in pre_steps),
        pre_generated_answer=get_field(question, "pre_generated_answer", str, path, line, optional=True),
        pre_generated_verifier_score=None if score is None else float(score),
        labeler=get_field(record, "labeler", str, path, line, optional=True),
        timestamp=get_field(record, "timestamp", str, path, line, optional=True),
        is_quality_control_question=bool(record.get("is_quality_control_question", False)),
        is_initial_screening_question=bool(record.get("is_initial_screening_question", False)),
        id=f"{path}:{line}" if line is not None else path,
    )


def read(path: str | os.PathLike, *, skip_bad_records: bool = False) -> Records:
    """All records of a PRM800K .jsonl file (or a folder of them) as LabeledSolutions.

    Raises DataError on the first malformed record unless `skip_bad_records`
    (then skipped, counted in `.skipped` and logged).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith((".jsonl", ".json")))
    else:
        files = [path]
    policy = ErrorPolicy(skip_bad_records)
    out = []
    for file in files:
        for line, record in iter_records(file, policy):
            try:
                out.append(parse_record(record, file, line))
            except DataError as e:
                policy.handle(e)
    policy.report(f"prm800k.read({path!r})")
    return policy.wrap(out)


# ---------------------------------------------------------------------------- labels

@dataclasses.dataclass(frozen=True)
class StepExample:
    """A step to score: the steps before it, its text and its label or rating."""

    prefix: tuple[str, ...]
    text: str
    label: bool
    rating: int | None
    step_index: int


@dataclasses.dataclass(frozen=True)
class StepPair:
    """Two alternatives for the same step after the same prefix; `chosen` is rated higher."""

    prefix: tuple[str, ...]
    chosen: str
    rejected: str
    chosen_rating: int
    rejected_rating: int
    step_index: int


def _binary(rating: int | None, source: str, neutral_positive: bool, human_positive: bool) -> bool | None:
    if rating is None:
        return human_positive if source == "human" else None
    if rating == 0:
        return neutral_positive
    return rating > 0


def path_labels(solution: LabeledSolution, *, neutral_positive: bool = True,
                human_positive: bool = True) -> tuple[list[str], list[bool]]:
    """The taken path's step texts and one binary label per step.

    rating 1 -> True, -1 -> False, 0 -> `neutral_positive` (True by default, as in
    the PRM800K paper's "neutral is fine" reading), a human-written step ->
    `human_positive`. Labelling ends at the first step that cannot be labelled.
    """
    texts, labels = [], []
    for step in solution.path:
        label = _binary(step.rating, step.source, neutral_positive, human_positive)
        if label is None:
            break
        texts.append(step.text)
        labels.append(label)
    return texts, labels


def step_examples(solution: LabeledSolution, *, neutral_positive: bool = True,
                  include_human: bool = True, skip_flagged: bool = False) -> list[StepExample]:
    """One example per rated alternative at every step position reached by the path."""
    examples = []
    path = solution.path
    for k, step in enumerate(solution.steps):
        if k > len(path):
            break
        prefix = tuple(a.text for a in path[:k])
        candidates = list(step.rated)
        if include_human and step.human is not None:
            candidates.append(step.human)
        for alt in candidates:
            if skip_flagged and alt.flagged:
                continue
            label = _binary(alt.rating, alt.source, neutral_positive, True)
            examples.append(StepExample(prefix, alt.text, bool(label), alt.rating, k))
    return examples


def preference_pairs(solution: LabeledSolution, *, human_rating: int | None = None,
                     skip_flagged: bool = True) -> list[StepPair]:
    """Bradley-Terry pairs: alternatives of one step with different ratings (1 > 0 > -1).

    Args:
      human_rating: treat a human-written step as having this rating (e.g. 1), or
        None (default) to leave it out.
      skip_flagged: leave out alternatives the labeller flagged.
    """
    pairs = []
    path = solution.path
    for k, step in enumerate(solution.steps):
        if k > len(path):
            break
        prefix = tuple(a.text for a in path[:k])
        rated = [(a.text, a.rating) for a in step.rated if not (skip_flagged and a.flagged)]
        if human_rating is not None and step.human is not None:
            rated.append((step.human.text, human_rating))
        for text_a, rating_a in rated:
            for text_b, rating_b in rated:
                if rating_a > rating_b:
                    pairs.append(StepPair(prefix, text_a, text_b, rating_a, rating_b, k))
    return pairs
