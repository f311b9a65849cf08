"""jaxstep.data: readers, step splitting, grading, synthetic problems, tokenization, batching.

  load(source, split, *, limit=None, skip_bad_records=False, data_dir=None, seed=0, **kw)
      -> list[Problem]      source: gsm8k | math | math500 | synthetic | path | hf:<name> | tfds:<name>
  Problem, DataError, Records (a list with .skipped / .errors), save_jsonl
  prm800k      read(path) -> LabeledSolutions; path_labels, step_examples, preference_pairs
  grading      extract_answer(text), is_correct(response, reference), answers_match(pred, ref)
  synthetic    generate, label_steps(problem, steps), corrupt(problem, key), split_of
  steps        split_gsm8k, split_math, last_boxed (the step-splitting rules)
  tokenizer    build_tokenizer, train_tokenizer, save_tokenizer, load_tokenizer, resolve_tokenizer
  sources      load_problems (weighted mixes of sources), eval_problems, parse_sources
  formatting   format_prompt, render_solution, reference_solution, split_steps
  batching     encode_prompts, encode_sft, step_ends_from_tokens, batch_step_ends, make_loader
"""
from jaxstep.data.problem import DataError, Problem, Records
from jaxstep.data.readers import load, resolve_data_dir, save_jsonl

__all__ = ["DataError", "Problem", "Records", "load", "resolve_data_dir", "save_jsonl"]
