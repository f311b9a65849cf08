"""Stage `pipeline`, the main job: SFT -> reward model -> PPO -> evals -> report.

    python -m jaxstep.main --config=configs/ppo_prm_max.py [--workdir=runs/main]

Runs every stage of the chain in its own folder under the workdir, with the config's
sections (only `stage` and the paths between stages change):

  <workdir>/sft        stage sft (unless ppo.policy is given)
  <workdir>/<orm|prm>  stage orm/prm on samples of the SFT policy (unless ppo.reward_model is given)
  <workdir>/ppo        stage ppo with ppo.scheme (ppo_seed1, ppo_seed2, ... with pipeline.seeds > 1)
  <workdir>/eval_sft   greedy eval of the SFT policy on pipeline.eval_limit test problems
  <workdir>/eval_ppo   the same for the PPO policy (eval_ppo_seed1, ...)
  <workdir>/report.md  accuracy before/after with standard errors (and the paired
                       difference), reward and KL curves (PNG), reward-hacking statistics,
                       stage timings
  <workdir>/summary.json

A stage whose folder holds summary.json is reused, not recomputed, so an interrupted
chain continues where it stopped (and a stage killed midway resumes from its Orbax
checkpoint). `jaxstep.train.sweep` runs the same pieces for several schemes.
"""
from __future__ import annotations

import copy
import logging
import math
import os
import time
from typing import Any, Sequence

import numpy as np

from jaxstep.metrics import read_metrics
from jaxstep.train import common, hacking
from jaxstep.train import report as report_lib

logger = logging.getLogger(__name__)

REPORT_FILE = "report.md"


# ----------------------------------------------------------------------------- stages

def stage_config(config, stage: str):
    """A copy of `config` for one stage of the chain (same sections, `stage` set)."""
    c = copy.deepcopy(config)
    c.stage = stage
    return c


class Chain:
    """Runs (or reuses) the stages of a chain under one root folder and times them."""

    def __init__(self, config, root: str):
        self.config = config
        self.root = os.path.abspath(root)
        self.timings: dict[str, dict[str, Any]] = {}

    def _run(self, name: str, module, config) -> dict:
        workdir = os.path.join(self.root, name)
        reused = common.is_done(workdir)
        started = time.time()
        summary = module.run(config, workdir)
        if not summary or summary.get("done") is False:
            raise RuntimeError(f"pipeline: stage {config.stage} in {workdir} stopped before the end "
                               "(preempted?); run the same command again to resume it")
        self.timings[name] = {"stage": config.stage, "reused": reused,
                              "seconds": 0.0 if reused else time.time() - started}
        logger.info("pipeline: %s %s (%.0f s)", name, "reused" if reused else "done",
                    self.timings[name]["seconds"])
        return summary

    def sft(self) -> str:
        """The SFT policy folder: `ppo.policy`, else the export of `<root>/sft`."""
        if self.config.ppo.policy:
            return self.config.ppo.policy
        from jaxstep.train import sft  # noqa: PLC0415
        summary = self._run("sft", sft, stage_config(self.config, "sft"))
        return summary.get("export") or os.path.join(self.root, "sft", common.EXPORT_DIR)

    def reward_model(self, kind: str, policy: str, given: str = "") -> str:
        """The reward-model folder: `given`, else the export of `<root>/<kind>`, trained on
        samples of `policy`."""
        if given:
            return given
        from jaxstep.train import reward_models  # noqa: PLC0415
        c = stage_config(self.config, kind)
        c.rm.kind = kind
        c.rm.generator = policy
        summary = self._run(kind, reward_models, c)
        return summary.get("export") or os.path.join(self.root, kind, common.EXPORT_DIR)

    def ppo(self, name: str, *, scheme: str, policy: str, reward_model: str, seed: int) -> dict:
        from jaxstep.train import ppo  # noqa: PLC0415
        c = stage_config(self.config, "ppo")
        c.ppo.scheme = scheme
        c.ppo.policy = policy
        c.ppo.reward_model = reward_model
        c.seed = seed
        return self._run(name, ppo, c)

    def evaluate(self, name: str, model: str, label: str) -> tuple[dict, list[dict]]:
        """Greedy eval of `model` in `<root>/<name>`; returns (summary, samples rows)."""
        from jaxstep.train import evaluate  # noqa: PLC0415
        c = stage_config(self.config, "eval")
        c.eval.model = model
        c.eval.label = label
        c.eval.limit = self.config.pipeline.eval_limit
        c.eval.batch_size = self.config.pipeline.eval_batch_size
        summary = self._run(name, evaluate, c)
        rows = evaluate.read_samples(os.path.join(self.root, name, evaluate.SAMPLES_FILE))
        return summary, rows


# ----------------------------------------------------------------------------- statistics

def accuracy_with_error(rows: Sequence[dict]) -> dict[str, float]:
    """Accuracy of graded rows with its binomial standard error: {n, accuracy, se}."""
    n = len(rows)
    acc = float(np.mean([bool(r["correct"]) for r in rows])) if n else float("nan")
    return {"n": n, "accuracy": acc, "se": math.sqrt(acc * (1 - acc) / n) if n else float("nan")}


def _row_key(row: dict):
    return (row.get("source"), row.get("id") or row.get("question"))


def greedy_correct(row: dict) -> float:
    """1.0 if the row's greedy response is right."""
    return float(bool(row["correct"]))


def sampled_correct(row: dict) -> float | None:
    """The share of the row's sampled responses (eval.pass_k) that are right; None without samples."""
    samples = row.get("samples") or []
    return float(np.mean([bool(s["correct"]) for s in samples])) if samples else None


def paired_difference(before: Sequence[dict], after: Sequence[dict], value=greedy_correct) -> dict[str, float]:
    """Accuracy difference after - before on the problems both graded, with the standard
    error of the paired difference (sqrt(var(d) / n), d = value(after) - value(before)
    per problem: in {-1, 0, 1} for greedy correctness).

    Returns {n, diff, se, z, gained (after better), lost (after worse)}.
    """
    a = {_row_key(r): value(r) for r in before}
    b = {_row_key(r): value(r) for r in after}
    keys = [k for k in a if k in b and a[k] is not None and b[k] is not None]
    if not keys:
        return {"n": 0, "diff": float("nan"), "se": float("nan"), "z": float("nan"), "gained": 0, "lost": 0}
    d = np.array([b[k] - a[k] for k in keys], np.float64)
    n = len(d)
    se = math.sqrt(d.var(ddof=1) / n) if n > 1 else float("nan")
    diff = float(d.mean())
    return {"n": n, "diff": diff, "se": se, "z": diff / se if se and se > 0 else float("nan"),
            "gained": int((d > 0).sum()), "lost": int((d < 0).sum())}


def eval_hacking_stats(rows: Sequence[dict], delimiter: str) -> dict[str, float]:
    """Reward-hacking statistics of greedy eval responses (samples.jsonl rows)."""
    return hacking.hacking_stats([r["response"] for r in rows], correct=[r["correct"] for r in rows],
                                 num_tokens=[r.get("num_tokens", 0) for r in rows],
                                 finished=[r.get("finished", True) for r in rows],
                                 has_answer=[r.get("answer") is not None for r in rows],
                                 delimiter=delimiter)


def format_pm(value: float, se: float, percent: bool = True, signed: bool = False) -> str:
    """0.4123, 0.0155 -> "41.2% ± 1.6%"."""
    if value is None or not math.isfinite(value):
        return "-"
    sign = "+" if signed else ""
    if percent:
        return f"{100 * value:{sign}.1f}% ± {100 * se:.1f}%" if math.isfinite(se) else f"{100 * value:{sign}.1f}%"
    return f"{value:{sign}.3f} ± {se:.3f}" if math.isfinite(se) else f"{value:{sign}.3f}"


def mean_and_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (NaN se for one value)."""
    values = np.asarray(values, np.float64)
    if values.size == 0:
        return float("nan"), float("nan")
    se = float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else float("nan")
    return float(values.mean()), se


# ----------------------------------------------------------------------------- report

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
    from jaxstep.train.ppo import training_rows  # noqa: PLC0415
    data = {}
    for label, workdir in runs.items():
        file = os.path.join(workdir, "metrics.jsonl")
        if os.path.isfile(file):
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
    png = curves({r["name"]: r["workdir"] for r in c["ppo_runs"]}, os.path.join(root, "ppo_curves.png"))
    if png:
        sections.append("## Reward and KL during PPO\n\n`score`: shaped reward-model + success reward per "
                        "response; `reward`: the same minus the KL penalty; `kl`: summed KL to the SFT "
                        "policy per response; `rollout_accuracy`: sampled responses graded.\n\n"
                        + report_lib.image_link(png, root, "reward and KL curves"))
    # Hacking statistics.
    from jaxstep.train.ppo import hacking_table  # noqa: PLC0415
    columns = {"SFT (eval)": c["hacking"]["sft"]}
    for run in c["ppo_runs"]:
        columns[f"PPO {run['name']} (eval)"] = run["hacking_eval"]
        columns[f"{run['name']} rollouts, first 10%"] = run["first"]
        columns[f"{run['name']} rollouts, last 10%"] = run["last"]
    sections.append("## Reward-hacking statistics\n\nEval columns: greedy responses to the test problems; "
                    "rollout columns: sampled responses during PPO.\n\n" + hacking_table(columns))
    sections.append("## Stages\n\n" + timing_table(c["timings"]) + "\n\nStage reports: " + ", ".join(
        f"[{name}]({name}/report.md)" for name in c["timings"]
        if os.path.isfile(os.path.join(root, name, "report.md"))))
    return report_lib.write_markdown(os.path.join(root, REPORT_FILE), *sections)


# ----------------------------------------------------------------------------- stage

def ppo_run_result(chain: Chain, name: str, summary: dict, eval_name: str, sft_rows, delimiter) -> dict:
    """Evaluates one finished PPO run and compares it with the SFT rows."""
    eval_summary, rows = chain.evaluate(eval_name, summary["export"], f"PPO {name}")
    return {"name": name, "workdir": os.path.join(chain.root, name), "scheme": summary.get("scheme"),
            "eval": accuracy_with_error(rows), "difference": paired_difference(sft_rows, rows),
            "sampled_difference": paired_difference(sft_rows, rows, sampled_correct),
            "hacking_eval": eval_hacking_stats(rows, delimiter), "first": summary.get("first", {}),
            "last": summary.get("last", {}), "eval_workdir": os.path.join(chain.root, eval_name),
            "kl_coef_final": summary.get("kl_coef_final")}


def run(config, workdir: str) -> dict:
    """Runs (or reuses) the whole chain in `workdir`; returns the summary."""
    if common.is_done(workdir):
        logger.info("pipeline: %s is done; reusing it.", workdir)
        return common.read_summary(workdir)
    from jaxstep.train.ppo import reward_model_kind  # noqa: PLC0415
    started = time.time()
    common.quiet_library_logs()
    chain = Chain(config, workdir)
    p, delimiter = config.ppo, config.data.step_delimiter
    kind = reward_model_kind(p.scheme)
    policy = chain.sft()
    reward_model = chain.reward_model(kind, policy, p.reward_model)
    _, sft_rows = chain.evaluate("eval_sft", policy, "SFT")
    runs = []
    for i in range(max(1, config.pipeline.seeds)):
        suffix = "" if i == 0 else f"_seed{i}"
        summary = chain.ppo(f"ppo{suffix}", scheme=p.scheme, policy=policy, reward_model=reward_model,
                            seed=config.seed + i)
        runs.append(ppo_run_result(chain, f"ppo{suffix}", summary, f"eval_ppo{suffix}", sft_rows, delimiter))
    improvement = mean_and_se([r["eval"]["accuracy"] - accuracy_with_error(sft_rows)["accuracy"] for r in runs])
    result = {"stage": "pipeline", "scheme": p.scheme, "policy": policy, "reward_model": reward_model,
              "eval_n": len(sft_rows), "sft": accuracy_with_error(sft_rows), "ppo_runs": runs,
              "improvement": {"mean": improvement[0], "se": improvement[1]},
              "hacking": {"sft": eval_hacking_stats(sft_rows, delimiter)},
              "timings": chain.timings, "seconds": time.time() - started}
    if common.is_main_process():
        result["report"] = write_report(chain.root, result, delimiter)
        d, ds = runs[0]["difference"], runs[0].get("sampled_difference") or {}
        sampled = (f"; sampled PPO - SFT {format_pm(ds['diff'], ds['se'], signed=True)}" if ds.get("n") else "")
        print(f"\nSFT accuracy {format_pm(result['sft']['accuracy'], result['sft']['se'])}; "
              f"PPO accuracy {format_pm(runs[0]['eval']['accuracy'], runs[0]['eval']['se'])}; "
              f"PPO - SFT {format_pm(d['diff'], d['se'], signed=True)} (greedy, paired, n={d['n']}){sampled}; "
              f"{result['seconds']:.0f} s. Report: {result['report']}\n", flush=True)
    return common.write_summary(workdir, result)
