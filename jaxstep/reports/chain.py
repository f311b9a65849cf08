"""The main job's report: accuracy before/after with paired differences, curves and
timings of every stage (`<workdir>/report.md`)."""
from __future__ import annotations

import math
from typing import Any
from jaxstep import paths
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


def curves(runs: dict[str, str], path: str, keys=("score", "reward", "kl", "rollout_accuracy")) -> str | None:
    """Reward/KL curves of PPO runs {label: workdir} in one PNG."""
    data = {}
    for label, workdir in runs.items():
        file = paths.join(workdir, "metrics.jsonl")
        if paths.isfile(file):
            data[label] = training_rows(read_metrics(file))
    return report_lib.plot_metric_curves(data, list(keys), path) if data else None


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
    png = curves({r["name"]: r["workdir"] for r in c["ppo_runs"]}, paths.join(root, "ppo_curves.png"))
    if png:
        sections.append("## Reward and KL during PPO\n\n`score`: shaped reward-model + success reward per "
                        "response; `reward`: the same minus the KL penalty; `kl`: summed KL to the SFT "
                        "policy per response; `rollout_accuracy`: sampled responses graded.\n\n"
                        + report_lib.image_link(png, root, "reward and KL curves"))
    # Hacking statistics.
    columns = {"SFT (eval)": c["hacking"]["sft"]}
    for run in c["ppo_runs"]:
        columns[f"PPO {run['name']} (eval)"] = run["hacking_eval"]
        columns[f"{run['name']} rollouts, first 10%"] = run["first"]
        columns[f"{run['name']} rollouts, last 10%"] = run["last"]
    sections.append("## Reward-hacking statistics\n\nEval columns: greedy responses to the test problems; "
                    "rollout columns: sampled responses during PPO.\n\n" + hacking_table(columns))
    sections.append("## Stages\n\n" + timing_table(c["timings"]) + "\n\nStage reports: " + ", ".join(
        f"[{name}]({name}/report.md)" for name in c["timings"]
        if paths.isfile(paths.join(root, name, "report.md"))))
    return report_lib.write_markdown(paths.join(root, REPORT_FILE), *sections)
