"""Prompt template and solution rendering (text level; tokens are in `batching`).

A prompt is `PROMPT_TEMPLATE.format(question=...)`:

    Question: Ann has 5 apples. Ann buys 3 more. How many apples does Ann have now?
    Answer:

and a solution is its steps joined by the step delimiter, then the delimiter and the
final-answer line `#### N`:

    Ann has 5 + 3 = 8 apples.
    #### 8

The answer line counts as the last step wherever steps are located in tokens, so a
solution with K reasoning steps has K + 1 step ends.
"""
from __future__ import annotations

from typing import Sequence

from jaxstep.data.problem import Problem

PROMPT_TEMPLATE = "Question: {question}\nAnswer:\n"
ANSWER_PREFIX = "#### "
DEFAULT_DELIMITER = "\n"


def format_prompt(problem: Problem | str, template: str = PROMPT_TEMPLATE) -> str:
    """The prompt text for a Problem (or a bare question string)."""
    question = problem.question if isinstance(problem, Problem) else problem
    return template.format(question=question)


def render_solution(steps: Sequence[str], answer: str, delimiter: str = DEFAULT_DELIMITER) -> str:
    """Steps joined by `delimiter`, then `delimiter + "#### " + answer`."""
    if not delimiter:
        raise ValueError("the step delimiter must be a non-empty string")
    return "".join(step + delimiter for step in steps) + ANSWER_PREFIX + answer


def reference_solution(problem: Problem, delimiter: str = DEFAULT_DELIMITER) -> str:
    """The rendered reference solution of a Problem."""
    return render_solution(problem.steps, problem.answer, delimiter)


def split_steps(text: str, delimiter: str = DEFAULT_DELIMITER) -> list[str]:
    """A response's steps as text: segments between delimiters, stripped, blanks dropped.

    Matches `batching.step_ends_from_tokens` (one step per entry, the answer line
    included) for the same delimiter.
    """
    if not delimiter:
        raise ValueError("the step delimiter must be a non-empty string")
    return [segment.strip() for segment in text.split(delimiter) if segment.strip()]
