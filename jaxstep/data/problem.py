"""The record every stage reads (`Problem`) and the error every reader raises (`DataError`)."""
from __future__ import annotations

import dataclasses
import logging
from typing import Iterable

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Problem:
    """One math problem with a reference solution split into steps.

    Attributes:
      question: the problem statement, as shown to the model.
      steps: the reference solution's reasoning steps, in order, without the final
        answer line (GSM8K: its lines; MATH: its sentences; synthetic: one computation each).
      answer: the reference final answer as a string (GSM8K: an integer without
        thousands separators; MATH: the LaTeX in the last `\\boxed{}`).
      source: where it came from: "gsm8k", "math", "math500", "synthetic", "prm800k" or
        the name given by the caller.
      level: difficulty 1..5 (MATH), the step count (synthetic), or None.
      subject: MATH subject (e.g. "Algebra"), the synthetic template name, or None.
      id: a stable identifier, e.g. "gsm8k/test/17" or "test/algebra/1.json".
    """

    question: str
    steps: tuple[str, ...]
    answer: str
    source: str
    level: int | None = None
    subject: str | None = None
    id: str = ""

    def __post_init__(self):
        # Accept a list for steps but store a tuple, so Problems stay hashable.
        if not isinstance(self.steps, tuple):
            object.__setattr__(self, "steps", tuple(self.steps))

    def to_json(self) -> dict:
        """A JSON-serialisable dict; `load(path)` reads files of these back."""
        return dataclasses.asdict(self) | {"steps": list(self.steps)}


class DataError(ValueError):
    """A record that cannot be read: names the file, the line (1-based) and what was wrong."""

    def __init__(self, path: str, line: int | None, reason: str):
        self.path = str(path)
        self.line = line
        self.reason = reason
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {reason}")


class UnusableRecord(DataError):
    """A well-formed record that cannot be used: no final answer or no solution steps.

    The official files have a few of these (MATH train: two solutions whose last
    `\\boxed{}` is empty), so `load` skips them by default with one warning;
    `strict=True` raises them like any other `DataError`. Malformed input (bad
    JSON or encoding, missing fields, wrong types) is a plain `DataError`.
    """


class Records(list):
    """A list of records that also says how many bad records were skipped.

    Attributes:
      skipped: number of records dropped (unusable ones by default, every bad one
        with `skip_bad_records=True`); 0 when nothing was dropped.
      errors: the `DataError` of each skipped record (the first 100 are kept);
        `errors[0]` names the first one's file, line and reason.
    """

    def __init__(self, items: Iterable = (), skipped: int = 0, errors: list | None = None):
        super().__init__(items)
        self.skipped = skipped
        self.errors = list(errors or [])


class ErrorPolicy:
    """What a reader does with a bad record: raise it, or count and log it.

    `skip=True` skips every bad record; `skip_unusable=True` skips only
    `UnusableRecord`s and raises on malformed ones; neither raises on the first.
    Usage: `policy.handle(DataError(...))` inside a reader; `policy.report(what)`
    at the end logs ONE warning with the count and the first error (file:line:
    reason), so skipping is never silent.
    """

    MAX_KEPT = 100

    def __init__(self, skip: bool, *, skip_unusable: bool = False):
        self.skip = skip
        self.skip_unusable = skip_unusable
        self.skipped = 0
        self.errors: list[DataError] = []

    def handle(self, error: DataError) -> None:
        if not (self.skip or (self.skip_unusable and isinstance(error, UnusableRecord))):
            raise error
        self.skipped += 1
        if len(self.errors) < self.MAX_KEPT:
            self.errors.append(error)

    def report(self, what: str) -> None:
        if not self.skipped:
            return
        if self.skip:
            kind, how = "bad", "skip_bad_records=True"
        else:
            kind, how = "unusable", "no final answer or no solution; strict=True raises instead"
        logger.warning("%s: skipped %d %s record(s) (%s); first: %s",
                       what, self.skipped, kind, how, self.errors[0])

    def wrap(self, items: Iterable) -> Records:
        return Records(items, skipped=self.skipped, errors=self.errors)
