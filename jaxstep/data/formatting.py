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


# `data.prompt_template` names -> the template `format_prompts` applies ("chat" is the
# tokenizer's own chat template, applied to the question as one user message).
CHAT = "chat"
PROMPT_TEMPLATES = {"plain": PROMPT_TEMPLATE, "chat": CHAT}


def prompt_template(name: str) -> str:
    """The template of a `data.prompt_template` name ("plain" or "chat")."""
    if name not in PROMPT_TEMPLATES:
        raise ValueError(f"prompt template {name!r}: expected one of {sorted(PROMPT_TEMPLATES)}")
    return PROMPT_TEMPLATES[name]


def config_template(config) -> str:
    """The template of `config.data.prompt_template` (default "plain")."""
    return prompt_template(config.data.get("prompt_template", "plain"))


def chat_prompt(problem: Problem | str, tokenizer) -> str:
    """The question as one user turn in the tokenizer's chat template, ready for the answer."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"data.prompt_template='chat' but the tokenizer "
                         f"({getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__}) "
                         "has no chat template; use 'plain' or a tokenizer that has one")
    question = problem.question if isinstance(problem, Problem) else problem
    return tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                         add_generation_prompt=True)


def format_prompts(problems: Sequence[Problem | str], template: str = PROMPT_TEMPLATE,
                   tokenizer=None) -> list[str]:
    """`format_prompt` of each problem, or `chat_prompt` when `template` is `CHAT`."""
    if template == CHAT:
        return [chat_prompt(p, tokenizer) for p in problems]
    return [format_prompt(p, template) for p in problems]


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
