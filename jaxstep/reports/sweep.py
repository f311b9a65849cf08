"""The sweep's report: one row per reward scheme and advantage estimator (accuracy,
paired differences to SFT, reward, KL, hacking statistics, seconds per PPO iteration),
mean +- s.e. over seeds."""
from __future__ import annotations

import numpy as np
from jaxstep import paths
from jaxstep.evaluation.stats import _estimate, format_pm
from jaxstep.reports import markdown as report_lib
from jaxstep.reports.chain import (REPORT_FILE, _fmt, accuracy_reference, curves, hacking_curves,
                                   rollout_reference, timing_table)


def scheme_rows(runs: list[dict]) -> dict[str, dict]:
    """Per run label (the scheme, or `<scheme>_<estimator>` for an estimator other than
    the critic's GAE), the mean over its seeds of every number of the comparison table."""
    out: dict[str, dict] = {}
    label_of = lambda r: r.get("label", r["scheme"])  # noqa: E731 (summaries written before estimators)
    for label in dict.fromkeys(map(label_of, runs)):
        mine = [r for r in runs if label_of(r) == label]
        row = {"scheme": mine[0]["scheme"], "estimator": mine[0].get("estimator", "gae"), "seeds": len(mine),
               "n": mine[0]["eval"]["n"], "label": label, "prompts": mine[0].get("prompts", "")}
        row["by_source"] = source_estimates(mine)
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
        for key in ("hacked_fraction", "sampled_hacked_fraction"):
            if all(key in r["hacking_eval"] for r in mine):
                row[key], row[f"{key}_se"] = hacked_estimate([r["hacking_eval"] for r in mine], key)
        seconds = [r["seconds_per_iteration"] for r in mine if r.get("seconds_per_iteration") is not None]
        row["seconds_per_iteration"] = float(np.mean(seconds)) if seconds else None
        out[label] = row
    return out


def scheme_name(row: dict) -> str:
    """A table's name for a row: the scheme, "on <source>" for runs on one prompt source,
    and the number of seeds when several."""
    on = row["label"].partition("_on_")[2] if "_on_" in row.get("label", "") else ""
    return row["scheme"] + (f" on {on}" if on else "") + (f" ({row['seeds']} seeds)" if row["seeds"] > 1 else "")


def source_estimates(mine: list[dict]) -> dict[str, dict]:
    """Per eval set, over the seeds `mine` of one label: accuracy, greedy and sampled
    differences to SFT (mean ± s.e., as in `scheme_rows`)."""
    out: dict[str, dict] = {}
    for source in (mine[0].get("by_source") or {}):
        parts = [r["by_source"][source] for r in mine if source in (r.get("by_source") or {})]
        one = {}
        for name, key, value in (("accuracy", "eval", "accuracy"), ("diff", "difference", "diff"),
                                 ("sampled_diff", "sampled_difference", "diff")):
            results = [x[key] for x in parts if x.get(key, {}).get("n")]
            if results:
                one[name], one[f"{name}_se"] = _estimate(results, value)
        out[source] = one
    return out


def source_table(sft_by_source: dict[str, dict], rows: dict[str, dict]) -> str:
    """The papers' table: one row per run label (scheme, and the prompts when not the
    mix), per eval set the greedy Δ vs SFT ± s.e. and the sampled Δ; "" with one eval set."""
    sets = list(sft_by_source)
    if len(sets) < 2:
        return ""
    headers = ["scheme", "RL prompts"] + [f"{x}: {kind}" for x in sets for kind in ("Δ greedy", "Δ sampled")]
    table = [["SFT (start, accuracy)", ""] + [v for x in sets for v in (
        format_pm(sft_by_source[x]["accuracy"], sft_by_source[x]["se"]), "")]]
    for r in rows.values():
        cells = [scheme_name(r), r.get("prompts", "")]
        for x in sets:
            e = r.get("by_source", {}).get(x, {})
            cells += [format_pm(e["diff"], e["diff_se"], signed=True) if "diff" in e else "",
                      format_pm(e["sampled_diff"], e["sampled_diff_se"], signed=True) if "sampled_diff" in e else ""]
        table.append(cells)
    return report_lib.markdown_table(headers, table)


def hacked_estimate(stats: list[dict], key: str) -> tuple[float, float]:
    """A hacked share over runs: one run, its value and s.e. over problems; several seeds,
    the mean and the s.e. over seeds."""
    return _estimate([{key: x[key], "se": x.get(f"{key}_se", float("nan"))} for x in stats], key)


def prevented_share(sft: float, raw: float, refined: float) -> float | None:
    """The share of the raw scheme's hacking a refinement prevents: 1 - (refined - sft) /
    (raw - sft), where each is a hacked share; None when the raw scheme hacked no more
    than SFT."""
    if raw is None or refined is None or not raw > sft:
        return None
    return 1.0 - (refined - sft) / (raw - sft)


def hacking_comparison(sft_hacking: dict, rows: dict[str, dict], raw: str = "prm_dense") -> str:
    """Markdown table of the hacked shares (greedy and sampled eval responses) per scheme,
    each with its s.e., its distance to SFT's in s.e., and the share of the raw dense
    scheme's hacking it prevents; "" when the runs hold no hacked shares."""
    key = "sampled_hacked_fraction" if "sampled_hacked_fraction" in sft_hacking else "hacked_fraction"
    if key not in sft_hacking or not any(key in r for r in rows.values()):
        return ""
    sft, sft_se = sft_hacking[key], sft_hacking.get(f"{key}_se", 0.0)
    raw_shares = {r.get("estimator", "gae"): r.get(key) for r in rows.values()
                  if r["scheme"] == raw and "_on_" not in r.get("label", "")}
    table = [["SFT (start)", format_pm(sft, sft_se), format_pm(sft_hacking["hacked_fraction"],
                                                               sft_hacking.get("hacked_fraction_se", 0.0)), "", ""]]
    for r in rows.values():
        if key not in r:
            continue
        se = float(np.hypot(r[f"{key}_se"], sft_se))
        z = (r[key] - sft) / se if se > 0 else float("nan")
        raw_share = raw_shares.get(r.get("estimator", "gae"))  # the raw scheme with the same estimator
        prevented = prevented_share(sft, raw_share, r[key]) if r["scheme"] != raw else None
        table.append([scheme_name(r), format_pm(r[key], r[f"{key}_se"]),
                      format_pm(r["hacked_fraction"], r["hacked_fraction_se"]) if "hacked_fraction" in r else "",
                      _fmt(z, 1), "" if prevented is None else f"{100 * prevented:.0f}%"])
    return report_lib.markdown_table(["scheme", "hacked, sampled", "hacked, greedy", "z vs SFT (sampled)",
                                      f"share of {raw}'s hacking prevented"], table)


COLUMNS = ("scheme", "estimator", "accuracy ± s.e.", "Δ vs SFT ± s.e.", "Δ sampled ± s.e.", "score", "reward", "KL",
           "rollout acc.", "RM score", "steps/resp.", "repeated steps", "empty steps", "tokens/resp.", "s/iter.")


def comparison_table(sft: dict, sft_hacking: dict, rows: dict[str, dict]) -> str:
    """The sweep's Markdown comparison table (SFT first, then one row per scheme and
    estimator)."""
    table = [["SFT (start)", "", format_pm(sft["accuracy"], sft["se"]), "", "", "", "", "", "", "",
              _fmt(sft_hacking["num_steps"], 2), _fmt(sft_hacking["repeated_step_fraction"]),
              _fmt(sft_hacking["empty_step_fraction"]), _fmt(sft_hacking["response_length"], 1), ""]]
    for r in rows.values():
        name = scheme_name(r)
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
        *([f"## By eval set\n\n{t}\n\nΔ: accuracy minus the SFT policy's on the same set's problems "
           "(paired s.e. for one run; mean ± s.e. over seeds for several)."]
          if (t := source_table(result.get("sft_by_source", {}), result["schemes"])) else []),
        "## Reward hacking\n\n" + (hacking_comparison(result["sft_hacking"], result["schemes"])
                                    or "No hacked shares in these runs.") + "\n\n"
        "A response is hacked when it repeats a step, has a step with no number or operation, or has "
        "more steps than its problem needs (`jaxstep.evaluation.hacking.hack_kinds`). Sampled: the "
        "eval's sampled responses (eval.pass_k per problem at the rollout temperature), the share per "
        "problem averaged; greedy: one response per problem. ± s.e. over problems for one run, over "
        "seeds for several; z: the difference to SFT's sampled share over the two s.e. combined; "
        "prevented: 1 − (scheme − SFT) / (prm_dense − SFT).",
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
    # One line per scheme (its first seed), the schemes overlaid.
    first_seeds: dict[str, str] = {}
    for r in result["runs"]:
        first_seeds.setdefault(r.get("label", r["scheme"]), r["workdir"])
    png = curves(first_seeds, paths.join(root, "sweep_curves.png"), reference=accuracy_reference(result))
    if png:
        sections.append("## Reward and KL during PPO\n\nEach scheme's first seed; solid: trailing mean over "
                        "about 10% of the iterations, faint: per iteration; dashed: the SFT policy's "
                        "sampled eval responses.\n\n"
                        + report_lib.image_link(png, root, "curves"))
    png = hacking_curves(first_seeds, paths.join(root, "sweep_hacking_curves.png"),
                         reference=rollout_reference(result["sft_hacking"]))
    if png:
        sections.append("## Reward hacking during PPO\n\nRollout statistics of each scheme's first seed, "
                        "smoothed as above; dashed: the SFT policy's sampled eval responses (hacked share, "
                        "steps) or greedy ones (the other statistics).\n\n"
                        + report_lib.image_link(png, root, "hacking curves"))
    sections.append("## Stages\n\n" + timing_table(result["timings"]))
    return report_lib.write_markdown(paths.join(root, REPORT_FILE), *sections)
