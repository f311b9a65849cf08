"""An eval stage's report: accuracy tables per set, by level and subject, PNG plots."""
from __future__ import annotations

from typing import Any, Sequence
from jaxstep import paths
from jaxstep.evaluation.policy import read_samples, regrade, summarize
from jaxstep.metrics import read_metrics
from jaxstep.reports import markdown as report_lib
REPORT_FILE = "report.md"


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
    pngs = []
    sets = numbers["sets"]
    pngs.append(report_lib.plot_accuracy_bars(
        {s: e["accuracy"] for s, e in sets.items()}, paths.join(out_dir, "accuracy.png"),
        title=f"Greedy accuracy: {label}", counts={s: e["n"] for s, e in sets.items()}))
    for field, name in (("by_level", "level"), ("by_subject", "subject")):
        series = {s: {g: v["accuracy"] for g, v in e[field].items()} for s, e in sets.items() if field in e}
        if series:
            pngs.append(report_lib.plot_accuracy_bars(
                series if len(series) > 1 else next(iter(series.values())),
                paths.join(out_dir, f"accuracy_by_{name}.png"),
                title=f"Greedy accuracy by {name}: {label}"))
    metrics_file = paths.join(paths.parent(model_path), "metrics.jsonl") if model_path else ""
    if metrics_file and paths.isfile(metrics_file):
        curve = report_lib.plot_metric_curves(
            {label: read_metrics(metrics_file)}, ["loss", "eval_accuracy", "token_accuracy"],
            paths.join(out_dir, "training_curves.png"), title=f"Training of {label}")
        if curve:
            pngs.append(curve)
    return pngs


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
    return report_lib.write_markdown(paths.join(out_dir, REPORT_FILE), *sections)


def report_from_samples(samples_path: str, out_dir: str, *, label: str = "samples",
                        plots: bool = True) -> dict[str, Any]:
    """Regrades a samples.jsonl and writes report.md + plots in `out_dir`; returns the numbers."""
    rows = regrade(read_samples(samples_path))
    numbers = summarize(rows)
    paths.makedirs(out_dir)
    write_report(out_dir, rows, numbers, label=label, plots=plots)
    return numbers
