"""A reward-model stage's report: step/outcome AUC, flaw detection, best-of-N."""
from __future__ import annotations

from jaxstep import paths
from jaxstep.reports import markdown as report_lib
from jaxstep.rm.evaluation import standard_error
from jaxstep.metrics import read_metrics
def _fmt(x: float, digits: int = 3) -> str:
    return "-" if x is None or x != x else f"{x:.{digits}f}"


def _acc(x: float, n: int) -> str:
    if x is None or x != x:
        return "-"
    return f"{report_lib.format_accuracy(x)} ± {100 * standard_error(x, n):.1f}"


def report_sections(result: dict) -> list[str]:
    """Markdown sections (tables) of an `evaluate` result."""
    P, N, ns = result["problems"], result["n"], result["ns"]
    sections = []
    rows = []
    for name, m in result["models"].items():
        if "step_auc" in m:
            rows.append([name, "held-out samples", m["sample_steps"], _fmt(m["sample_step_positive"], 2),
                         _fmt(m["step_auc"]), report_lib.format_accuracy(m["step_accuracy"])])
        if "records_step_auc" in m:
            rows.append([name, "held-out records", m["records_steps"], "-", _fmt(m["records_step_auc"]),
                         report_lib.format_accuracy(m["records_step_accuracy"])])
    if rows:
        sections.append("## Step-level\n\n" + report_lib.markdown_table(
            ["model", "set", "steps", "positive", "step AUC", "step accuracy"], rows))
    rows = []
    for name, m in result["models"].items():
        for how, auc in m.get("outcome_auc", {}).items():
            rows.append([name, how, _fmt(auc), _fmt(m["within_problem_auc"][how])])
        if "records_outcome_auc" in m:
            rows.append([name, "held-out records", _fmt(m["records_outcome_auc"]), "-"])
    if rows:
        sections.append("## Outcome AUC (score vs final-answer correctness)\n\n"
                        + report_lib.markdown_table(["model", "score", "AUC", "within-problem AUC"], rows)
                        + "\n\nWithin-problem AUC: how often a correct sample outscores a wrong sample "
                        "of the same problem (what best-of-N relies on).")
    kinds = list(dict.fromkeys(k for m in result["models"].values() for k in m.get("flaw_detection", {})))
    if kinds:
        rows = [[name] + [_fmt(m["flaw_detection"].get(k, float("nan"))) for k in kinds]
                for name, m in result["models"].items() if "flaw_detection" in m]
        sections.append("## Flaw detection on minimal pairs\n\n" + report_lib.markdown_table(["model"] + kinds, rows)
                        + "\n\nEach held-out problem's reference solution against the same solution with one "
                        "flaw (a wrong result, a wrong operand): how often the "
                        "reference outscores it at the flawed step (ORM: the outcome score). 0.5 is chance: "
                        "a reward model near it judges how a problem looks, not whether the step is right.")
    if P:
        headers = ["selection"] + [f"best of {n}" for n in ns]
        rows = []
        for name, m in result["models"].items():
            for how, accs in m.get("best_of", {}).items():
                label = name if how == "orm" else f"{name}-{how}"
                rows.append([label] + [_acc(accs[n], P) for n in ns])
        b = result["baselines"]
        rows.append(["majority vote"] + [_acc(b["majority"][n], P) for n in ns])
        rows.append(["random pick"] + [_acc(b["random"][n], P) for n in ns])
        rows.append(["pass@n (oracle)"] + [_acc(b["pass"][n], P) for n in ns])
        text = (f"## Best-of-N reranking ({P} held-out problems, {N} samples each)\n\n"
                + report_lib.markdown_table(headers, rows))
        if "greedy" in b:
            text += f"\n\nGreedy decoding of the generator: {_acc(b['greedy'], P)}."
        paired = [f"{name if how == 'orm' else f'{name}-{how}'} {100 * d:+.1f}% ± {100 * se:.1f}%"
                  for name, m in result["models"].items() for how, (d, se) in m.get("minus_greedy", {}).items()]
        if paired:
            text += (f" Best of {N} minus greedy, paired over the same problems: " + "; ".join(paired) + ".")
        text += "\n\nAccuracy ± its binomial standard error over problems; ties go to the first sample."
        sections.append(text)
    return sections


def write_report(path: str, result: dict, *, title: str = "Reward model", info: dict | None = None,
                 metrics_path: str | None = None) -> str:
    """Writes `report.md` (tables, plus loss/accuracy and best-of-N plots as PNG)."""
    folder = paths.parent(path)
    parts = [f"# {title}"]
    if info:
        keep = {k: v for k, v in info.items() if not isinstance(v, (dict, list))}  # lists: per-problem data
        rows = [[k, _fmt(v) if isinstance(v, float) else v] for k, v in sorted(keep.items())]
        for k, v in sorted(info.items()):
            if isinstance(v, dict):
                rows.extend([[f"{k}.{kk}", _fmt(vv) if isinstance(vv, float) else vv] for kk, vv in v.items()])
        parts.append("## Data\n\n" + report_lib.markdown_table(["field", "value"], rows))
    parts.extend(report_sections(result))
    if metrics_path and paths.isfile(metrics_path):
        png = report_lib.plot_metric_curves({"": read_metrics(metrics_path)}, ["loss", "accuracy"],
                                            paths.join(folder, "training.png"), title="training")
        if png:
            parts.append("## Training\n\n" + report_lib.image_link(png, folder, "training curves"))
    if result["problems"]:
        series = {}
        for name, m in result["models"].items():
            for how, accs in m.get("best_of", {}).items():
                series[name if how == "orm" else f"{name}-{how}"] = accs[result["n"]]
        series["majority"] = result["baselines"]["majority"][result["n"]]
        series["random"] = result["baselines"]["random"][result["n"]]
        if "greedy" in result["baselines"]:
            series["greedy"] = result["baselines"]["greedy"]
        png = report_lib.plot_accuracy_bars(series, paths.join(folder, "best_of_n.png"),
                                            title=f"best of {result['n']}")
        parts.append(report_lib.image_link(png, folder, "best-of-N accuracy"))
    return report_lib.write_markdown(path, *parts)
