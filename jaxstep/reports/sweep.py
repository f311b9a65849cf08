"""The sweep's report: one row per reward scheme and advantage estimator (accuracy,
paired differences to SFT, reward, KL, hacking statistics, seconds per PPO iteration),
mean +- s.e. over seeds."""
from __future__ import annotations

import numpy as np
from jaxstep import paths
from jaxstep.evaluation.stats import _estimate, format_pm
from jaxstep.reports import markdown as report_lib
from jaxstep.reports.chain import REPORT_FILE, _fmt, curves, timing_table


def scheme_rows(runs: list[dict]) -> dict[str, dict]:
    """Per run label (the scheme, or `<scheme>_<estimator>` for an estimator other than
    the critic's GAE), the mean over its seeds of every number of the comparison table."""
    out: dict[str, dict] = {}
    label_of = lambda r: r.get("label", r["scheme"])  # noqa: E731 (summaries written before estimators)
    for label in dict.fromkeys(map(label_of, runs)):
        mine = [r for r in runs if label_of(r) == label]
        row = {"scheme": mine[0]["scheme"], "estimator": mine[0].get("estimator", "gae"), "seeds": len(mine),
               "n": mine[0]["eval"]["n"]}
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
        seconds = [r["seconds_per_iteration"] for r in mine if r.get("seconds_per_iteration") is not None]
        row["seconds_per_iteration"] = float(np.mean(seconds)) if seconds else None
        out[label] = row
    return out


COLUMNS = ("scheme", "estimator", "accuracy ± s.e.", "Δ vs SFT ± s.e.", "Δ sampled ± s.e.", "score", "reward", "KL",
           "rollout acc.", "RM score", "steps/resp.", "repeated steps", "empty steps", "tokens/resp.", "s/iter.")


def comparison_table(sft: dict, sft_hacking: dict, rows: dict[str, dict]) -> str:
    """The sweep's Markdown comparison table (SFT first, then one row per scheme and
    estimator)."""
    table = [["SFT (start)", "", format_pm(sft["accuracy"], sft["se"]), "", "", "", "", "", "", "",
              _fmt(sft_hacking["num_steps"], 2), _fmt(sft_hacking["repeated_step_fraction"]),
              _fmt(sft_hacking["empty_step_fraction"]), _fmt(sft_hacking["response_length"], 1), ""]]
    for r in rows.values():
        name = r["scheme"] + (f" ({r['seeds']} seeds)" if r["seeds"] > 1 else "")
        table.append([name, r.get("estimator", "gae"), format_pm(r["accuracy"], r["accuracy_se"]),
                      format_pm(r["diff"], r["diff_se"], signed=True),
                      format_pm(r["sampled_diff"], r["sampled_diff_se"], signed=True) if "sampled_diff" in r else "",
                      _fmt(r["score"]), _fmt(r["reward"]),
                      _fmt(r["kl"]), _fmt(r["rollout_accuracy"]), _fmt(r["rm_score"]),
                      _fmt(r["eval_num_steps"], 2), _fmt(r["eval_repeated_step_fraction"]),
                      _fmt(r["eval_empty_step_fraction"]), _fmt(r["eval_response_length"], 1),
                      _fmt(r.get("seconds_per_iteration"), 2)])
    return report_lib.markdown_table(list(COLUMNS), table)


def write_report(root: str, result: dict) -> str:
    sections = [
        "# Reward-scheme sweep",
        f"Same SFT policy (`{result['policy']}`) and reward models ({', '.join(f'{k.upper()} `{v}`' for k, v in result['reward_models'].items())}) "
        f"for every scheme and advantage estimator ({', '.join(result.get('estimators', ['gae']))}); "
        f"greedy accuracy on the same {result['sft']['n']} test problems.",
        "## Comparison\n\n" + comparison_table(result["sft"], result["sft_hacking"], result["schemes"]),
        "Columns: accuracy with its binomial s.e. (over seeds: mean ± s.e. of the mean); Δ: "
        "greedy accuracy minus the SFT policy's on the same problems, with the paired s.e.; Δ sampled: "
        "the same for sampled responses (eval.pass_k per problem at the rollout temperature); score: "
        "shaped reward-model + success reward per response, reward: the same minus the KL "
        "penalty, KL: summed KL to the SFT policy per response, rollout acc., RM score: mean "
        "over the last 10% of PPO iterations (sampled responses); steps/resp., repeated and "
        "empty (no number or operation) step fractions, tokens/resp.: greedy test responses; "
        "estimator: `ppo.advantage` (gae: the critic's GAE; the others are critic-free, "
        "`jaxstep.rl.advantages`); s/iter.: median seconds per PPO iteration (rollout, scoring, "
        "update; the first, compiling iteration left out). "
        "Scores of different schemes are on different scales (Clip and Clip-Delta are <= 0 "
        "by design).",
    ]
    png = curves({r["name"]: r["workdir"] for r in result["runs"]}, paths.join(root, "sweep_curves.png"))
    if png:
        sections.append("## Reward and KL during PPO\n\n" + report_lib.image_link(png, root, "curves"))
    sections.append("## Stages\n\n" + timing_table(result["timings"]))
    return report_lib.write_markdown(paths.join(root, REPORT_FILE), *sections)
