"""`load(source, split)`: GSM8K, MATH, MATH500, synthetic, local files, HF hub, TFDS.

Record formats are detected from each record's fields, so a local file or folder
can hold any of them:

| fields                                   | format   | steps / answer                          |
| ---------------------------------------- | -------- | --------------------------------------- |
| question, steps (list), answer           | jaxstep  | as stored (`Problem.to_json`)           |
| question (str), answer (str with ####)   | gsm8k    | lines / after `####`, commas removed    |
| problem, solution [, answer]             | math     | sentences / `answer` or last `\\boxed{}` |
| question (object), label (object)        | prm800k  | the labelled path / ground_truth_answer |

Bad records: a record that is well formed but cannot be used (no final answer,
an empty `\\boxed{}`, no solution steps) is skipped by default, and one warning per
`load` counts them and names the first (file:line: why); the official MATH train
file has two such records. `strict=True` raises on them instead. Malformed input
(invalid JSON or UTF-8, a missing field, a wrong type, an unknown record shape)
raises `DataError` naming the file and line unless `skip_bad_records=True`, which
skips (and counts) every bad record. The count is the result's `.skipped`.

Where the real files live: the `data_dir` argument, else `$JAXSTEP_DATA_DIR`, laid
out as `gsm8k/{train,test}.jsonl`, `math/{train,test}.jsonl` and
`math/math500_test.jsonl`.
"""
from __future__ import annotations

import os
import re
from typing import Any, Iterable, Iterator

from jaxstep.data import steps as steps_lib
from jaxstep.data.jsonio import JsonRecord, get_field, iter_records
from jaxstep.data import synthetic
from jaxstep.data.problem import DataError, ErrorPolicy, Problem, Records, UnusableRecord

DATA_DIR_ENV = "JAXSTEP_DATA_DIR"

# source name -> (sub-folder, file name pattern, allowed splits or None for any)
_REAL_SOURCES = {
    "gsm8k": ("gsm8k", "{split}.jsonl", None),
    "math": ("math", "{split}.jsonl", None),
    "math500": ("math", "math500_{split}.jsonl", ("test",)),
}
_LEVEL_RE = re.compile(r"^\s*Level\s+(\S+)\s*$")
_TFDS_EXTRA_MSG = ("needs the optional 'tfds' extra (tensorflow-datasets with array_record "
                   "data sources, no TensorFlow needed): pip install 'jaxstep[tfds]'")


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> str:
    """The folder holding gsm8k/ and math/: `data_dir`, else $JAXSTEP_DATA_DIR."""
    folder = os.fspath(data_dir) if data_dir else os.environ.get(DATA_DIR_ENV, "")
    if not folder:
        raise FileNotFoundError(
            f"no data folder: pass data_dir=... or set ${DATA_DIR_ENV} to the folder "
            "holding gsm8k/ and math/ (or use source='synthetic', which needs no files)")
    return folder


def load(source: str, split: str = "train", *, limit: int | None = None,
         strict: bool = False, skip_bad_records: bool = False,
         data_dir: str | os.PathLike | None = None, seed: Any = 0, **kw: Any) -> Records:
    """Loads problems from a named dataset, a local file/folder, `hf:<name>` or `tfds:<name>`.

    Args:
      source: "gsm8k" | "math" | "math500" | "synthetic" | a local file or folder |
        "hf:<hub name>" (needs the network, only when asked) | "tfds:<name>".
      split: "train" | "test" (MATH500: "test"; GSM8K also "test_socratic").
      limit: keep at most this many problems (the first ones, file order).
      strict: raise on unusable records (no final answer, empty `\\boxed{}`, no
        solution) too, instead of skipping them (the default, counted in `.skipped`
        and reported in one warning).
      skip_bad_records: skip malformed records too (bad JSON, missing fields, wrong
        types; counted and logged the same way) instead of raising `DataError` on
        the first one. Cannot be combined with `strict`.
      data_dir: folder with gsm8k/ and math/ (else $JAXSTEP_DATA_DIR); also the
        TFDS data_dir. Ignored by synthetic.
      seed: synthetic only (int, jax key or numpy Generator); ignored by the others,
        so one call shape works for every source.
      **kw: keep_calculator (GSM8K annotations, default False) and math_steps
        ("sentences" | "paragraphs"), ignored by synthetic; hf_config (hub config
        name, e.g. "main" for hf:openai/gsm8k); hf_kwargs (more
        `datasets.load_dataset` arguments); synthetic knobs: num_problems,
        min_steps, max_steps, max_value, max_factor, max_result, ops, templates
        (see `jaxstep.data.synthetic.Difficulty`).

    Returns:
      A `Records` list of `Problem`s: `.skipped` counts the records that were
      skipped and `.errors` holds their `DataError`s (file, line, reason).

    Raises:
      DataError: a malformed record (file, line, what was wrong); with
        `strict=True` also an unusable one (`UnusableRecord`, a `DataError`).
      FileNotFoundError: the data folder or file does not exist.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if strict and skip_bad_records:
        raise ValueError("strict=True and skip_bad_records=True contradict each other")
    parse_kw = {k: kw.pop(k) for k in ("keep_calculator", "math_steps") if k in kw}
    if synthetic.is_synthetic(source):
        return Records(synthetic.load_split(split, limit=limit, seed=seed, source=source, **kw))
    policy = ErrorPolicy(skip_bad_records, skip_unusable=not strict)
    if source.startswith("hf:"):
        rows = _hf_rows(source[3:], split, kw.pop("hf_config", None), kw.pop("hf_kwargs", None))
        _no_extra(kw, source)
        items = _convert(rows, source, split, policy, name=source[3:], **parse_kw)
    elif source.startswith("tfds:"):
        rows = _tfds_rows(source[5:], split, data_dir)
        _no_extra(kw, source)
        items = _convert(rows, source, split, policy, name=source[5:], **parse_kw)
    elif source in _REAL_SOURCES:
        _no_extra(kw, source)
        folder, pattern, splits = _REAL_SOURCES[source]
        if splits is not None and split not in splits:
            raise ValueError(f"{source} has splits {splits}, got {split!r}")
        path = os.path.join(resolve_data_dir(data_dir), folder, pattern.format(split=split))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{source} {split}: {path} not found (data_dir / ${DATA_DIR_ENV})")
        items = _convert(_file_rows([path], policy), path, split, policy, name=source, **parse_kw)
    elif os.path.exists(source):
        _no_extra(kw, source)
        files = _local_files(source, split)
        items = _convert(_file_rows(files, policy), source, split, policy, name=None, **parse_kw)
    else:
        raise ValueError(
            f"unknown data source {source!r}: expected gsm8k | math | math500 | synthetic | "
            "synthetic_easy | synthetic_hard | "
            "an existing file or folder | hf:<name> | tfds:<name>")
    problems = []
    for problem in items:
        if limit is not None and len(problems) >= limit:
            break
        problems.append(problem)
    policy.report(f"load({source!r}, {split!r})")
    return policy.wrap(problems)


def _no_extra(kw: dict, source: str) -> None:
    if kw:
        raise TypeError(f"load({source!r}): unexpected arguments {sorted(kw)}")


# ---------------------------------------------------------------------------- inputs

def _natural_key(path: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


def _local_files(path: str, split: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    for name in (f"{split}.jsonl", f"{split}.json"):
        candidate = os.path.join(path, name)
        if os.path.isfile(candidate):
            return [candidate]
    root = os.path.join(path, split) if os.path.isdir(os.path.join(path, split)) else path
    files = []
    for dirpath, _, filenames in os.walk(root):
        files.extend(os.path.join(dirpath, f) for f in filenames if f.endswith((".json", ".jsonl")))
    if not files:
        raise FileNotFoundError(f"{path}: no {split}.jsonl and no .json/.jsonl files found")
    return sorted(files, key=_natural_key)


def _file_rows(files: Iterable[str], policy: ErrorPolicy) -> Iterator[tuple[str, int | None, JsonRecord]]:
    for path in files:
        for line, record in iter_records(path, policy):
            yield path, line, record


def _hf_rows(name: str, split: str, config: str | None, extra: dict | None):
    try:
        import datasets  # noqa: PLC0415 - optional, only when asked
    except ImportError as e:  # pragma: no cover - datasets is a dependency
        raise ImportError(f"hf:{name} needs the 'datasets' package") from e
    dataset = datasets.load_dataset(name, config, split=split, **(extra or {}))
    for index, row in enumerate(dataset):
        yield f"hf:{name}[{split}]", index + 1, dict(row)


def _tfds_rows(name: str, split: str, data_dir: str | None):
    try:
        import tensorflow_datasets as tfds  # noqa: PLC0415 - optional extra
    except ImportError as e:
        raise ImportError(f"tfds:{name} {_TFDS_EXTRA_MSG}") from e
    source = tfds.data_source(name, split=split, data_dir=data_dir)
    for index in range(len(source)):
        row = {k: (v.decode("utf-8") if isinstance(v, bytes) else v) for k, v in source[index].items()}
        yield f"tfds:{name}[{split}]", index + 1, row


# ---------------------------------------------------------------------------- records

def _convert(rows, what: str, split: str, policy: ErrorPolicy, *, name: str | None,
             keep_calculator: bool = False, math_steps: str = "sentences") -> Iterator[Problem]:
    for index, (path, line, record) in enumerate(rows):
        try:
            problem = record_to_problem(record, path, line, split=split, index=index, name=name,
                                        keep_calculator=keep_calculator, math_steps=math_steps)
        except DataError as e:
            policy.handle(e)
            continue
        yield problem


def detect_format(record: JsonRecord) -> str | None:
    """"jaxstep" | "gsm8k" | "math" | "prm800k" from a record's fields, or None."""
    if isinstance(record.get("question"), dict) and isinstance(record.get("label"), dict):
        return "prm800k"
    if "question" in record and "steps" in record and "answer" in record:
        return "jaxstep"
    if "question" in record and "answer" in record:
        return "gsm8k"
    if "problem" in record and ("solution" in record or "answer" in record):
        return "math"
    return None


def record_to_problem(record: JsonRecord, path: str, line: int | None, *, split: str = "",
                      index: int = 0, name: str | None = None, keep_calculator: bool = False,
                      math_steps: str = "sentences") -> Problem:
    """One JSON record -> Problem, or a DataError naming the file, line and the problem."""
    fmt = detect_format(record)
    if fmt is None:
        raise DataError(path, line, "unrecognised record: expected fields question+answer (GSM8K), "
                        "problem+solution (MATH), question+steps+answer (jaxstep) or "
                        f"question+label (PRM800K); got {sorted(record)}")
    number = (line - 1) if line is not None else index
    if fmt == "jaxstep":
        return _from_jaxstep(record, path, line, number, split)
    if fmt == "gsm8k":
        return _from_gsm8k(record, path, line, f"{name or 'gsm8k'}/{split}/{number}", keep_calculator)
    if fmt == "math":
        return _from_math(record, path, line, name, split, number, math_steps)
    from jaxstep.data import prm800k  # noqa: PLC0415 - avoids an import cycle
    solution = prm800k.parse_record(record, path, line)
    return solution.to_problem()


def _text(record, key, path, line, *, optional=False) -> str | None:
    value = get_field(record, key, str, path, line, optional=optional)
    if value is not None and not value.strip() and not optional:
        raise DataError(path, line, f"field {key!r} is empty")
    return value


def _from_jaxstep(record, path, line, number, split) -> Problem:
    question = _text(record, "question", path, line)
    answer = _text(record, "answer", path, line)
    steps = get_field(record, "steps", list, path, line)
    if not steps:
        raise UnusableRecord(path, line, "empty solution: 'steps' is an empty list")
    for k, step in enumerate(steps):
        if not isinstance(step, str) or not step.strip():
            raise DataError(path, line, f"steps[{k}] should be a non-empty string, got {step!r}")
    level = get_field(record, "level", int, path, line, optional=True)
    subject = get_field(record, "subject", str, path, line, optional=True)
    source = get_field(record, "source", str, path, line, optional=True) or "jaxstep"
    pid = get_field(record, "id", str, path, line, optional=True) or f"{source}/{split}/{number}"
    return Problem(question, tuple(steps), answer.strip(), source, level, subject, pid)


def _from_gsm8k(record, path, line, pid, keep_calculator) -> Problem:
    question = _text(record, "question", path, line)
    answer_text = _text(record, "answer", path, line)
    steps, answer = steps_lib.split_gsm8k(answer_text, keep_calculator=keep_calculator)
    if answer is None:
        raise UnusableRecord(path, line, "no final answer: the 'answer' field has no '#### N' line")
    if not steps:
        raise UnusableRecord(path, line, "empty solution: no reasoning lines before '####'")
    return Problem(question.strip(), tuple(steps), answer, "gsm8k", None, None, pid)


def _parse_level(value, path, line) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise DataError(path, line, f"field 'level' should be int or 'Level N', got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        m = _LEVEL_RE.match(value)
        if m:
            return int(m.group(1)) if m.group(1).isdigit() else None  # "Level ?" -> None
        if value.strip().isdigit():
            return int(value)
    raise DataError(path, line, f"field 'level' should be int or 'Level N', got {value!r}")


def _from_math(record, path, line, name, split, number, math_steps) -> Problem:
    question = _text(record, "problem", path, line)
    solution = _text(record, "solution", path, line, optional=True)
    answer = get_field(record, "answer", (str, int, float), path, line, optional=True)
    if answer is not None:
        answer = str(answer).strip()
    elif solution is not None:
        answer = steps_lib.last_boxed(solution)
        if answer is None:
            raise UnusableRecord(path, line, "no final answer: no 'answer' field and no \\boxed{} in 'solution'")
        if not answer:
            raise UnusableRecord(path, line, "no final answer: the last \\boxed{} in 'solution' is empty")
    if not answer:
        raise UnusableRecord(path, line, "no final answer: 'answer' is empty")
    steps = steps_lib.split_math(solution, mode=math_steps) if solution else []
    if not steps:
        raise UnusableRecord(path, line, "empty solution: 'solution' is missing or blank")
    level = _parse_level(record.get("level"), path, line)
    subject = get_field(record, "subject", str, path, line, optional=True) or \
        get_field(record, "type", str, path, line, optional=True)
    source = name or ("math500" if "subject" in record and "unique_id" in record else "math")
    pid = get_field(record, "unique_id", str, path, line, optional=True) or f"{source}/{split}/{number}"
    return Problem(question.strip(), tuple(steps), answer, source, level, subject, pid)


def save_jsonl(problems: Iterable[Problem], path: str | os.PathLike) -> None:
    """Writes problems as JSON lines that `load(path)` reads back unchanged."""
    import json  # noqa: PLC0415
    with open(path, "w", encoding="utf-8") as f:
        for problem in problems:
            f.write(json.dumps(problem.to_json()) + "\n")

