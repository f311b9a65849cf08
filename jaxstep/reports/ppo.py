"""A PPO stage's report: reward/KL curves (PNG) and reward-hacking statistics of the
first vs last iterations."""
from __future__ import annotations

from typing import Any
import numpy as np
from jaxstep import paths
from jaxstep.evaluation import hacking
from jaxstep.reports import markdown as report
# Metrics averaged over the first / last iterations for the summary and the report.
SUMMARY_KEYS = ("score", "reward", "kl", "kl_coef", "rollout_accuracy", "rm_score", "num_steps",
                "response_length", "repeated_step_fraction", "empty_step_fraction",
                "finished_fraction", "hacked_fraction", "entropy", "value_loss", "clip_fraction")


CURVES = (("reward", "score", "kl", "rollout_accuracy"),
          ("rm_score", "num_steps", "response_length", "repeated_step_fraction"))


def training_rows(rows) -> list[dict]:
    """The per-iteration lines of a PPO metrics.jsonl (not the eval lines), one per step:
    a run resumed from an older checkpoint logs some steps again; the last line wins."""
    by_step = {r["step"]: r for r in rows if "score" in r}
    return [by_step[s] for s in sorted(by_step)]


def window_means(rows, keys, *, first: bool, fraction: float = 0.1) -> dict[str, float]:
    """Mean of each metric over the first (or last) `fraction` of the logged iterations
    (at least one)."""
    rows = training_rows(rows)
    if not rows:
        return {}
    n = max(1, int(round(len(rows) * fraction)))
    window = rows[:n] if first else rows[-n:]
    out = {}
    for key in keys:
        values = [r[key] for r in window if isinstance(r.get(key), (int, float))]
        if values:
            out[key] = float(np.mean(values))
    return out


def hacking_table(columns: dict[str, dict[str, float]]) -> str:
    """Markdown table: one row per hacking statistic, one column per run/window."""
    keys = ["rollout_accuracy", "rm_score", "hacked_fraction", "num_steps", "response_length",
            "repeated_step_fraction", "empty_step_fraction", "finished_fraction", "kl"]
    names = dict(hacking.STAT_NAMES, rollout_accuracy="accuracy of these responses", kl="KL to the SFT policy")
    # Eval columns (hacking.hacking_stats of greedy responses) call their accuracy "accuracy".
    columns = {name: dict(c, rollout_accuracy=c.get("rollout_accuracy", c.get("accuracy")))
               for name, c in columns.items()}
    rows = []
    for key in keys:
        if any(c.get(key) is not None for c in columns.values()):
            rows.append([names.get(key, key)] + [_fmt(c.get(key)) for c in columns.values()])
    return report.markdown_table(["statistic", *columns], rows)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"


def write_report(workdir: str, summary: dict, rows: list) -> str:
    """`<workdir>/report.md`: curves (PNG) and hacking statistics, first vs last iterations."""
    path = paths.join(workdir, "report.md")
    sections = [f"# PPO, scheme {summary['scheme']}",
                f"{summary['steps']} iterations; policy `{summary['policy']}`, reward model "
                f"`{summary['reward_model']}`; final KL coefficient {summary['kl_coef_final']:.4f}; "
                f"{summary['skipped_steps']} skipped iterations; {summary['train_seconds']:.0f} s."]
    if "eval_accuracy" in summary:
        sections.append(f"Greedy accuracy on {summary['eval_problems']} eval problems: "
                        f"{report.format_accuracy(summary['eval_accuracy'])}.")
    sections.append("## Reward-hacking statistics (rollouts)\n\n" + hacking_table(
        {"first 10% of iterations": summary["first"], "last 10%": summary["last"]}))
    train_rows = training_rows(rows)
    for i, keys in enumerate(CURVES):
        png = report.plot_metric_curves({summary["scheme"]: train_rows}, list(keys),
                                        paths.join(workdir, f"curves_{i}.png"))
        if png:
            sections.append(report.image_link(png, workdir, alt=", ".join(keys)))
    return report.write_markdown(path, *sections)
