"""The sweep's studies: runs on single prompt sources, results per eval set (the papers'
scheme x eval-set table), and the reward-hacking table (hacked shares, prevented share)."""
import os

import pytest

from jaxstep import config_lib
from jaxstep.evaluation import policy as eval_policy
from jaxstep.reports import sweep as sweep_report
from jaxstep.stages import pipeline, sweep as stage_sweep
from test_pipeline import adopt_fakes, fake_ppo, fake_stage, finished_chain, tiny_config, write_json  # noqa: F401


def two_set_eval(folder, easy, hard, sampled=None):
    """A finished eval over two sets (synthetic_easy, synthetic_hard) with these verdicts."""
    rows = []
    for source, verdicts in (("synthetic_easy", easy), ("synthetic_hard", hard)):
        for i, c in enumerate(verdicts):
            row = {"id": f"{source}/test/{i}", "source": source, "question": f"{source} q{i}", "reference": "1",
                   "response": "Ann has 1 + 0 = 1 apples.\n#### " + ("1" if c else "2"), "correct": bool(c),
                   "num_tokens": 12, "finished": True, "needed_steps": 2}
            if sampled is not None:
                row["samples"] = [{"response": sampled, "correct": bool(c)}] * 2
            rows.append(row)
    os.makedirs(fake_stage(folder), exist_ok=True)
    eval_policy.write_samples(os.path.join(folder, eval_policy.SAMPLES_FILE), rows)
    write_json(os.path.join(folder, "summary.json"), {"stage": "eval"})


def test_by_source_pairs_each_set_apart():
    sft = [{"source": "a", "id": str(i), "correct": c} for i, c in enumerate([0, 0, 1, 1])]
    sft += [{"source": "b", "id": str(i), "correct": c} for i, c in enumerate([0, 1])]
    ppo = [dict(r, correct=1) for r in sft]
    out = pipeline.by_source(sft, ppo)
    assert list(out) == ["a", "b"]
    assert out["a"]["difference"]["diff"] == pytest.approx(0.5)  # 2 of 4 gained
    assert out["b"]["difference"]["diff"] == pytest.approx(0.5)  # 1 of 2
    assert out["a"]["eval"]["accuracy"] == 1.0
    assert pipeline.by_source(sft[:4], ppo[:4]) == {}  # one set: nothing apart


def test_sweep_single_source_runs_and_the_papers_table(tmp_path, adopt_fakes):
    root = str(tmp_path / "sweep")
    finished_chain(root, ppo_names={})
    two_set_eval(os.path.join(root, "eval_sft"), [1, 0, 0, 0], [0, 0, 0, 0])
    for label, easy, hard in (("prm_max", [1, 1, 0, 0], [1, 0, 0, 0]),
                              ("prm_max_on_synthetic_easy", [1, 1, 1, 0], [0, 0, 0, 0])):
        fake_ppo(os.path.join(root, f"ppo_{label}"), "prm_max")
        two_set_eval(os.path.join(root, f"eval_{label}"), easy, hard)
    config = tiny_config(stage="sweep")
    config.sweep.schemes = "prm_max"
    config.sweep.estimators = "gae"  # the fakes' folders: ppo_<scheme> (no estimator suffix)
    config.sweep.single_sources = "synthetic_easy"
    config_lib.validate(config)
    summary = stage_sweep.run(config, root)
    assert all(t["reused"] for t in summary["timings"].values())  # the planned folders, nothing else
    rows = summary["schemes"]
    assert list(rows) == ["prm_max", "prm_max_on_synthetic_easy"]
    assert rows["prm_max_on_synthetic_easy"]["prompts"] == "synthetic_easy"
    assert rows["prm_max"]["by_source"]["synthetic_hard"]["diff"] == pytest.approx(0.25)
    assert rows["prm_max_on_synthetic_easy"]["by_source"]["synthetic_easy"]["diff"] == pytest.approx(0.5)
    report = open(os.path.join(root, "report.md")).read()
    table = report.split("## By eval set")[1].split("##")[0]
    lines = [[c.strip() for c in line.split("|")[1:-1]] for line in table.splitlines() if line.startswith("| ")]
    assert lines[0][:4] == ["scheme", "RL prompts", "synthetic_easy: Δ greedy", "synthetic_easy: Δ sampled"]
    assert lines[2][:3] == ["SFT (start, accuracy)", "", "25.0% ± 21.7%"]
    assert lines[3][0] == "prm_max" and lines[3][4] == "+25.0% ± 25.0%"  # hard set: 1 of 4 gained
    assert lines[4][:3] == ["prm_max on synthetic_easy", "synthetic_easy", "+50.0% ± 28.9%"]


def test_planned_runs_and_their_check():
    s = config_lib.base_config("x", "sweep").sweep
    s.single_sources = "synthetic_easy, synthetic_hard"
    assert stage_sweep.planned_runs(s, ["orm", "clip"], ["gae"]) == [
        ("orm", "gae", ""), ("clip", "gae", ""), ("prm_max", "gae", "synthetic_easy"),
        ("prm_max", "gae", "synthetic_hard")]
    s.single_source_scheme = "prm_best"
    with pytest.raises(ValueError, match="sweep.single_source_scheme='prm_best'"):
        stage_sweep.planned_runs(s, ["orm"], ["gae"])


def test_prevented_share_by_hand():
    assert sweep_report.prevented_share(0.1, 0.5, 0.1) == pytest.approx(1.0)  # back at SFT's level
    assert sweep_report.prevented_share(0.1, 0.5, 0.3) == pytest.approx(0.5)
    assert sweep_report.prevented_share(0.1, 0.5, 0.6) == pytest.approx(-0.25)  # hacks more than raw
    assert sweep_report.prevented_share(0.1, 0.1, 0.1) is None  # raw did not hack: nothing to prevent


def test_hacking_table_over_seeds():
    sft = {"hacked_fraction": 0.1, "hacked_fraction_se": 0.01, "sampled_hacked_fraction": 0.1,
           "sampled_hacked_fraction_se": 0.01}
    rows = {"prm_dense": {"scheme": "prm_dense", "seeds": 3, "sampled_hacked_fraction": 0.5,
                          "sampled_hacked_fraction_se": 0.03, "hacked_fraction": 0.4, "hacked_fraction_se": 0.02},
            "clip_delta": {"scheme": "clip_delta", "seeds": 3, "sampled_hacked_fraction": 0.12,
                           "sampled_hacked_fraction_se": 0.01, "hacked_fraction": 0.1, "hacked_fraction_se": 0.01}}
    table = sweep_report.hacking_comparison(sft, rows)
    lines = [[c.strip() for c in line.split("|")[1:-1]] for line in table.splitlines()[2:]]
    assert lines[1][0] == "prm_dense (3 seeds)" and lines[1][1] == "50.0% ± 3.0%"
    assert float(lines[1][3]) == pytest.approx(0.4 / (0.03 ** 2 + 0.01 ** 2) ** 0.5, abs=0.1)
    assert lines[1][4] == "" and lines[2][4] == "95%"  # 1 - 0.02 / 0.4
    assert sweep_report.hacking_comparison({}, rows) == ""
    # Over seeds: the mean and the s.e. of the seeds' values.
    share, se = sweep_report.hacked_estimate([{"x": 0.1}, {"x": 0.3}], "x")
    assert (share, se) == (pytest.approx(0.2), pytest.approx(0.1))


def test_the_sweep_runs_the_experiments_estimator_by_default():
    from test_configs import get_config  # noqa: PLC0415
    c = get_config("sweep", "hacking")
    assert c.sweep.estimators == "" and c.ppo.advantage == "grpo"
    assert stage_sweep.parse_estimators(c.sweep.estimators or c.ppo.advantage) == ["grpo"]
    assert (c.sweep.schemes, c.sweep.seeds) == ("prm_dense,clip,delta,clip_delta", 3)
    assert (c.sft.redundant_fraction, c.rm.corruption_kinds) == (0.1, "arithmetic,operand,repeat")
    main = get_config("ppo_prm_max")
    assert c.ppo.to_dict() == main.ppo.to_dict()  # one protocol: the main job's RL settings
    e = get_config("sweep", "easy_hard")
    assert e.sweep.single_sources == "synthetic_easy,synthetic_hard"
    assert e.eval.sources == "synthetic_easy,synthetic_hard" and e.ppo.to_dict() == main.ppo.to_dict()
