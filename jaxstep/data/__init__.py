"""jaxstep.data: readers, step splitting, grading, synthetic problems, tokenization, batching.

Entry points:
  load(source, split, *, limit=None, skip_bad_records=False, **kw) -> list[Problem]
  Problem, DataError
  prm800k.read(path), grading.extract_answer / grading.is_correct,
  synthetic.generate / label_steps / corrupt, tokenizer, formatting, batching.
"""
from jaxstep.data.problem import DataError, Problem, Records
from jaxstep.data.readers import load, resolve_data_dir, save_jsonl

__all__ = ["DataError", "Problem", "Records", "load", "resolve_data_dir", "save_jsonl"]
