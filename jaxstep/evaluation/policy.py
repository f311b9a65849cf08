"""Policy evaluation: greedy (and sampled pass@k) solutions to eval sets, graded.

    rows = evaluate_model(config, model, params, tokenizer, mesh=mesh)   # one dict per problem
    numbers = summarize(rows)      # accuracy per set, pass@k, by level / subject
    write_samples(path, rows); rows = regrade(read_samples(path))
"""
from __future__ import annotations


import json
from typing import Any, Iterable, Sequence
import jax
import numpy as np
from jaxstep import generation, paths
from jaxstep.data import Problem, formatting, grading, sources
from jaxstep.data.problem import Records
from jaxstep.parallel import mesh as mesh_lib
from jaxstep.evaluation.stats import accuracy_by
from jaxstep.evaluation import hacking
SAMPLES_FILE = "samples.jsonl"


def make_rows(greedy: Sequence[generation.Decoded], sampled: Sequence[generation.Decoded] = (),
              k: int = 0) -> list[dict[str, Any]]:
    """One JSON-able row per problem from greedy results (and `k` samples per problem).

    `sampled` is problem-major as returned by `generation.decode_problems(num_samples=k)`.
    """
    if sampled and len(sampled) != k * len(greedy):
        raise ValueError(f"{len(sampled)} sampled results for {len(greedy)} problems and k={k}")
    rows = []
    for i, result in enumerate(greedy):
        p = result.problem
        row = {"id": p.id, "source": p.source, "level": p.level, "subject": p.subject,
               "question": p.question, "reference": p.answer, "response": result.text,
               "answer": result.answer, "correct": bool(result.correct),
               "num_tokens": result.num_tokens, "finished": result.finished,
               "needed_steps": hacking.needed_steps(p)}
        if result.prompt_truncated:  # only then, so that other rows stay as they were
            row["prompt_truncated"] = True
        if sampled:
            mine = sampled[i * k:(i + 1) * k]
            row["samples"] = [{"response": s.text, "answer": s.answer, "correct": bool(s.correct)}
                              for s in mine]
            row["pass_at_k"] = any(s.correct for s in mine)
        rows.append(row)
    return rows


def regrade(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with `answer`, `correct` (and the samples' and `pass_at_k`) recomputed from
    `response` and `reference` by `grading`; nothing else is trusted."""
    out = []
    for row in rows:
        row = dict(row)
        row["answer"] = grading.extract_answer(row["response"])
        row["correct"] = grading.is_correct(row["response"], str(row["reference"]))
        if row.get("samples"):
            samples = [dict(s, answer=grading.extract_answer(s["response"]),
                            correct=grading.is_correct(s["response"], str(row["reference"])))
                       for s in row["samples"]]
            row["samples"] = samples
            row["pass_at_k"] = any(s["correct"] for s in samples)
        out.append(row)
    return out


def write_samples(path: str, rows: Iterable[dict[str, Any]]) -> str:
    """Writes the rows as JSON lines, whole (`jaxstep.paths.write_text`)."""
    return paths.write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def read_samples(path: str) -> list[dict[str, Any]]:
    """Rows of a samples.jsonl; errors name the file and line."""
    rows = []
    with paths.open(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: invalid JSON ({e.msg})") from e
            missing = [k for k in ("source", "reference", "response") if k not in row]
            if missing:
                raise ValueError(f"{path}:{line_no}: missing field(s) {missing}")
            rows.append(row)
    return rows


def _mean(values) -> float:
    values = list(values)
    return float(np.mean(values)) if values else float("nan")


def prompts_truncated(rows: Iterable[dict[str, Any]]) -> int:
    """How many rows' prompts were cut on the left to `data.max_prompt_len`."""
    return int(sum(bool(r.get("prompt_truncated")) for r in rows))


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy numbers of graded rows, per source (set).

    Returns {"sets": {source: {n, accuracy, answered, finished, mean_tokens,
    prompts_truncated, [pass_at_k, sample_accuracy, k], by_level: {level: acc}, by_subject: {...}}},
    "overall": {n, accuracy}}.
    """
    sets: dict[str, Any] = {}
    for source in dict.fromkeys(r["source"] for r in rows):
        mine = [r for r in rows if r["source"] == source]
        entry: dict[str, Any] = {
            "n": len(mine),
            "correct": int(sum(bool(r["correct"]) for r in mine)),
            "accuracy": _mean(bool(r["correct"]) for r in mine),
            "answered": _mean(r.get("answer") is not None for r in mine),
            "finished": _mean(bool(r.get("finished", True)) for r in mine),
            "mean_tokens": _mean(r.get("num_tokens", 0) for r in mine),
            "prompts_truncated": prompts_truncated(mine),
        }
        sampled = [r for r in mine if r.get("samples")]
        if sampled:  # over the problems that have samples
            entry["k"] = max(len(r["samples"]) for r in sampled)
            entry["pass_at_k"] = _mean(any(s["correct"] for s in r["samples"]) for r in sampled)
            entry["sample_accuracy"] = _mean(s["correct"] for r in sampled for s in r["samples"])
        if any(r.get("level") is not None for r in mine):
            entry["by_level"] = {g.name: {"n": g.n, "accuracy": g.accuracy}
                                 for g in accuracy_by(mine, "level")}
        if any(r.get("subject") for r in mine):
            entry["by_subject"] = {g.name: {"n": g.n, "accuracy": g.accuracy}
                                   for g in accuracy_by(mine, "subject")}
        sets[source] = entry
    return {"sets": sets, "overall": {"n": len(rows), "accuracy": _mean(bool(r["correct"]) for r in rows)}}


def evaluate_model(config, model, params, tokenizer, *, mesh=None, key=None,
                   progress: bool = True) -> list[dict[str, Any]]:
    """Decodes and grades every set of `config.eval.sources`; returns the rows (a
    `Records` list whose `.skipped` counts the unusable records the readers skipped)."""
    e = config.eval
    mesh = mesh if mesh is not None else mesh_lib.make_mesh(config.mesh)
    key = jax.random.key(config.seed) if key is None else key
    rows = Records()
    for i, (source, _) in enumerate(sources.parse_sources(e.sources)):
        problems = sources.load_source_problems(config, source, e.split, e.limit or None)
        rows.skipped += sources.skipped_count(problems)
        decode = dict(max_prompt_len=config.data.max_prompt_len, max_new_tokens=e.max_new_tokens,
                      batch_size=e.batch_size, mesh=mesh, rules=config.mesh.rules, progress=progress,
                      template=formatting.config_template(config),
                      decode_block=config.sampler.decode_block)
        greedy = generation.decode_problems(model, params, tokenizer, problems, greedy=True,
                                        desc=f"eval {source}", **decode)
        sampled: list[generation.Decoded] = []
        if e.pass_k > 0:
            s = config.sampler
            sampled = generation.decode_problems(
                model, params, tokenizer, problems, greedy=False, temperature=s.temperature,
                top_k=s.top_k, top_p=s.top_p, num_samples=e.pass_k, key=jax.random.fold_in(key, i),
                desc=f"pass@{e.pass_k} {source}", **decode)
        rows.extend(make_rows(greedy, sampled, e.pass_k))
    return rows


def greedy_eval(model, params, tokenizer, problems: Sequence[Problem], config, mesh, *,
                detailed: bool = False, desc: str = "eval") -> dict[str, float]:
    """Greedy accuracy of a policy on `problems` (a training stage's periodic eval).

    Returns `eval_accuracy` and `eval_has_answer`; with `detailed`, instead
    `eval_accuracy`, `eval_problems` and the reward-hacking statistics of the responses
    (`eval_<statistic>`, `jaxstep.evaluation.hacking.hacking_stats`). Empty without problems.
    """
    if not problems:
        return {}
    results = generation.decode_problems(
        model, params, tokenizer, problems, max_prompt_len=config.data.max_prompt_len,
        max_new_tokens=config.data.max_response_len, batch_size=config.sampler.batch_size,
        mesh=mesh, rules=config.mesh.rules, greedy=True, progress=False, desc=desc,
        template=formatting.config_template(config), decode_block=config.sampler.decode_block)
    if not detailed:
        return {"eval_accuracy": float(np.mean([r.correct for r in results])),
                "eval_has_answer": float(np.mean([r.answer is not None for r in results]))}
    stats = hacking.hacking_stats([r.text for r in results], correct=[r.correct for r in results],
                                  num_tokens=[r.num_tokens for r in results],
                                  finished=[r.finished for r in results],
                                  has_answer=[r.answer is not None for r in results],
                                  delimiter=config.data.step_delimiter)
    out = {"eval_accuracy": stats.pop("accuracy"), "eval_problems": len(results)}
    out.update({f"eval_{k}": v for k, v in stats.items()})
    return out
