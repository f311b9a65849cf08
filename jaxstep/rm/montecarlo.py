"""Math-Shepherd Monte-Carlo step labels with a resumable on-disk cache.

A step is labelled by completing the solution prefix up to it `num_completions` times
with the generator: hard label 1 if any completion reaches the right answer, soft
label the fraction that do.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Callable, Sequence

import jax
from tqdm.auto import tqdm

from jaxstep import paths
from jaxstep.data.problem import Problem
from jaxstep.rm.labels import StepLabels, solution_text
import dataclasses
from jaxstep.data import formatting, grading

logger = logging.getLogger(__name__)

# complete(problems, prefixes, num_samples, key) -> continuation texts, problem-major.
CompleteFn = Callable[[Sequence[Problem], Sequence[str], int, jax.Array], list[str]]


def montecarlo_key(record: StepLabels, num_completions: int) -> str:
    """Cache key of one solution: its problem, its steps and the number of completions."""
    h = hashlib.sha256()
    for part in (record.problem.id, record.problem.question, record.problem.answer,
                 *record.steps, str(num_completions)):
        h.update(part.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:24]


def read_montecarlo_cache(path: str) -> dict[str, dict]:
    """The cache's finished solutions by key; a truncated last line (a crash) is ignored."""
    done: dict[str, dict] = {}
    if not path or not paths.isfile(path):
        return done
    with paths.open(path) as f:
        for raw in f:
            try:
                row = json.loads(raw)
            except json.JSONDecodeError:
                logger.warning("%s: skipping an unreadable (truncated?) cache line", path)
                continue
            if isinstance(row, dict) and "key" in row:
                done[row["key"]] = row
    return done


def montecarlo_labels(solutions: Sequence[StepLabels], complete: CompleteFn, *, num_completions: int,
                      key: jax.Array, cache_path: str = "", mode: str = "hard",
                      delimiter: str = formatting.DEFAULT_DELIMITER, chunk: int = 16,
                      progress: bool = True) -> list[StepLabels]:
    """Math-Shepherd labels for each solution's steps.

    For step k < K-1: `num_completions` continuations of `prompt + steps[:k+1]` are
    sampled (`complete`); soft = the fraction whose final answer matches the reference,
    hard = soft > 0. The last step's label is the solution's own correctness. Solutions
    are labelled `chunk` at a time (one batched `complete` call) and each finished one
    is appended to `cache_path` (JSON lines with `soft`, `hard`, `correct`), which a
    rerun reads to skip it.

    Args:
      solutions: solutions to label (their `labels` are ignored).
      complete: the sampler (see `CompleteFn`).
      mode: "hard" or "soft": which label the returned StepLabels carry.

    Returns:
      The solutions relabelled, in input order.
    """
    if mode not in ("hard", "soft"):
        raise ValueError(f"montecarlo mode must be 'hard' or 'soft', got {mode!r}")
    if num_completions < 1:
        raise ValueError(f"num_completions must be >= 1, got {num_completions}")
    keys = [montecarlo_key(s, num_completions) for s in solutions]
    done = read_montecarlo_cache(cache_path)
    todo = [i for i, k in enumerate(keys) if k not in done]
    if done:
        logger.info("montecarlo: %d of %d solutions found in %s", len(solutions) - len(todo),
                    len(solutions), cache_path)
    bar = _progress(len(todo), "montecarlo", progress)
    # Process 0 appends to a local copy of a remote cache and pushes it after each chunk.
    staged = paths.Staged(cache_path) if cache_path and jax.process_index() == 0 else None
    for start in range(0, len(todo), chunk):
        ids = todo[start:start + chunk]
        queries: list[tuple[int, int]] = []  # (solution index, step k)
        for i in ids:
            queries.extend((i, k) for k in range(len(solutions[i].steps) - 1))
        texts: list[str] = []
        if queries:
            problems = [solutions[i].problem for i, _ in queries]
            prefixes = [solution_text(solutions[i].steps[:k + 1], delimiter) + delimiter for i, k in queries]
            texts = complete(problems, prefixes, num_completions, jax.random.fold_in(key, ids[0]))
            if len(texts) != len(queries) * num_completions:
                raise ValueError(f"complete() returned {len(texts)} texts for {len(queries)} prefixes "
                                 f"x {num_completions} completions")
        hits: dict[tuple[int, int], int] = {}
        for q, (i, k) in enumerate(queries):
            prefix = solution_text(solutions[i].steps[:k + 1], delimiter) + delimiter
            answer = solutions[i].problem.answer
            hits[(i, k)] = sum(grading.is_correct(prefix + t, answer)
                               for t in texts[q * num_completions:(q + 1) * num_completions])
        rows = []
        for i in ids:
            sol = solutions[i]
            correct = grading.is_correct(sol.text(delimiter), sol.problem.answer)
            soft = [hits[(i, k)] / num_completions for k in range(len(sol.steps) - 1)]
            soft.append(float(correct))
            row = {"key": keys[i], "problem_id": sol.problem.id, "steps": list(sol.steps),
                   "soft": soft, "hard": [s > 0 for s in soft], "correct": correct,
                   "num_completions": num_completions}
            done[keys[i]] = row
            rows.append(row)
        if staged is not None:
            _append_lines(staged.local, rows)
            staged.push()
        bar.update(len(ids))
    bar.close()
    out = []
    for sol, k in zip(solutions, keys):
        row = done[k]
        labels = tuple(float(x) for x in (row["hard"] if mode == "hard" else row["soft"]))
        out.append(dataclasses.replace(sol, labels=labels, correct=bool(row["correct"])))
    return out


def _append_lines(path: str, rows: Sequence[dict]) -> None:
    if jax.process_index() != 0:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torn = False
    if os.path.isfile(path) and os.path.getsize(path):
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"  # a crash mid-line: start a fresh line
    with open(path, "a", encoding="utf-8") as f:
        if torn:
            f.write("\n")
        for row in rows:
            f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _progress(total: int, desc: str, enabled: bool):
    return tqdm(total=total, desc=desc, unit="sol", dynamic_ncols=True,
                disable=not (enabled and jax.process_index() == 0))
