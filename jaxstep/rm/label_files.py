"""Labelled solutions read from files: PRM800K step ratings and outcomes, and
pre-labelled solutions (GSM8K `example_model_solutions.jsonl`-style or our own records).

    step_records, pairs = prm800k_labels(path)          # per-step labels, Bradley-Terry pairs
    outcomes = prm800k_outcome_labels(path)            # ORM labels: final answer right or not
    records = read_labeled_solutions(path)             # any labelled-solutions file
"""
from __future__ import annotations

import os
from typing import Any

from jaxstep.data import formatting, grading, prm800k
from jaxstep.data.jsonio import iter_records
from jaxstep.data.problem import DataError, ErrorPolicy, Problem
from jaxstep.data.steps import strip_calculator
from jaxstep.rm.labels import StepLabels, StepPreference, clean_step

_A_LINE_PREFIX = "A:"


def _gsm8k_solution_steps(solution: str, delimiter: str) -> tuple[str, ...]:
    """GSM8K example-model solution -> our steps: calculator marks dropped, "A: N" -> "#### N"."""
    steps = []
    for line in strip_calculator(solution).split("\n"):
        line = line.strip()
        if not line:
            continue
        if line.startswith(_A_LINE_PREFIX):
            line = formatting.ANSWER_PREFIX + line[len(_A_LINE_PREFIX):].strip()
        steps.append(clean_step(line, delimiter))
    return tuple(s for s in steps if s)


def read_labeled_solutions(path: str, *, delimiter: str = formatting.DEFAULT_DELIMITER,
                           limit: int | None = None, skip_bad_records: bool = False) -> list[StepLabels]:
    """Pre-labelled solutions for the ORM from a JSON-lines file.

    Formats (detected per record):
      * GSM8K `example_model_solutions.jsonl`: `question`, `ground_truth` (ending in
        "A: N") and objects (e.g. "6b_finetuning") holding `solution` and `is_correct`;
        one StepLabels per such object.
      * flat: `question`, `solution`, `is_correct`, optional `answer`.
      * `save_records` output (`problem`, `steps`, `labels`, ...).

    Args:
      limit: read at most this many records (lines), None = all.
    """
    policy = ErrorPolicy(skip_bad_records)
    out: list[StepLabels] = []
    for n, (line, record) in enumerate(iter_records(path, policy)):
        if limit is not None and n >= limit:
            break
        try:
            out.extend(_labeled_from_record(record, path, line, delimiter))
        except DataError as e:
            policy.handle(e)
    policy.report(f"read_labeled_solutions({path!r})")
    return out


def _labeled_from_record(record: Any, path: str, line: int | None, delimiter: str) -> list[StepLabels]:
    if not isinstance(record, dict):
        raise DataError(path, line, f"expected a JSON object, got {type(record).__name__}")
    if "problem" in record and "steps" in record:
        return [StepLabels.from_json(record)]
    question = record.get("question")
    if not isinstance(question, str) or not question.strip():
        raise DataError(path, line, "missing or empty string field 'question'")
    pid = f"{os.path.basename(path)}:{line}"
    if "solution" in record:
        entries = {"solution": record}
        answer = record.get("answer")
    else:
        entries = {k: v for k, v in record.items() if isinstance(v, dict) and "solution" in v}
        truth = record.get("ground_truth")
        answer = grading.extract_answer(truth) if isinstance(truth, str) else None
    if not entries:
        raise DataError(path, line, "no solution: expected 'solution' + 'is_correct', or objects "
                        "holding them (GSM8K example_model_solutions format)")
    out = []
    for name, entry in entries.items():
        solution, correct = entry.get("solution"), entry.get("is_correct")
        if not isinstance(solution, str) or not isinstance(correct, bool):
            raise DataError(path, line, f"{name}: expected string 'solution' and boolean 'is_correct'")
        steps = _gsm8k_solution_steps(solution, delimiter)
        if not steps:
            raise DataError(path, line, f"{name}: empty solution")
        problem = Problem(question.strip(), (), str(answer or ""), "file", None, name, pid)
        out.append(StepLabels(problem, steps, (None,) * len(steps), correct, "file"))
    return out


def prm800k_labels(path: str, *, neutral_is_positive: bool = True, skip_flagged: bool = False,
                   skip_bad_records: bool = False,
                   delimiter: str = formatting.DEFAULT_DELIMITER) -> tuple[list[StepLabels], list[StepPreference]]:
    """Step labels and Bradley-Terry pairs from PRM800K records.

    Step labels: one StepLabels per rated alternative (and human step) at every step
    position the labelled path reaches: the path's prefix (labelled along the path
    where it has ratings) followed by the alternative, labelled 1 / 0 / -1 ->
    1 / `neutral_is_positive` / 0. Pairs: alternatives of one step with different
    ratings (1 > 0 > -1).
    """
    records = prm800k.read(path, skip_bad_records=skip_bad_records)
    step_records: list[StepLabels] = []
    pairs: list[StepPreference] = []
    for sol in records:
        problem = Problem(sol.problem, (), sol.ground_truth_answer or "", "prm800k", None, None, sol.id)
        _, path_labels = prm800k.path_labels(sol, neutral_positive=neutral_is_positive)
        for ex in prm800k.step_examples(sol, neutral_positive=neutral_is_positive, skip_flagged=skip_flagged):
            prefix = tuple(clean_step(s, delimiter) for s in ex.prefix)
            text = clean_step(ex.text, delimiter)
            if not text or not all(prefix):
                continue
            prefix_labels = tuple(float(path_labels[i]) if i < len(path_labels) else None
                                  for i in range(len(prefix)))
            step_records.append(StepLabels(problem, prefix + (text,), prefix_labels + (float(ex.label),),
                                           None, "prm800k"))
        for pair in prm800k.preference_pairs(sol, skip_flagged=True):
            prefix = tuple(clean_step(s, delimiter) for s in pair.prefix)
            chosen, rejected = clean_step(pair.chosen, delimiter), clean_step(pair.rejected, delimiter)
            if chosen and rejected and all(prefix):
                pairs.append(StepPreference(problem, prefix, chosen, rejected))
    return step_records, pairs


def prm800k_outcome_labels(path: str, *, skip_bad_records: bool = False,
                           delimiter: str = formatting.DEFAULT_DELIMITER) -> list[StepLabels]:
    """ORM records from PRM800K: rated solutions labelled by whether their final answer
    is right (`correct`; steps unlabelled), one per distinct solution of a problem.

    Phase 2: the pre-generated solution (`pre_generated_steps`) and its
    `pre_generated_answer` graded against the ground truth; phase 1: the labelled path
    of a record that ends in an answer (`finish_reason` "solution"). Records without a
    ground-truth answer or a final answer are left out.
    """
    out: dict[tuple, StepLabels] = {}
    for sol in prm800k.read(path, skip_bad_records=skip_bad_records):
        if not sol.ground_truth_answer:
            continue
        if sol.pre_generated_steps and sol.pre_generated_answer is not None:
            texts = sol.pre_generated_steps
            correct = grading.answers_match(sol.pre_generated_answer, sol.ground_truth_answer)
        elif sol.finish_reason == "solution" and sol.path:
            texts = tuple(a.text for a in sol.path)
            correct = grading.is_correct(texts[-1], sol.ground_truth_answer)
        else:
            continue
        steps = tuple(s for s in (clean_step(t, delimiter) for t in texts) if s)
        problem = Problem(sol.problem, (), sol.ground_truth_answer, "prm800k", None, None, sol.id)
        if steps:
            out.setdefault((sol.problem, steps), StepLabels(problem, steps, (None,) * len(steps),
                                                            bool(correct), "prm800k"))
    return list(out.values())
