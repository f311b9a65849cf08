"""Stage `sweep`: several reward schemes on the same SFT policy and reward models.

    python -m jaxstep.main --config=configs/sweep.py [--workdir=runs/sweep]
    python -m jaxstep.main --config=configs/sweep.py --config.sweep.schemes=orm,prm_max,clip_delta

The paper's experiment in miniature. In the workdir (every stage reused when its
summary.json exists):

  sft/                  the SFT policy (or `ppo.policy`)
  prm/, orm/            the reward models the schemes need, trained on samples of that
                        SFT policy (or `sweep.prm` / `sweep.orm`)
  eval_sft/             greedy eval of the SFT policy
  ppo_<scheme>/         one PPO run per scheme (ppo_<scheme>_seed1, ... with sweep.seeds > 1)
  eval_<scheme>/        greedy eval of each final policy on the same test problems
  report.md             one comparison table: accuracy (with standard error and the paired
                        difference to SFT), reward, KL and reward-hacking statistics per
                        scheme; reward/KL curves of all schemes (PNG)
  summary.json
"""
from __future__ import annotations

import logging
import os
import time

import numpy as np

from jaxstep.train import common
from jaxstep.train import report as report_lib
from jaxstep.train.pipeline import (Chain, accuracy_with_error, curves, eval_hacking_stats, format_pm,
                                    mean_and_se, ppo_run_result, timing_table, _fmt)

logger = logging.getLogger(__name__)

REPORT_FILE = "report.md"


def parse_schemes(spec: str) -> list[str]:
    """"orm, prm_max" -> ["orm", "prm_max"], validated, duplicates dropped."""
    from jaxstep.train.ppo import SCHEMES  # noqa: PLC0415
    schemes = list(dict.fromkeys(s.strip() for s in spec.split(",") if s.strip()))
    bad = [s for s in schemes if s not in SCHEMES]
    if bad or not schemes:
        raise ValueError(f"sweep.schemes={spec!r}: unknown scheme(s) {bad}; expected a comma list of {SCHEMES}")
    return schemes


def _estimate(results: list[dict], value: str) -> tuple[float, float]:
    """One run: its value and s.e.; several seeds: the mean and the s.e. over seeds."""
    if len(results) == 1:
        return results[0][value], results[0]["se"]
    return mean_and_se([r[value] for r in results])


def scheme_rows(runs: list[dict]) -> dict[str, dict]:
    """Per scheme, the mean over its seeds of every number of the comparison table."""
    out: dict[str, dict] = {}
    for scheme in dict.fromkeys(r["scheme"] for r in runs):
        mine = [r for r in runs if r["scheme"] == scheme]
        row = {"scheme": scheme, "seeds": len(mine), "n": mine[0]["eval"]["n"]}
        sampled = [r["sampled_difference"] for r in mine if (r.get("sampled_difference") or {}).get("n")]
        for name, results, value in (("accuracy", [r["eval"] for r in mine], "accuracy"),
                                     ("diff", [r["difference"] for r in mine], "diff"),
                                     ("sampled_diff", sampled, "diff")):
            if results:
                row[name], row[f"{name}_se"] = _estimate(results, value)
        for source, key in (("last", "score"), ("last", "reward"), ("last", "kl"), ("last", "rollout_accuracy"),
                            ("last", "rm_score")):
            values = [r[source].get(key) for r in mine if r[source].get(key) is not None]
            row[key] = float(np.mean(values)) if values else None
        for key in ("num_steps", "repeated_step_fraction", "empty_step_fraction", "response_length"):
            row[f"eval_{key}"] = float(np.mean([r["hacking_eval"][key] for r in mine]))
        out[scheme] = row
    return out


COLUMNS = ("scheme", "accuracy ± s.e.", "Δ vs SFT ± s.e.", "Δ sampled ± s.e.", "score", "reward", "KL", "rollout acc.",
           "RM score", "steps/resp.", "repeated steps", "empty steps", "tokens/resp.")


def comparison_table(sft: dict, sft_hacking: dict, rows: dict[str, dict]) -> str:
    """The sweep's Markdown comparison table (SFT first, then one row per scheme)."""
    table = [["SFT (start)", format_pm(sft["accuracy"], sft["se"]), "", "", "", "", "", "", "",
              _fmt(sft_hacking["num_steps"], 2), _fmt(sft_hacking["repeated_step_fraction"]),
              _fmt(sft_hacking["empty_step_fraction"]), _fmt(sft_hacking["response_length"], 1)]]
    for r in rows.values():
        name = r["scheme"] + (f" ({r['seeds']} seeds)" if r["seeds"] > 1 else "")
        table.append([name, format_pm(r["accuracy"], r["accuracy_se"]),
                      format_pm(r["diff"], r["diff_se"], signed=True),
                      format_pm(r["sampled_diff"], r["sampled_diff_se"], signed=True) if "sampled_diff" in r else "",
                      _fmt(r["score"]), _fmt(r["reward"]),
                      _fmt(r["kl"]), _fmt(r["rollout_accuracy"]), _fmt(r["rm_score"]),
                      _fmt(r["eval_num_steps"], 2), _fmt(r["eval_repeated_step_fraction"]),
                      _fmt(r["eval_empty_step_fraction"]), _fmt(r["eval_response_length"], 1)])
    return report_lib.markdown_table(list(COLUMNS), table)


def write_report(root: str, result: dict) -> str:
    sections = [
        "# Reward-scheme sweep",
        f"Same SFT policy (`{result['policy']}`) and reward models ({', '.join(f'{k.upper()} `{v}`' for k, v in result['reward_models'].items())}) "
        f"for every scheme; greedy accuracy on the same {result['sft']['n']} test problems.",
        "## Comparison\n\n" + comparison_table(result["sft"], result["sft_hacking"], result["schemes"]),
        "Columns: accuracy with its binomial s.e. (over seeds: mean ± s.e. of the mean); Δ: "
        "greedy accuracy minus the SFT policy's on the same problems, with the paired s.e.; Δ sampled: "
        "the same for sampled responses (eval.pass_k per problem at the rollout temperature); score: "
        "shaped reward-model + success reward per response, reward: the same minus the KL "
        "penalty, KL: summed KL to the SFT policy per response, rollout acc., RM score: mean "
        "over the last 10% of PPO iterations (sampled responses); steps/resp., repeated and "
        "empty (no number or operation) step fractions, tokens/resp.: greedy test responses. "
        "Scores of different schemes are on different scales (Clip and Clip-Delta are <= 0 "
        "by design).",
    ]
    png = curves({r["name"]: r["workdir"] for r in result["runs"]}, os.path.join(root, "sweep_curves.png"))
    if png:
        sections.append("## Reward and KL during PPO\n\n" + report_lib.image_link(png, root, "curves"))
    sections.append("## Stages\n\n" + timing_table(result["timings"]))
    return report_lib.write_markdown(os.path.join(root, REPORT_FILE), *sections)


def run(config, workdir: str) -> dict:
    """Runs (or reuses) the sweep in `workdir`; returns the summary."""
    if common.is_done(workdir):
        logger.info("sweep: %s is done; reusing it.", workdir)
        return common.read_summary(workdir)
    from jaxstep.train.ppo import reward_model_kind  # noqa: PLC0415
    started = time.time()
    common.quiet_library_logs()
    s, delimiter = config.sweep, config.data.step_delimiter
    schemes = parse_schemes(s.schemes)
    chain = Chain(config, workdir)
    policy = chain.sft()
    given = {"prm": s.prm, "orm": s.orm}
    reward_models = {}
    for kind in dict.fromkeys(reward_model_kind(x) for x in schemes):
        reward_models[kind] = chain.reward_model(kind, policy, given[kind])
    _, sft_rows = chain.evaluate("eval_sft", policy, "SFT")
    runs = []
    for scheme in schemes:
        for i in range(max(1, s.seeds)):
            suffix = "" if i == 0 else f"_seed{i}"
            name = f"ppo_{scheme}{suffix}"
            summary = chain.ppo(name, scheme=scheme, policy=policy,
                                reward_model=reward_models[reward_model_kind(scheme)], seed=config.seed + i)
            runs.append(ppo_run_result(chain, name, summary, f"eval_{scheme}{suffix}", sft_rows, delimiter))
    result = {"stage": "sweep", "policy": policy, "reward_models": reward_models,
              "sft": accuracy_with_error(sft_rows), "sft_hacking": eval_hacking_stats(sft_rows, delimiter),
              "runs": runs, "schemes": scheme_rows(runs), "timings": chain.timings,
              "seconds": time.time() - started}
    if common.is_main_process():
        result["report"] = write_report(chain.root, result)
        print("\n" + comparison_table(result["sft"], result["sft_hacking"], result["schemes"]) + "\n", flush=True)
    return common.write_summary(workdir, result)
