"""Smoothed PPO curves in the reports: moving averages, faint raw lines, reference levels
and the reward-hacking panels."""
import json

import pytest

from jaxstep.reports import chain
from jaxstep.reports import markdown as report_lib

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_moving_average_by_hand():
    assert report_lib.moving_average([1, 2, 3, 4], 2) == [1.0, 1.5, 2.5, 3.5]
    assert report_lib.moving_average([3, 0, 6, 3, 0], 3) == [3.0, 1.5, 3.0, 3.0, 3.0]
    assert report_lib.moving_average([1, 5], 10) == [1.0, 3.0]
    assert report_lib.moving_average([1, 5], 1) == [1.0, 5.0]
    assert report_lib.moving_average([1, 5], 0) == [1.0, 5.0]
    assert report_lib.moving_average([], 3) == []


@pytest.fixture
def figures(monkeypatch):
    """The figures `plot_metric_curves` saves (the PNG is still written)."""
    saved = []
    save = report_lib._save_figure

    def capture(fig, path):
        saved.append(fig)
        save(fig, path)

    monkeypatch.setattr(report_lib, "_save_figure", capture)
    return saved


def _lines(ax):
    """(raw, smoothed, reference) Line2D objects of a panel, told apart by alpha and style."""
    lines = ax.get_lines()
    raw = [l for l in lines if l.get_alpha() is not None and l.get_alpha() < 0.5]
    reference = [l for l in lines if l.get_linestyle() == "--"]
    solid = [l for l in lines if l not in raw and l not in reference]
    return raw, solid, reference


def _rows(rewards, **other):
    return [{"step": i, "reward": r, **{k: v[i] for k, v in other.items()}} for i, r in enumerate(rewards)]


def test_smoothed_curves_with_reference(tmp_path, figures):
    runs = {"a": _rows([0.0, 1.0, 0.0, 1.0], kl=[0.1, 0.2, 0.3, 0.4]), "b": _rows([1.0, 1.0, 0.0, 0.0])}
    path = str(tmp_path / "curves.png")
    out = report_lib.plot_metric_curves(runs, ["reward", "kl"], path, smooth=2,
                                        reference={"reward": 0.5}, titles={"kl": "KL to SFT"})
    assert out == path and (tmp_path / "curves.png").read_bytes()[:8] == PNG_MAGIC
    reward_ax, kl_ax = figures[-1].axes
    raw, solid, reference = _lines(reward_ax)
    assert len(raw) == 2 and len(solid) == 2 and len(reference) == 1
    assert list(solid[0].get_ydata()) == [0.0, 0.5, 0.5, 0.5]
    assert list(raw[0].get_ydata()) == [0.0, 1.0, 0.0, 1.0]
    # Raw and smoothed lines of a run share its colour, in every panel.
    assert [l.get_color() for l in raw] == [l.get_color() for l in solid] == ["C0", "C1"]
    assert list(reference[0].get_ydata()) == [0.5, 0.5] and reference[0].get_label() == "SFT"
    legend = [t.get_text() for t in reward_ax.get_legend().get_texts()]
    assert legend == ["a", "b", "SFT"]
    # kl: only run "a" logs it, no reference level; still run a's colour, custom title.
    raw, solid, reference = _lines(kl_ax)
    assert len(raw) == len(solid) == 1 and not reference and solid[0].get_color() == "C0"
    assert kl_ax.get_title() == "KL to SFT" and reward_ax.get_title() == "reward"


def test_default_draws_raw_lines_only(tmp_path, figures):
    report_lib.plot_metric_curves({"a": _rows([0.0, 1.0, 0.0])}, ["reward"], str(tmp_path / "c.png"))
    (ax,) = figures[-1].axes
    (line,) = ax.get_lines()
    assert line.get_alpha() is None and list(line.get_ydata()) == [0.0, 1.0, 0.0]
    assert ax.get_legend() is None


def _workdir(tmp_path, name, rows):
    workdir = tmp_path / name
    workdir.mkdir()
    # Eval lines (no "score") are not training iterations and are skipped.
    lines = [{"step": r["step"], "score": 0.0, **r} for r in rows] + [{"step": 99, "eval_accuracy": 0.3}]
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return str(workdir)


def test_hacking_curves_none_without_hacking_keys(tmp_path):
    runs = {"a": _workdir(tmp_path, "a", _rows([0.1, 0.2]))}
    assert chain.hacking_curves(runs, str(tmp_path / "h.png")) is None
    assert not (tmp_path / "h.png").exists()
    assert chain.hacking_curves({"a": str(tmp_path / "missing")}, str(tmp_path / "h.png")) is None


def test_hacking_curves_draw_present_keys(tmp_path, figures):
    n = 20
    rows = _rows([0.0] * n, num_steps=[3.0 + i % 2 for i in range(n)],
                 hacked_fraction=[0.1 * (i % 3) for i in range(n)])
    runs = {"a": _workdir(tmp_path, "a", rows), "b": _workdir(tmp_path, "b", rows[:10])}
    path = str(tmp_path / "h.png")
    assert chain.hacking_curves(runs, path, reference={"num_steps": 3.2, "accuracy": 0.4}) == path
    assert (tmp_path / "h.png").read_bytes()[:8] == PNG_MAGIC
    hacked_ax, steps_ax = figures[-1].axes
    assert hacked_ax.get_title().startswith("hacked responses") and steps_ax.get_title() == "steps per response"
    raw, solid, reference = _lines(steps_ax)
    assert len(raw) == len(solid) == 2 and len(reference) == 1
    # Default window: 10% of the longest run's 20 iterations.
    assert list(solid[0].get_ydata()) == report_lib.moving_average([r["num_steps"] for r in rows], 2)
    assert not _lines(hacked_ax)[2]


def test_curves_smoothing_passes_through(tmp_path, figures):
    runs = {"a": _workdir(tmp_path, "a", _rows([0.0, 1.0, 0.0, 1.0]))}
    assert chain.curves(runs, str(tmp_path / "c.png"), keys=("reward",), smooth=0)
    (line,) = figures[-1].axes[0].get_lines()
    assert line.get_alpha() is None
    chain.curves(runs, str(tmp_path / "c.png"), keys=("reward",), smooth=3, reference={"reward": 0.2})
    raw, solid, reference = _lines(figures[-1].axes[0])
    assert len(raw) == len(solid) == len(reference) == 1
    assert list(solid[0].get_ydata()) == pytest.approx([0.0, 0.5, 1 / 3, 2 / 3])
    assert chain.default_window({"a": [{}] * 9}) == 1 and chain.default_window({"a": [{}] * 25}) == 2
