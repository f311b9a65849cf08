"""How many prompts a stage's data holds that are longer than `data.max_prompt_len`:
generation cuts such a prompt on the left (`jaxstep.data.batching.encode_prompts`), so the
stages count them and report `prompts_truncated` in their summaries.

    n = count_truncated_prompts(problems, tokenizer, config.data.max_prompt_len,
                                template=formatting.config_template(config))
    n = report_truncated_prompts(config, tokenizer, problems, "sft")   # the same, logged
"""
from __future__ import annotations

import logging
from typing import Sequence

from jaxstep.data import batching, formatting
from jaxstep.data.problem import Problem

logger = logging.getLogger(__name__)


def distinct_prompts(problems: Sequence[Problem | str]) -> list[Problem | str]:
    """`problems` without repeats of a question (first kept, order kept): records that
    share a problem (several solutions, pairs) count once."""
    seen, out = set(), []
    for p in problems:
        question = p if isinstance(p, str) else p.question
        if question not in seen:
            seen.add(question)
            out.append(p)
    return out


def count_truncated_prompts(problems: Sequence[Problem | str], tokenizer, max_len: int, *,
                            template: str = formatting.PROMPT_TEMPLATE, chunk: int = 512) -> int:
    """The number of distinct prompts among `problems` whose tokens (BOS included, written
    with `template`) exceed `max_len`, i.e. that `encode_prompts` cuts. Tokenizes in
    chunks of `chunk` prompts ([chunk, max_len] arrays at most)."""
    prompts = distinct_prompts(problems)
    total = 0
    for start in range(0, len(prompts), chunk):
        enc = batching.encode_prompts(prompts[start:start + chunk], tokenizer, max_len, template=template,
                                      buckets="auto")
        total += int(enc["truncated"].sum())
    return total


def report_truncated_prompts(config, tokenizer, problems: Sequence[Problem | str], stage: str, *,
                             template: str | None = None) -> int:
    """`count_truncated_prompts` at `config.data.max_prompt_len` with `template` (default:
    the config's, `formatting.config_template`); a warning names the count when there are
    any. Returns the count."""
    d = config.data
    template = formatting.config_template(config) if template is None else template
    count = count_truncated_prompts(problems, tokenizer, d.max_prompt_len, template=template)
    if count:
        logger.warning("%s: %d of %d distinct prompts are longer than data.max_prompt_len=%d and lose "
                       "their first tokens when sampled", stage, count, len(distinct_prompts(problems)),
                       d.max_prompt_len)
    return count
