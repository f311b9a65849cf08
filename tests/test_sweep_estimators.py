"""The sweep over reward schemes x advantage estimators: run folders (the default
estimator keeps the old names), the estimator and seconds-per-iteration columns, and the
estimator checks of validate."""
import os

import pytest

from jaxstep import config_lib
from jaxstep.metrics import MetricWriter
from jaxstep.reports import sweep as sweep_report
from jaxstep.stages import sweep as stage_sweep
from test_pipeline import adopt_fakes, fake_eval, fake_ppo, finished_chain, tiny_config, write_json  # noqa: F401


def fake_ppo_with_timings(folder, scheme, advantage, seconds):
    """A finished PPO stage whose iterations took `seconds` (the first one compiles)."""
    fake_ppo(folder, scheme)
    os.remove(os.path.join(folder, "metrics.jsonl"))
    with MetricWriter(folder, tensorboard=False, enabled=True) as writer:
        for step, s in enumerate(seconds, start=1):
            writer.write(step, {"score": 0.1, "reward": 0.1, "kl": 0.01, "rollout_accuracy": 0.3, "step_seconds": s})
    last = {"score": 0.3, "reward": 0.29, "kl": 0.03, "rollout_accuracy": 0.5, "rm_score": 0.7, "num_steps": 3.0}
    write_json(os.path.join(folder, "summary.json"),
               {"stage": "ppo", "scheme": scheme, "advantage": advantage, "export": os.path.join(folder, "export"),
                "first": last, "last": last, "kl_coef_final": 0.1})


def test_sweep_runs_scheme_by_estimator(tmp_path, adopt_fakes):
    root = str(tmp_path / "sweep")
    finished_chain(root, ppo_names={})
    fake_ppo_with_timings(os.path.join(root, "ppo_prm_max"), "prm_max", "gae", [9.0, 2.0, 3.0, 4.0])
    fake_ppo_with_timings(os.path.join(root, "ppo_prm_max_grpo_process"), "prm_max", "grpo_process", [7.0, 1.0, 2.0])
    fake_eval(os.path.join(root, "eval_prm_max"), [1] * 6 + [0] * 4)
    fake_eval(os.path.join(root, "eval_prm_max_grpo_process"), [1] * 7 + [0] * 3)
    config = tiny_config(stage="sweep")
    config.sweep.schemes = "prm_max"
    config.sweep.estimators = "gae, grpo_process"
    config.ppo.samples_per_prompt = 4
    config_lib.validate(config)
    summary = stage_sweep.run(config, root)
    assert all(t["reused"] for t in summary["timings"].values())
    assert {"ppo_prm_max", "eval_prm_max", "ppo_prm_max_grpo_process", "eval_prm_max_grpo_process"} <= set(
        summary["timings"])
    assert summary["estimators"] == ["gae", "grpo_process"]
    rows = summary["schemes"]
    assert list(rows) == ["prm_max", "prm_max_grpo_process"]
    assert (rows["prm_max"]["estimator"], rows["prm_max_grpo_process"]["estimator"]) == ("gae", "grpo_process")
    assert rows["prm_max"]["accuracy"] == pytest.approx(0.6)
    assert rows["prm_max_grpo_process"]["accuracy"] == pytest.approx(0.7)
    # Median of the iterations after the first: (2, 3, 4) -> 3; (1, 2) -> 1.5.
    assert rows["prm_max"]["seconds_per_iteration"] == pytest.approx(3.0)
    assert rows["prm_max_grpo_process"]["seconds_per_iteration"] == pytest.approx(1.5)
    report = open(os.path.join(root, "report.md")).read()
    table = [line for line in report.split("## Comparison")[1].split("##")[0].splitlines() if line.startswith("| ")]
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in table]
    assert cells[0][:2] == ["scheme", "estimator"] and cells[0][-1] == "s/iter."
    assert [(c[0], c[1], c[-1]) for c in cells[2:]] == [("SFT (start)", "", ""), ("prm_max", "gae", "3.00"),
                                                        ("prm_max", "grpo_process", "1.50")]


def test_rows_of_summaries_written_before_estimators():
    run = {"scheme": "orm", "eval": {"n": 4, "accuracy": 0.5, "se": 0.25}, "difference": {"diff": 0.1, "se": 0.1, "n": 4},
           "last": {}, "hacking_eval": {"num_steps": 3.0, "repeated_step_fraction": 0.0,
                                        "empty_step_fraction": 0.0, "response_length": 30.0}}
    rows = sweep_report.scheme_rows([run])
    assert list(rows) == ["orm"] and rows["orm"]["estimator"] == "gae"
    assert rows["orm"]["seconds_per_iteration"] is None


def test_parse_estimators_and_run_labels():
    assert stage_sweep.parse_estimators("gae, grpo,gae") == ["gae", "grpo"]
    with pytest.raises(ValueError, match="unknown estimator"):
        stage_sweep.parse_estimators("gae,ppo2")
    assert stage_sweep.run_label("orm", "gae") == "orm"
    assert stage_sweep.run_label("orm", "rloo") == "orm_rloo"


@pytest.mark.parametrize("stage,field,value,words", [
    ("pipeline", "ppo.advantage", "vtrace", "expected one of ('gae', 'grpo'"),
    ("sft", "ppo.advantage", "vtrace", "expected one of"),  # a name field: every stage
    ("pipeline", "ppo.loss_aggregation", "sum", "expected one of ('', 'token_mean'"),
    ("sweep", "sweep.estimators", "gae,vtrace", "unknown estimator(s) ['vtrace']"),
])
def test_validate_names_the_bad_estimator_field(stage, field, value, words):
    c = config_lib.ppo_experiment("prm_max")
    c.stage = stage
    section, name = field.split(".")
    c[section][name] = value
    with pytest.raises(ValueError) as e:
        config_lib.validate(c)
    assert f"{field}={value!r}" in str(e.value) and words in str(e.value)


@pytest.mark.parametrize("advantage", ["grpo", "rloo", "dr_grpo", "grpo_process"])
def test_group_estimators_need_several_samples_per_prompt(advantage):
    c = config_lib.ppo_experiment("clip_delta")
    c.ppo.advantage, c.ppo.samples_per_prompt = advantage, 1
    with pytest.raises(ValueError, match=r"ppo.samples_per_prompt=1: .*needs ppo.samples_per_prompt >= 2"):
        config_lib.validate(c)
    c.ppo.samples_per_prompt = 4
    config_lib.validate(c)
    c.ppo.critic_warmup_steps = 5
    with pytest.raises(ValueError, match="ppo.critic_warmup_steps=5: .*no critic"):
        config_lib.validate(c)
    c.ppo.critic_warmup_steps = 0
    c.stage = "sweep"
    c.sweep.estimators = f"gae,{advantage}"
    c.ppo.samples_per_prompt = 1
    with pytest.raises(ValueError, match="needs ppo.samples_per_prompt >= 2"):
        config_lib.validate(c)
    c.ppo.advantage = "reinforce_pp"  # a whole-batch baseline: one sample per prompt is fine
    c.stage, c.ppo.samples_per_prompt = "pipeline", 1
    config_lib.validate(c)


@pytest.mark.parametrize("stem,scheme,advantage", [("grpo_prm_clip_delta", "clip_delta", "grpo_process"),
                                                   ("grpo_orm", "orm", "grpo"), ("grpo_prm_min", "prm_min", "grpo")])
def test_grpo_files_are_the_main_job_without_a_critic(stem, scheme, advantage):
    from test_configs import get_config  # noqa: PLC0415
    for preset in ("", "paper"):
        c = get_config(stem, preset)
        p = c.ppo
        assert (c.name, c.stage, p.scheme, p.advantage) == (stem, "pipeline", scheme, advantage)
        assert (p.samples_per_prompt, p.kl_estimator) == (4, "k3")
        main = config_lib.ppo_experiment(scheme, preset)
        if preset != "paper":  # the CPU main job runs GRPO too (4 per prompt, k3, 1e-4)
            assert (main.ppo.advantage, main.ppo.samples_per_prompt, main.ppo.kl_estimator,
                    main.ppo.learning_rate, p.learning_rate) == ("grpo", 4, "k3", 1e-4, 1e-4)
            c.name, p.advantage = main.name, main.ppo.advantage
        else:
            c.name, p.advantage, p.samples_per_prompt, p.kl_estimator = (main.name, "gae", 1, "k1")
        assert c.to_dict() == main.to_dict()
