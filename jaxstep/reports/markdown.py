"""Markdown reports and PNG plots for any stage: accuracy tables and metric curves.

Reusable pieces (every function writes nothing unless it is given a path):

    rows = [{"source": "synthetic", "level": 2, "subject": "chain", "correct": True}, ...]
    table = accuracy_by(rows, "subject")            # [Group(name, n, correct, accuracy)]
    md = markdown_table(["set", "n", "accuracy"], [[...], ...])
    plot_accuracy_bars({"sft": 0.41, "ppo": 0.52}, "acc.png", title="Greedy accuracy")
    plot_metric_curves({"sft": read_metrics(p)}, ["loss"], "loss.png")
    plot_metric_curves(runs, ["reward"], "r.png", smooth=10, reference={"reward": 0.3})
    write_markdown("report.md", "# Title", md, ...)

Matplotlib runs on the non-interactive Agg backend (no display needed).
"""
from __future__ import annotations

import math
import os
import posixpath
from typing import Any, Mapping, Sequence

from jaxstep import paths
from jaxstep.evaluation.stats import Group


def format_accuracy(value: float, digits: int = 1) -> str:
    """0.4125 -> "41.2%"; NaN -> "-"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * value:.{digits}f}%"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]],
                   align: Sequence[str] | None = None) -> str:
    """A GitHub Markdown table; `align` per column: "l" | "r" | "c" (default: l then r)."""
    if align is None:
        align = ["l"] + ["r"] * (len(headers) - 1)
    marks = {"l": ":---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(str(h) for h in headers) + " |",
             "| " + " | ".join(marks[a] for a in align) + " |"]
    for row in rows:
        cells = [str(c).replace("|", "\\|").replace("\n", " ") for c in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def group_table(groups: Sequence[Group], label: str = "group") -> str:
    """Markdown table of `accuracy_by` groups: label | n | correct | accuracy."""
    return markdown_table([label, "n", "correct", "accuracy"],
                          [[g.name, g.n, g.correct, format_accuracy(g.accuracy)] for g in groups])


def text_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A fixed-width plain-text table (for printing to the terminal)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = []
    for k, row in enumerate(cells):
        out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


# ----------------------------------------------------------------------------- plots

def _pyplot():
    import matplotlib  # noqa: PLC0415 - heavy; only when plotting

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def plot_accuracy_bars(values: Mapping[str, float] | Mapping[str, Mapping[str, float]], path: str, *,
                       title: str = "Accuracy", ylabel: str = "accuracy",
                       counts: Mapping[str, int] | None = None) -> str:
    """Bar chart of accuracies, saved as a PNG at `path`; returns `path`.

    Args:
      values: {bar: accuracy} for one series, or {series: {bar: accuracy}} for grouped
        bars (e.g. {"sft": {"level 1": .6, ...}, "ppo": {...}}).
      counts: optional {bar: n} written under the bars' labels.
    """
    plt = _pyplot()
    series = values if values and all(isinstance(v, Mapping) for v in values.values()) else {"": values}
    bars: list[str] = []
    for s in series.values():
        for bar in s:
            if bar not in bars:
                bars.append(bar)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(bars) * max(1, len(series)) + 1.5), 3.6))
    width = 0.8 / max(1, len(series))
    for k, (name, s) in enumerate(series.items()):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(bars))]
        ys = [float(s.get(b, float("nan"))) for b in bars]
        rects = ax.bar(xs, [0 if math.isnan(y) else y for y in ys], width, label=name or None)
        for rect, y in zip(rects, ys):
            if not math.isnan(y):
                ax.annotate(f"{100 * y:.0f}%", (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                            ha="center", va="bottom", fontsize=8)
    labels = [f"{b}\n(n={counts[b]})" if counts and b in counts else b for b in bars]
    ax.set_xticks(range(len(bars)), labels, fontsize=8)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)
    return path


def metric_series(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of a metric in metrics.jsonl rows; rows without it are skipped."""
    steps, values = [], []
    for row in rows:
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and "step" in row:
            steps.append(float(row["step"]))
            values.append(float(value))
    return steps, values


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average: point i is the mean of values[i - window + 1 : i + 1], the
    first points averaged over what exists so far; window <= 1 returns the values.

        moving_average([1, 2, 3, 4], 2) -> [1.0, 1.5, 2.5, 3.5]
    """
    values = [float(v) for v in values]
    if window <= 1:
        return values
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_metric_curves(runs: Mapping[str, Sequence[Mapping[str, Any]]], keys: Sequence[str], path: str, *,
                       title: str = "", xlabel: str = "step", smooth: int = 0,
                       reference: Mapping[str, float] | None = None, reference_label: str = "SFT",
                       titles: Mapping[str, str] | None = None) -> str | None:
    """One panel per metric key, one line per run; returns `path`, or None if no data.

    Args:
      runs: {run name: rows of its metrics.jsonl} (see `jaxstep.metrics.read_metrics`);
        each run keeps one colour in every panel.
      keys: metric names to plot (a key no run has is left out).
      smooth: if > 0, each run's `moving_average` over this many points as a solid line,
        its raw values faint behind it in the same colour; 0: the raw values only.
      reference: {key: level}, e.g. the starting policy's value: a dashed grey line
        labelled `reference_label` in that key's panel (keys without a value get none).
      titles: {key: panel title}; default the key.
    """
    keys = [k for k in keys if any(metric_series(rows, k)[0] for rows in runs.values())]
    if not keys:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for i, (name, rows) in enumerate(runs.items()):
            xs, ys = metric_series(rows, key)
            if xs:
                _plot_series(ax, xs, ys, name, f"C{i}", smooth)
        level = (reference or {}).get(key)
        has_reference = isinstance(level, (int, float)) and not isinstance(level, bool) and math.isfinite(level)
        if has_reference:
            ax.axhline(float(level), color="grey", linestyle="--", linewidth=1, label=reference_label)
        ax.set_title((titles or {}).get(key, key), fontsize=10)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        if len(runs) > 1 or has_reference:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)
    return path


def _plot_series(ax, xs: list[float], ys: list[float], name: str, color: str, smooth: int) -> None:
    marker = "." if len(xs) < 30 else None
    if smooth <= 0:
        ax.plot(xs, ys, label=name or None, marker=marker, color=color)
        return
    ax.plot(xs, ys, marker=marker, color=color, alpha=0.25, linewidth=1)
    ax.plot(xs, moving_average(ys, smooth), label=name or None, color=color, linewidth=1.8)


# ----------------------------------------------------------------------------- files

def _save_figure(fig, path: str) -> None:
    """PNG at `path` (local or remote, `jaxstep.paths`)."""
    paths.makedirs(paths.parent(path))
    with paths.open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)


def write_markdown(path: str, *sections: str) -> str:
    """Writes the sections (Markdown strings) separated by blank lines; returns `path`."""
    text = "\n\n".join(s.strip("\n") for s in sections if s) + "\n"
    return paths.write_text(path, text)


def image_link(path: str, relative_to: str, alt: str = "") -> str:
    """Markdown image link to `path`, relative to the folder of the report."""
    if paths.is_remote(path):
        rel = posixpath.relpath(paths.absolute(path), paths.absolute(relative_to))
    else:
        rel = os.path.relpath(os.path.abspath(path), os.path.abspath(relative_to))
    return f"![{alt or paths.basename(path)}]({rel})"
