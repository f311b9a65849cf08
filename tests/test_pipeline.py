"""The main job (stage pipeline) and the sweep: finished stages are reused, not
recomputed; the report's statistics; a tiny end-to-end chain (slow)."""
import json
import os

import numpy as np
import pytest

from jaxstep import config_lib
from jaxstep.metrics import MetricWriter
from jaxstep.evaluation import policy as eval_policy
from jaxstep.stages import pipeline as stage_pipeline
from jaxstep.stages import sweep as stage_sweep
from jaxstep.evaluation import stats
from jaxstep import workdir as workdir_lib
from run_helpers import tiny_model

SCHEMES = ("prm_max", "orm")


def tiny_config(scheme="prm_max", stage="pipeline"):
    c = config_lib.ppo_experiment(scheme)
    c.stage = stage
    c.data.num_train = 200
    c.data.max_prompt_len = 64
    c.data.max_response_len = 24
    tiny_model(c)
    c.pipeline.eval_limit = 8
    c.pipeline.eval_batch_size = 8
    return c


def write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)


FAKES: set[str] = set()  # folders written by the fakes below (see `adopt_fakes`)


def fake_stage(folder):
    """Marks `folder` as a fake stage's (or a fake chain's root); returns it."""
    FAKES.add(os.path.abspath(folder))
    return folder


@pytest.fixture
def adopt_fakes(monkeypatch):
    """The fakes hold no run_config.json (no stage ran to record it): when the chain first checks
    a fake folder, it is given the config the chain gives that stage there, as the stage's
    own run would have recorded it; from then on the folder is compared like any other."""
    real = workdir_lib.stale_reason

    def stale_reason(workdir, config):
        if os.path.abspath(workdir) in FAKES and workdir_lib.read_config(workdir) is None:
            workdir_lib.record_config(workdir, config)
        return real(workdir, config)

    monkeypatch.setattr(workdir_lib, "stale_reason", stale_reason)
    yield
    FAKES.clear()


def fake_eval(folder, correct):
    """A finished eval stage: summary.json and samples.jsonl with the given verdicts."""
    rows = [{"id": f"synthetic/test/{i}", "source": "synthetic", "question": f"q{i}", "reference": "1",
             "response": "Ann has 1 + 0 = 1 apples.\n#### " + ("1" if c else "2"), "answer": "1" if c else "2",
             "correct": bool(c), "num_tokens": 12, "finished": True} for i, c in enumerate(correct)]
    os.makedirs(fake_stage(folder), exist_ok=True)
    eval_policy.write_samples(os.path.join(folder, eval_policy.SAMPLES_FILE), rows)
    write_json(os.path.join(folder, "summary.json"), {"stage": "eval", "accuracy": {"synthetic": float(np.mean(correct))}})


def fake_ppo(folder, scheme):
    """A finished PPO stage: summary.json and a few metric lines."""
    with MetricWriter(fake_stage(folder), tensorboard=False, enabled=True) as writer:
        for step in range(1, 4):
            writer.write(step, {"score": 0.1 * step, "reward": 0.1 * step - 0.01, "kl": 0.01 * step,
                                "rollout_accuracy": 0.2 + 0.1 * step})
    last = {"score": 0.3, "reward": 0.29, "kl": 0.03, "rollout_accuracy": 0.5, "rm_score": 0.7, "num_steps": 3.0}
    write_json(os.path.join(folder, "summary.json"),
               {"stage": "ppo", "scheme": scheme, "export": os.path.join(folder, "export"), "first": last,
                "last": last, "kl_coef_final": 0.1})


def finished_chain(root, schemes=SCHEMES, ppo_names=None):
    """Every stage folder of a chain marked finished (summary.json), with fake products."""
    for name in ("", "sft", "prm", "orm"):
        fake_stage(os.path.join(root, name))
    write_json(os.path.join(root, "sft", "summary.json"), {"stage": "sft", "export": os.path.join(root, "sft", "export")})
    for kind in ("prm", "orm"):
        write_json(os.path.join(root, kind, "summary.json"),
                   {"stage": kind, "export": os.path.join(root, kind, "export")})
    sft = [1, 0, 1, 0, 0, 1, 0, 0, 1, 0]
    fake_eval(os.path.join(root, "eval_sft"), sft)
    for name, scheme in (ppo_names or {"ppo": schemes[0]}).items():
        fake_ppo(os.path.join(root, name), scheme)
    return sft


def mtimes(root):
    out = {}
    for folder, _, files in os.walk(root):
        for f in files:
            path = os.path.join(folder, f)
            out[path] = os.stat(path).st_mtime_ns
    return out


def test_paired_difference_and_errors():
    before = [{"source": "s", "id": str(i), "correct": c} for i, c in enumerate([1, 0, 0, 1, 0])]
    after = [{"source": "s", "id": str(i), "correct": c} for i, c in enumerate([1, 1, 1, 0, 0])]
    d = stats.paired_difference(before, after)
    diffs = np.array([0, 1, 1, -1, 0])
    assert d["n"] == 5 and d["gained"] == 2 and d["lost"] == 1
    assert d["diff"] == pytest.approx(0.2)
    assert d["se"] == pytest.approx(diffs.std(ddof=1) / np.sqrt(5))
    acc = stats.accuracy_with_error(after)
    assert acc["accuracy"] == pytest.approx(0.6) and acc["se"] == pytest.approx(np.sqrt(0.6 * 0.4 / 5))
    # Only problems graded in both count; none in common gives NaN, not an error.
    assert stats.paired_difference(before[:2], after)["n"] == 2
    assert np.isnan(stats.paired_difference(before, [{"source": "t", "id": "0", "correct": 1}])["diff"])
    assert stats.format_pm(0.4123, 0.0155) == "41.2% ± 1.6%"
    assert stats.format_pm(0.05, 0.01, signed=True) == "+5.0% ± 1.0%"
    mean, se = stats.mean_and_se([0.1, 0.3])
    assert mean == pytest.approx(0.2) and se == pytest.approx(0.1)


def test_paired_difference_of_sampled_responses():
    def rows(shares):  # 4 samples per problem, `k` of them right
        return [{"source": "s", "id": str(i), "correct": 0,
                 "samples": [{"correct": j < k} for j in range(4)]} for i, k in enumerate(shares)]
    before, after = rows([0, 2, 4, 1]), rows([1, 2, 3, 4])
    d = stats.paired_difference(before, after, stats.sampled_correct)
    diffs = np.array([0.25, 0.0, -0.25, 0.75])
    assert d["n"] == 4 and d["gained"] == 2 and d["lost"] == 1
    assert d["diff"] == pytest.approx(diffs.mean()) and d["se"] == pytest.approx(diffs.std(ddof=1) / 2)
    # Rows without samples (greedy-only evals) drop out instead of counting as wrong.
    assert stats.paired_difference(before, [{"source": "s", "id": "0", "correct": 1}],
                                      stats.sampled_correct)["n"] == 0


def test_pipeline_reuses_finished_stages(tmp_path, adopt_fakes):
    root = str(tmp_path / "main")
    sft = finished_chain(root)
    fake_eval(os.path.join(root, "eval_ppo"), [1, 1, 1, 0, 1, 1, 0, 0, 1, 0])
    before = mtimes(root)
    summary = stage_pipeline.run(tiny_config(), root)
    # Nothing was recomputed: every stage file is untouched, every stage reported as reused.
    assert mtimes(root).items() >= before.items()
    assert all(t["reused"] for t in summary["timings"].values())
    assert set(summary["timings"]) == {"sft", "prm", "eval_sft", "ppo", "eval_ppo"}
    run = summary["ppo_runs"][0]
    assert summary["sft"]["accuracy"] == pytest.approx(np.mean(sft))
    assert run["eval"]["accuracy"] == pytest.approx(0.6)
    assert run["difference"]["diff"] == pytest.approx(0.6 - np.mean(sft))
    report = open(os.path.join(root, "report.md")).read()
    assert "PPO − SFT" in report and "Reward-hacking statistics" in report
    assert os.path.isfile(os.path.join(root, "ppo_curves.png"))
    # A finished pipeline's summary is made again from its reused stages: the same numbers.
    again = stage_pipeline.run(tiny_config(), root)
    assert {k: v for k, v in again.items() if k != "seconds"} == {k: v for k, v in summary.items() if k != "seconds"}


def test_sweep_reuses_stages_and_writes_one_table(tmp_path, adopt_fakes):
    root = str(tmp_path / "sweep")
    finished_chain(root, ppo_names={"ppo_prm_max": "prm_max", "ppo_orm": "orm"})
    fake_eval(os.path.join(root, "eval_prm_max"), [1] * 6 + [0] * 4)
    fake_eval(os.path.join(root, "eval_orm"), [1] * 5 + [0] * 5)
    config = tiny_config(stage="sweep")
    config.sweep.schemes = "prm_max,orm"
    config.sweep.estimators = "gae"  # folders ppo_<scheme>, as the fakes are named
    before = mtimes(root)
    summary = stage_sweep.run(config, root)
    assert mtimes(root).items() >= before.items()
    assert all(t["reused"] for t in summary["timings"].values())
    assert set(summary["timings"]) == {"sft", "prm", "orm", "eval_sft", "ppo_prm_max", "eval_prm_max",
                                       "ppo_orm", "eval_orm"}
    assert summary["schemes"]["prm_max"]["accuracy"] == pytest.approx(0.6)
    assert summary["schemes"]["orm"]["accuracy"] == pytest.approx(0.5)
    report = open(os.path.join(root, "report.md")).read()
    comparison = report.split("## Comparison")[1].split("##")[0]
    table = [line for line in comparison.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| scheme | estimator | accuracy") and table[0].rstrip().endswith("| s/iter. |")
    assert [line.split("|")[1].strip() for line in table[2:]] == ["SFT (start)", "prm_max", "orm"]
    with pytest.raises(ValueError, match="unknown scheme"):
        stage_sweep.parse_schemes("prm_max,prm_median")


@pytest.mark.slow
def test_tiny_chain_end_to_end(tmp_path):
    """sft -> prm (exact labels) -> ppo -> evals -> report on a tiny model; a second run
    recomputes nothing."""
    root = str(tmp_path / "chain")
    c = tiny_config()
    c.sft.steps = 20
    c.sft.eval_limit = 0
    c.rm.steps = 10
    c.rm.num_problems = 16
    c.rm.samples_per_problem = 2
    c.rm.eval_problems = 4
    c.rm.best_of_n = 2
    c.ppo.steps = 2
    c.ppo.rollout_batch = 8
    c.ppo.minibatches = 1
    c.checkpoint.every_steps = 1
    summary = stage_pipeline.run(c, root)
    for name in ("sft", "prm", "ppo", "eval_sft", "eval_ppo"):
        assert workdir_lib.is_done(os.path.join(root, name)), name
        assert not summary["timings"][name]["reused"]
    assert summary["ppo_runs"][0]["eval"]["n"] == 8
    assert os.path.isfile(os.path.join(root, "report.md"))
    # The PRM report judges the PRM on minimal pairs of the held-out problems too.
    prm_eval = workdir_lib.read_summary(os.path.join(root, "prm"))["eval"]
    assert 0.0 <= prm_eval["prm/flaw_detection_arithmetic"] <= 1.0
    assert -1.0 <= prm_eval["prm/best_of_2_min_minus_greedy"] <= 1.0  # paired against greedy
    assert "Flaw detection on minimal pairs" in open(os.path.join(root, "prm", "report.md")).read()
    os.remove(os.path.join(root, "summary.json"))  # force the chain to run again: all reused
    before = mtimes(os.path.join(root, "ppo"))
    again = stage_pipeline.run(c, root)
    assert all(t["reused"] for t in again["timings"].values())
    assert mtimes(os.path.join(root, "ppo")) == before
    assert again["ppo_runs"][0]["eval"] == summary["ppo_runs"][0]["eval"]
