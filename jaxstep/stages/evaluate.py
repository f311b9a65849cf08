"""Stage `eval`: greedy (and optional sampled pass@k) accuracy of a policy on test sets.

    python -m jaxstep.main --config=configs/eval.py --workdir=runs/eval \\
        --config.eval.model=runs/sft/export

Decodes every problem of each set in `eval.sources` (synthetic | gsm8k | math | math500
| a local file) with the KV-cache sampler, grades the final answers with
`jaxstep.data.grading.is_correct`, and writes to the workdir:

  samples.jsonl   one line per problem: question, reference answer, response, extracted
                  answer, correct (and the k sampled responses with pass@k)
  report.md       accuracy per set, by MATH level and by subject, a few examples
  *.png           accuracy plots (and the training curves of the model, when its
                  workdir's metrics.jsonl sits next to the export folder)
  summary.json    the numbers (written last: a finished eval is reused)

The accuracy of a samples.jsonl can be recomputed, independent of any model, with
`report_from_samples(path, out_dir)`.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Iterable, Sequence

import jax
import numpy as np

from jaxstep.data import Problem, grading
from jaxstep.metrics import read_metrics
from jaxstep.train import common
from jaxstep.train import report as report_lib

logger = logging.getLogger(__name__)

SAMPLES_FILE = "samples.jsonl"
REPORT_FILE = "report.md"


# ----------------------------------------------------------------------------- rows

def make_rows(greedy: Sequence[common.Decoded], sampled: Sequence[common.Decoded] = (),
              k: int = 0) -> list[dict[str, Any]]:
    """One JSON-able row per problem from greedy results (and `k` samples per problem).

    `sampled` is problem-major as returned by `common.decode_problems(num_samples=k)`.
    """
    if sampled and len(sampled) != k * len(greedy):
        raise ValueError(f"{len(sampled)} sampled results for {len(greedy)} problems and k={k}")
    rows = []
    for i, result in enumerate(greedy):
        p = result.problem
        row = {"id": p.id, "source": p.source, "level": p.level, "subject": p.subject,
               "question": p.question, "reference": p.answer, "response": result.text,
               "answer": result.answer, "correct": bool(result.correct),
               "num_tokens": result.num_tokens, "finished": result.finished}
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
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def read_samples(path: str) -> list[dict[str, Any]]:
    """Rows of a samples.jsonl; errors name the file and line."""
    rows = []
    with open(path, encoding="utf-8") as f:
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


# ----------------------------------------------------------------------------- numbers

def _mean(values) -> float:
    values = list(values)
    return float(np.mean(values)) if values else float("nan")


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy numbers of graded rows, per source (set).

    Returns {"sets": {source: {n, accuracy, answered, finished, mean_tokens,
    [pass_at_k, sample_accuracy, k], by_level: {level: acc}, by_subject: {...}}},
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
        }
        sampled = [r for r in mine if r.get("samples")]
        if sampled:  # over the problems that have samples
            entry["k"] = max(len(r["samples"]) for r in sampled)
            entry["pass_at_k"] = _mean(any(s["correct"] for s in r["samples"]) for r in sampled)
            entry["sample_accuracy"] = _mean(s["correct"] for r in sampled for s in r["samples"])
        if any(r.get("level") is not None for r in mine):
            entry["by_level"] = {g.name: {"n": g.n, "accuracy": g.accuracy}
                                 for g in report_lib.accuracy_by(mine, "level")}
        if any(r.get("subject") for r in mine):
            entry["by_subject"] = {g.name: {"n": g.n, "accuracy": g.accuracy}
                                   for g in report_lib.accuracy_by(mine, "subject")}
        sets[source] = entry
    return {"sets": sets, "overall": {"n": len(rows), "accuracy": _mean(bool(r["correct"]) for r in rows)}}


# ----------------------------------------------------------------------------- report

def accuracy_table_rows(numbers: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """(headers, rows) of the per-set accuracy table."""
    sets = numbers["sets"]
    with_k = any("pass_at_k" in e for e in sets.values())
    headers = ["set", "n", "greedy accuracy", "answered", "finished", "mean tokens"]
    if with_k:
        headers += ["pass@k", "sample accuracy"]
    rows = []
    for source, e in sets.items():
        row = [source, e["n"], report_lib.format_accuracy(e["accuracy"]),
               report_lib.format_accuracy(e["answered"], 0), report_lib.format_accuracy(e["finished"], 0),
               f"{e['mean_tokens']:.0f}"]
        if with_k:
            row += [f"{report_lib.format_accuracy(e['pass_at_k'])} (k={e['k']})" if "pass_at_k" in e else "-",
                    report_lib.format_accuracy(e.get("sample_accuracy", float("nan")))]
        rows.append(row)
    return headers, rows


def _breakdown_tables(numbers: dict[str, Any], field: str, label: str) -> list[str]:
    parts = []
    for source, e in numbers["sets"].items():
        groups = e.get(field)
        if not groups:
            continue
        parts.append(f"**{source}**\n\n" + report_lib.markdown_table(
            [label, "n", "accuracy"],
            [[name, g["n"], report_lib.format_accuracy(g["accuracy"])] for name, g in groups.items()]))
    return parts


def _plots(out_dir: str, numbers: dict[str, Any], label: str, model_path: str = "") -> list[str]:
    paths = []
    sets = numbers["sets"]
    paths.append(report_lib.plot_accuracy_bars(
        {s: e["accuracy"] for s, e in sets.items()}, os.path.join(out_dir, "accuracy.png"),
        title=f"Greedy accuracy: {label}", counts={s: e["n"] for s, e in sets.items()}))
    for field, name in (("by_level", "level"), ("by_subject", "subject")):
        series = {s: {g: v["accuracy"] for g, v in e[field].items()} for s, e in sets.items() if field in e}
        if series:
            paths.append(report_lib.plot_accuracy_bars(
                series if len(series) > 1 else next(iter(series.values())),
                os.path.join(out_dir, f"accuracy_by_{name}.png"),
                title=f"Greedy accuracy by {name}: {label}"))
    metrics_file = os.path.join(os.path.dirname(os.path.abspath(model_path)), "metrics.jsonl") if model_path else ""
    if metrics_file and os.path.isfile(metrics_file):
        curve = report_lib.plot_metric_curves(
            {label: read_metrics(metrics_file)}, ["loss", "eval_accuracy", "token_accuracy"],
            os.path.join(out_dir, "training_curves.png"), title=f"Training of {label}")
        if curve:
            paths.append(curve)
    return paths


def write_report(out_dir: str, rows: Sequence[dict[str, Any]], numbers: dict[str, Any], *,
                 label: str, model_path: str = "", settings: dict[str, Any] | None = None,
                 plots: bool = True, examples: int = 3) -> str:
    """Writes report.md (and the PNG plots) for graded rows; returns the report path."""
    headers, table = accuracy_table_rows(numbers)
    sections = [f"# Evaluation: {label}"]
    meta = [f"- model: `{model_path}`" if model_path else "",
            *(f"- {k}: {v}" for k, v in (settings or {}).items())]
    sections.append("\n".join(m for m in meta if m))
    sections.append("## Accuracy\n\n" + report_lib.markdown_table(headers, table))
    by_level = _breakdown_tables(numbers, "by_level", "level")
    if by_level:
        sections.append("## By level\n\n" + "\n\n".join(by_level))
    by_subject = _breakdown_tables(numbers, "by_subject", "subject")
    if by_subject:
        sections.append("## By subject\n\n" + "\n\n".join(by_subject))
    if plots:
        images = _plots(out_dir, numbers, label, model_path)
        sections.append("## Plots\n\n" + "\n\n".join(report_lib.image_link(p, out_dir) for p in images))
    if examples and rows:
        shown = []
        for row in rows[:examples]:
            verdict = "correct" if row["correct"] else "wrong"
            shown.append(f"**{row.get('id') or row['source']}** ({verdict}; reference `{row['reference']}`)\n\n"
                         f"```\n{row.get('question', '')}\n---\n{row['response']}\n```")
        sections.append("## Examples\n\n" + "\n\n".join(shown))
    return report_lib.write_markdown(os.path.join(out_dir, REPORT_FILE), *sections)


def report_from_samples(samples_path: str, out_dir: str, *, label: str = "samples",
                        plots: bool = True) -> dict[str, Any]:
    """Regrades a samples.jsonl and writes report.md + plots in `out_dir`; returns the numbers."""
    rows = regrade(read_samples(samples_path))
    numbers = summarize(rows)
    os.makedirs(out_dir, exist_ok=True)
    write_report(out_dir, rows, numbers, label=label, plots=plots)
    return numbers


# ----------------------------------------------------------------------------- stage

def _label(config, model_path: str) -> str:
    if config.eval.label:
        return config.eval.label
    path = os.path.normpath(model_path)
    base = os.path.basename(path)
    return os.path.basename(os.path.dirname(path)) if base == common.EXPORT_DIR else base


def evaluate_model(config, model, params, tokenizer, *, mesh=None, key=None,
                   progress: bool = True) -> list[dict[str, Any]]:
    """Decodes and grades every set of `config.eval.sources`; returns the rows."""
    e = config.eval
    mesh = mesh if mesh is not None else common.make_mesh(config)
    key = jax.random.key(config.seed) if key is None else key
    rows: list[dict[str, Any]] = []
    for i, (source, _) in enumerate(common.parse_sources(e.sources)):
        problems: list[Problem] = common.load_source_problems(config, source, e.split, e.limit or None)
        decode = dict(max_prompt_len=config.data.max_prompt_len, max_new_tokens=e.max_new_tokens,
                      batch_size=e.batch_size, mesh=mesh, rules=config.mesh.rules, progress=progress)
        greedy = common.decode_problems(model, params, tokenizer, problems, greedy=True,
                                        desc=f"eval {source}", **decode)
        sampled: list[common.Decoded] = []
        if e.pass_k > 0:
            s = config.sampler
            sampled = common.decode_problems(
                model, params, tokenizer, problems, greedy=False, temperature=s.temperature,
                top_k=s.top_k, top_p=s.top_p, num_samples=e.pass_k, key=jax.random.fold_in(key, i),
                desc=f"pass@{e.pass_k} {source}", **decode)
        rows.extend(make_rows(greedy, sampled, e.pass_k))
    return rows


def run(config, workdir: str) -> dict:
    """Evaluates `config.eval.model` (default `<workdir>/../sft/export`); returns the summary."""
    if common.is_done(workdir):
        logger.info("eval: %s is done; reusing it.", workdir)
        return common.read_summary(workdir)
    common.quiet_library_logs()
    started = time.time()
    e = config.eval
    model_path = e.model or common.default_input(workdir, "sft")
    if os.path.sep in model_path and not os.path.exists(model_path):
        raise FileNotFoundError(f"eval: model folder {model_path} not found (set --config.eval.model)")
    tokenizer = common.get_tokenizer(config, model_path)
    model, params = common.build_model(config, tokenizer, model_path)
    mesh = common.make_mesh(config)
    params = common.shard_params(params, model, mesh, config.mesh.rules)
    rows = evaluate_model(config, model, params, tokenizer, mesh=mesh)
    numbers = summarize(rows)
    label = _label(config, model_path)
    if common.is_main_process():
        os.makedirs(workdir, exist_ok=True)
        write_samples(os.path.join(workdir, SAMPLES_FILE), rows)
        settings = {"decoding": "greedy" + (f"; pass@{e.pass_k} sampled at temperature "
                                            f"{config.sampler.temperature}" if e.pass_k else ""),
                    "max new tokens": e.max_new_tokens, "split": e.split,
                    "problems per set": e.limit or "all"}
        write_report(workdir, rows, numbers, label=label, model_path=model_path,
                     settings=settings, plots=e.plots)
        headers, table = accuracy_table_rows(numbers)
        print(f"\nEvaluation of {label}\n" + report_lib.text_table(headers, table) + "\n", flush=True)
    summary = {"stage": "eval", "model": model_path, "label": label,
               "accuracy": {s: v["accuracy"] for s, v in numbers["sets"].items()},
               "overall_accuracy": numbers["overall"]["accuracy"], "sets": numbers["sets"],
               "report": os.path.join(workdir, REPORT_FILE), "seconds": time.time() - started}
    return common.write_summary(workdir, summary)

