"""The main job's report: accuracy before/after with paired differences, curves and
timings of every stage (`<workdir>/report.md`)."""
from __future__ import annotations

import math
from typing import Any
from jaxstep import paths
from jaxstep.evaluation import hacking
from jaxstep.evaluation.stats import format_pm
from jaxstep.metrics import read_metrics
from jaxstep.reports import markdown as report_lib
from jaxstep.reports.ppo import hacking_table, training_rows
REPORT_FILE = "report.md"


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def timing_table(timings: dict[str, dict[str, Any]]) -> str:
    rows = [[name, t["stage"], "reused" if t["reused"] else f"{t['seconds']:.0f} s"]
            for name, t in timings.items()]
    total = sum(t["seconds"] for t in timings.values())
    rows.append(["total (this run)", "", f"{total:.0f} s"])
    return report_lib.markdown_table(["folder", "stage", "wall time"], rows)


# Reward-hacking statistics of the PPO metrics lines, in panel order.
HACKING_CURVE_KEYS = ("hacked_fraction", "num_steps", "repeated_step_fraction", "empty_step_fraction",
                      "response_length")


def _training_data(runs: dict[str, str]) -> dict[str, list[dict]]:
    """{label: per-iteration rows of `<workdir>/metrics.jsonl`}; runs without the file are left out."""
    data = {}
    for label, workdir in runs.items():
        file = paths.join(workdir, "metrics.jsonl")
        if paths.isfile(file):
            data[label] = training_rows(read_metrics(file))
    return data


def default_window(data: dict[str, list]) -> int:
    """Smoothing window of PPO curves: about 10% of the longest run's iterations, at least 1."""
    return max(1, max((len(rows) for rows in data.values()), default=0) // 10)


def curves(runs: dict[str, str], path: str, keys=("score", "reward", "kl", "rollout_accuracy"), *,
           smooth: int | None = None, reference: dict[str, float] | None = None) -> str | None:
    """Reward/KL curves of PPO runs {label: workdir} in one PNG (one panel per key); returns
    `path`, or None without data.

    Args:
      smooth: moving-average window in iterations (`report_lib.plot_metric_curves`);
        None: `default_window`, 0: raw per-iteration lines only.
      reference: {key: level} drawn as a dashed "SFT" line, e.g. the starting policy's value.
    """
    data = _training_data(runs)
    if not data:
        return None
    window = default_window(data) if smooth is None else smooth
    return report_lib.plot_metric_curves(data, list(keys), path, smooth=window, reference=reference)


def hacking_curves(runs: dict[str, str], path: str, reference: dict[str, float] | None = None, *,
                   smooth: int | None = None) -> str | None:
    """Reward-hacking statistics (`HACKING_CURVE_KEYS`) of PPO runs {label: workdir} during
    training, one panel each, smoothed like `curves`, titled with `hacking.STAT_NAMES`;
    `reference` ({key: level}, e.g. the SFT policy's eval `hacking_stats`) is the dashed
    line. Keys no run logs are left out; returns `path`, or None when none is logged."""
    data = _training_data(runs)
    if not data:
        return None
    window = default_window(data) if smooth is None else smooth
    return report_lib.plot_metric_curves(data, list(HACKING_CURVE_KEYS), path, smooth=window,
                                         reference=reference, titles=hacking.STAT_NAMES)


def accuracy_reference(result: dict) -> dict[str, float] | None:
    """The SFT policy's level for the rollout-accuracy curve: the mean accuracy of its
    sampled eval responses (`sft_sampled_accuracy` of a chain's result), None without."""
    sampled = result.get("sft_sampled_accuracy")
    return {"rollout_accuracy": sampled} if sampled is not None else None


def rollout_reference(sft_hacking: dict) -> dict[str, float]:
    """The SFT policy's levels for the rollout curves: its sampled eval responses' hacked
    share and steps where the eval sampled (rollouts are sampled too), else the greedy ones."""
    reference = dict(sft_hacking)
    for key in ("hacked_fraction", "num_steps"):
        if f"sampled_{key}" in sft_hacking:
            reference[key] = sft_hacking[f"sampled_{key}"]
    return reference


def write_report(root: str, result: dict, delimiter: str) -> str:
    """`<root>/report.md` of a pipeline run (see the module docstring)."""
    c = result
    sections = [f"# Main job: PPO with {c['scheme']} rewards",
                f"SFT policy `{c['policy']}`; reward model `{c['reward_model']}`; "
                f"{c['eval_n']} test problems per eval (greedy decoding)."]
    # Accuracy before/after.
    rows = [["SFT", str(c["sft"]["n"]), format_pm(c["sft"]["accuracy"], c["sft"]["se"])]]
    for run in c["ppo_runs"]:
        rows.append([f"PPO ({run['name']})", str(run["eval"]["n"]),
                     format_pm(run["eval"]["accuracy"], run["eval"]["se"])])
    table = report_lib.markdown_table(["policy", "problems", "accuracy ± s.e."], rows)
    lines = []
    for run in c["ppo_runs"]:
        d = run["difference"]
        lines.append(f"- {run['name']}: PPO − SFT = **{format_pm(d['diff'], d['se'], signed=True)}** "
                     f"(paired s.e. over {d['n']} problems, z = {_fmt(d['z'], 1)}; "
                     f"{d['gained']} problems gained, {d['lost']} lost)")
        d = run.get("sampled_difference") or {}
        if d.get("n"):
            lines.append(f"- {run['name']}, sampled responses (eval.pass_k per problem at the rollout "
                         f"temperature): PPO − SFT = **{format_pm(d['diff'], d['se'], signed=True)}** "
                         f"(paired s.e. over {d['n']} problems, z = {_fmt(d['z'], 1)})")
    if len(c["ppo_runs"]) > 1:
        lines.append(f"- over {len(c['ppo_runs'])} seeds: PPO − SFT = "
                     f"**{format_pm(c['improvement']['mean'], c['improvement']['se'], signed=True)}** "
                     "(mean ± s.e. over seeds)")
    sections.append("## Accuracy before and after PPO\n\n" + table + "\n\n" + "\n".join(lines))
    # Curves.
    workdirs = {r["name"]: r["workdir"] for r in c["ppo_runs"]}
    png = curves(workdirs, paths.join(root, "ppo_curves.png"), reference=accuracy_reference(c))
    if png:
        sections.append("## Reward and KL during PPO\n\n`score`: shaped reward-model + success reward per "
                        "response; `reward`: the same minus the KL penalty; `kl`: summed KL to the SFT "
                        "policy per response; `rollout_accuracy`: sampled responses graded. Solid lines: "
                        "trailing mean over about 10% of the iterations; faint: per iteration; dashed: the SFT "
                        "policy's sampled eval responses.\n\n"
                        + report_lib.image_link(png, root, "reward and KL curves"))
    # Hacking statistics.
    columns = {"SFT (eval)": c["hacking"]["sft"]}
    for run in c["ppo_runs"]:
        columns[f"PPO {run['name']} (eval)"] = run["hacking_eval"]
        columns[f"{run['name']} rollouts, first 10%"] = run["first"]
        columns[f"{run['name']} rollouts, last 10%"] = run["last"]
    sections.append("## Reward-hacking statistics\n\nEval columns: greedy responses to the test problems; "
                    "rollout columns: sampled responses during PPO.\n\n" + hacking_table(columns))
    png = hacking_curves(workdirs, paths.join(root, "hacking_curves.png"),
                         reference=rollout_reference(c["hacking"]["sft"]))
    if png:
        sections.append("Rollout statistics during PPO, smoothed as above; dashed: the SFT policy's sampled "
                        "eval responses (hacked share, steps) or greedy ones (the other statistics).\n\n"
                        + report_lib.image_link(png, root, "reward-hacking statistics during PPO"))
    sections.append("## Stages\n\n" + timing_table(c["timings"]) + "\n\nStage reports: " + ", ".join(
        f"[{name}]({name}/report.md)" for name in c["timings"]
        if paths.isfile(paths.join(root, name, "report.md"))))
    return report_lib.write_markdown(paths.join(root, REPORT_FILE), *sections)
