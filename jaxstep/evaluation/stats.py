"""Accuracies with standard errors, paired differences between two policies, means
over seeds, and accuracy by group (level, subject).

A row is one eval problem's dict (`jaxstep.evaluation.policy.make_rows`): `correct`
(greedy) and optional `samples`; two evals are paired by problem source and id.
"""
from __future__ import annotations


import math
from typing import Sequence
import numpy as np
import dataclasses
from typing import Any, Callable, Iterable, Mapping
def accuracy_with_error(rows: Sequence[dict]) -> dict[str, float]:
    """Accuracy of graded rows with its binomial standard error: {n, accuracy, se}."""
    n = len(rows)
    acc = float(np.mean([bool(r["correct"]) for r in rows])) if n else float("nan")
    return {"n": n, "accuracy": acc, "se": math.sqrt(acc * (1 - acc) / n) if n else float("nan")}


def _row_key(row: dict):
    return (row.get("source"), row.get("id") or row.get("question"))


def greedy_correct(row: dict) -> float:
    """1.0 if the row's greedy response is right."""
    return float(bool(row["correct"]))


def sampled_correct(row: dict) -> float | None:
    """The share of the row's sampled responses (eval.pass_k) that are right; None without samples."""
    samples = row.get("samples") or []
    return float(np.mean([bool(s["correct"]) for s in samples])) if samples else None


def paired_difference(before: Sequence[dict], after: Sequence[dict], value=greedy_correct) -> dict[str, float]:
    """Accuracy difference after - before on the problems both graded, with the standard
    error of the paired difference (sqrt(var(d) / n), d = value(after) - value(before)
    per problem: in {-1, 0, 1} for greedy correctness).

    Returns {n, diff, se, z, gained (after better), lost (after worse)}.
    """
    a = {_row_key(r): value(r) for r in before}
    b = {_row_key(r): value(r) for r in after}
    keys = [k for k in a if k in b and a[k] is not None and b[k] is not None]
    if not keys:
        return {"n": 0, "diff": float("nan"), "se": float("nan"), "z": float("nan"), "gained": 0, "lost": 0}
    d = np.array([b[k] - a[k] for k in keys], np.float64)
    n = len(d)
    se = math.sqrt(d.var(ddof=1) / n) if n > 1 else float("nan")
    diff = float(d.mean())
    return {"n": n, "diff": diff, "se": se, "z": diff / se if se and se > 0 else float("nan"),
            "gained": int((d > 0).sum()), "lost": int((d < 0).sum())}


def format_pm(value: float, se: float, percent: bool = True, signed: bool = False) -> str:
    """0.4123, 0.0155 -> "41.2% ± 1.6%"."""
    if value is None or not math.isfinite(value):
        return "-"
    sign = "+" if signed else ""
    if percent:
        return f"{100 * value:{sign}.1f}% ± {100 * se:.1f}%" if math.isfinite(se) else f"{100 * value:{sign}.1f}%"
    return f"{value:{sign}.3f} ± {se:.3f}" if math.isfinite(se) else f"{value:{sign}.3f}"


def mean_and_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (NaN se for one value)."""
    values = np.asarray(values, np.float64)
    if values.size == 0:
        return float("nan"), float("nan")
    se = float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else float("nan")
    return float(values.mean()), se


def _estimate(results: list[dict], value: str) -> tuple[float, float]:
    """One run: its value and s.e.; several seeds: the mean and the s.e. over seeds."""
    if len(results) == 1:
        return results[0][value], results[0]["se"]
    return mean_and_se([r[value] for r in results])


@dataclasses.dataclass(frozen=True)
class Group:
    """Accuracy of one group of graded items."""

    name: str
    n: int
    correct: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else float("nan")


def _sort_key(value: Any):
    # Numbers first in numeric order, then strings; None ("unknown") last.
    if value is None:
        return (2, "")
    if isinstance(value, (int, float)):
        return (0, value)
    return (1, str(value))


def accuracy_by(rows: Iterable[Mapping[str, Any]], key: str | Callable[[Mapping[str, Any]], Any] | None = None,
                *, correct_key: str = "correct") -> list[Group]:
    """Accuracy of `rows` (dicts with a boolean `correct_key`) grouped by `key`.

    Args:
      rows: graded items, e.g. the lines of samples.jsonl.
      key: a field name, a function of the row, or None for one group "all".
      correct_key: the field holding the 0/1 or bool verdict.

    Returns:
      Groups sorted by their key (numbers ascending, then names; None last as "?").
    """
    counts: dict[Any, list[int]] = {}
    for row in rows:
        if key is None:
            value = "all"
        else:
            value = key(row) if callable(key) else row.get(key)
        n_correct = counts.setdefault(value, [0, 0])
        n_correct[0] += 1
        n_correct[1] += int(bool(row[correct_key]))
    return [Group("?" if value is None else str(value), n, c)
            for value, (n, c) in sorted(counts.items(), key=lambda kv: _sort_key(kv[0]))]
