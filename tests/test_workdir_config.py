"""A finished (or started) run folder is reused only under the config it recorded
(`jaxstep.workdir`: run_config.json, `StaleWorkdirError`, `config.overwrite`): by hand on
folders, one tiny real SFT stage, and the main job's chain of fake stages."""
import json
import os

import pytest

from jaxstep import config_lib, paths
from jaxstep import workdir as workdir_lib
from jaxstep.stages import pipeline as stage_pipeline
from jaxstep.stages import sft as stage_sft
from test_pipeline import adopt_fakes, fake_eval, finished_chain, mtimes, tiny_config  # noqa: F401
from test_sft import tiny_config as tiny_sft_config

StaleWorkdirError = workdir_lib.StaleWorkdirError


def sft_config(**sft):
    c = config_lib.base_config("t", "sft")
    for key, value in sft.items():
        c.sft[key] = value
    return c


def finished(workdir, config, summary=None):
    """A stage run to its end in `workdir` under `config` (no training: its prologue and summary)."""
    assert workdir_lib.reuse_if_done(workdir, config.stage, config) is None
    return workdir_lib.write_summary(workdir, summary or {"stage": config.stage})


def assert_ways_on(message):
    assert "--workdir" in message and "--config.overwrite=True" in message


def test_the_config_is_recorded_when_the_stage_starts(tmp_path):
    workdir = str(tmp_path / "sft")
    c = sft_config(steps=2)
    assert workdir_lib.reuse_if_done(workdir, "sft", c) is None
    recorded = json.loads(open(os.path.join(workdir, "run_config.json")).read())
    assert recorded == workdir_lib.resolved_config(c) and recorded["sft"]["steps"] == 2
    assert recorded["mesh"]["rules"][0] == ["batch", ["data", "fsdp"]]  # tuples as JSON lists
    assert not workdir_lib.is_done(workdir)


def test_same_config_reuses(tmp_path):
    workdir = str(tmp_path / "sft")
    summary = finished(workdir, sft_config(steps=2), {"stage": "sft", "steps": 2})
    assert workdir_lib.reuse_if_done(workdir, "sft", sft_config(steps=2)) == summary


def test_changed_result_field_stops_before_any_work(tmp_path):
    workdir = str(tmp_path / "sft")
    finished(workdir, sft_config(steps=2))
    before = mtimes(workdir)
    with pytest.raises(StaleWorkdirError) as e:
        workdir_lib.reuse_if_done(workdir, "sft", sft_config(steps=400))
    message = str(e.value)
    assert workdir in message and "--config.sft.steps: recorded 2, now 400" in message
    assert "sft.learning_rate" not in message  # only the fields that differ
    assert_ways_on(message)
    assert isinstance(e.value, ValueError)
    assert mtimes(workdir) == before  # nothing written, nothing moved
    assert not any(name.startswith("sft.old") for name in os.listdir(tmp_path))


def test_changed_eval_model_names_both_values(tmp_path):
    workdir = str(tmp_path / "eval")
    c = config_lib.base_config("t", "eval")
    c.eval.model = "runs/a/export"
    finished(workdir, c)
    c.eval.model = "runs/b/export"
    with pytest.raises(StaleWorkdirError,
                       match='--config.eval.model: recorded "runs/a/export", now "runs/b/export"'):
        workdir_lib.reuse_if_done(workdir, "eval", c)


def test_excluded_fields_reuse(tmp_path):
    workdir = str(tmp_path / "eval")
    c = config_lib.base_config("t", "eval")
    summary = finished(workdir, c)
    c.name, c.workdir, c.overwrite = "other", str(tmp_path / "elsewhere"), True
    c.eval.batch_size, c.pipeline.eval_batch_size, c.eval.plots = 7, 9, False  # greedy only (pass_k 0)
    c.sft.log_every, c.rm.log_every, c.ppo.log_every = 3, 3, 3
    c.checkpoint.every_steps, c.checkpoint.keep = 3, 9
    c.distributed.coordinator_address, c.distributed.process_id = "host:1234", 0
    c.plan.topology = "v4-8"
    assert workdir_lib.reuse_if_done(workdir, "eval", c) == summary
    assert not os.path.exists(f"{workdir}.old-1")  # overwrite moves only a stale folder


def test_eval_batch_size_counts_when_the_eval_samples(tmp_path):
    c = config_lib.base_config("t", "eval")
    c.eval.pass_k = 4  # batch i samples with fold_in(key, i): the batch size changes the samples
    finished(str(tmp_path / "eval"), c)
    c.eval.batch_size = 7
    with pytest.raises(StaleWorkdirError, match="--config.eval.batch_size: recorded 128, now 7"):
        workdir_lib.reuse_if_done(str(tmp_path / "eval"), "eval", c)
    s = config_lib.base_config("t", "sft")  # no final eval in stage sft: never compared there
    s.eval.pass_k = 4
    summary = finished(str(tmp_path / "sft"), s)
    s.eval.batch_size = 7
    assert workdir_lib.reuse_if_done(str(tmp_path / "sft"), "sft", s) == summary
    # mesh fields are compared (the data-parallel size rounds decode batches).
    s.mesh.fsdp = 2
    with pytest.raises(StaleWorkdirError, match="--config.mesh.fsdp: recorded 1, now 2"):
        workdir_lib.reuse_if_done(str(tmp_path / "sft"), "sft", s)


def test_many_differences_are_cut_after_ten(tmp_path):
    workdir = str(tmp_path / "sft")
    finished(workdir, sft_config())
    c = sft_config(steps=1, batch_size=1, learning_rate=1.0, warmup_steps=1, weight_decay=0.5, b1=0.5,
                   b2=0.5, grad_clip=0.5, max_len=7, eval_every=1, eval_limit=1, end_lr_ratio=0.5)
    with pytest.raises(StaleWorkdirError) as e:
        workdir_lib.reuse_if_done(workdir, "sft", c)
    assert str(e.value).count("--config.sft.") == 10 and "and 2 more" in str(e.value)


def test_partial_folder_resumes_only_under_its_config(tmp_path):
    workdir = str(tmp_path / "sft")
    assert workdir_lib.reuse_if_done(workdir, "sft", sft_config(steps=2)) is None
    os.makedirs(os.path.join(workdir, "checkpoints", "1"))  # killed midway: a checkpoint, no summary
    assert workdir_lib.reuse_if_done(workdir, "sft", sft_config(steps=2)) is None  # resume
    with pytest.raises(StaleWorkdirError,
                       match=r"(?s)a started run .*not resumed.*--config.sft.steps: recorded 2, now 3"):
        workdir_lib.reuse_if_done(workdir, "sft", sft_config(steps=3))


def test_a_folder_with_only_its_config_starts_again(tmp_path):
    workdir = str(tmp_path / "eval")
    c = config_lib.base_config("t", "eval")
    c.eval.model = "runs/typo/export"
    assert workdir_lib.reuse_if_done(workdir, "eval", c) is None  # then failed: no such model
    c.eval.model = "runs/sft/export"
    assert workdir_lib.reuse_if_done(workdir, "eval", c) is None  # nothing was done: no error
    assert workdir_lib.read_config(workdir)["eval"]["model"] == "runs/sft/export"


@pytest.mark.parametrize("what", ["done", "checkpoints"])
def test_a_folder_of_an_older_version_without_config_is_not_reused(tmp_path, what):
    workdir = str(tmp_path / "sft")
    if what == "done":
        workdir_lib.write_summary(workdir, {"stage": "sft"})
    else:
        os.makedirs(os.path.join(workdir, "checkpoints", "4"))
    with pytest.raises(StaleWorkdirError) as e:
        workdir_lib.reuse_if_done(workdir, "sft", sft_config())
    assert workdir in str(e.value) and "no run_config.json" in str(e.value)
    assert_ways_on(str(e.value))
    assert not os.path.exists(os.path.join(workdir, "run_config.json"))
    c = sft_config(steps=3)
    c.overwrite = True
    assert workdir_lib.reuse_if_done(workdir, "sft", c) is None
    old = f"{workdir}.old-1"
    assert os.path.isdir(old) and not os.path.exists(os.path.join(old, "run_config.json"))


def test_overwrite_moves_the_folder_aside(tmp_path):
    workdir = str(tmp_path / "sft")
    finished(workdir, sft_config(steps=2), {"stage": "sft", "steps": 2})
    c = sft_config(steps=3)
    c.overwrite = True
    assert workdir_lib.reuse_if_done(workdir, "sft", c) is None  # the stage runs afresh
    assert workdir_lib.read_summary(f"{workdir}.old-1") == {"stage": "sft", "steps": 2}  # kept whole
    assert workdir_lib.read_config(f"{workdir}.old-1")["sft"]["steps"] == 2
    assert os.listdir(workdir) == ["run_config.json"] and workdir_lib.read_config(workdir)["sft"]["steps"] == 3
    workdir_lib.write_summary(workdir, {"stage": "sft", "steps": 3})
    c.sft.steps = 4  # again: the next free name
    assert workdir_lib.reuse_if_done(workdir, "sft", c) is None
    assert workdir_lib.read_summary(f"{workdir}.old-2")["steps"] == 3


def test_processes_follow_process_0(tmp_path, monkeypatch):
    """On process 1 the decision is process 0's (broadcast), and process 1 writes nothing."""
    workdir = str(tmp_path / "sft")
    finished(workdir, sft_config(steps=2))
    monkeypatch.setattr(workdir_lib, "is_main_process", lambda: False)
    monkeypatch.setattr(paths, "agree", lambda flag: True)  # process 0 found the folder stale
    with pytest.raises(StaleWorkdirError, match="holds the work of another config") as e:
        workdir_lib.reuse_if_done(workdir, "sft", sft_config(steps=2))
    assert_ways_on(str(e.value))
    monkeypatch.setattr(paths, "agree", lambda flag: False)  # process 0: not stale, not done
    assert workdir_lib.reuse_if_done(workdir, "sft", sft_config(steps=3)) is None
    assert workdir_lib.read_config(workdir)["sft"]["steps"] == 2  # process 1 did not write


def test_real_sft_stage_refuses_then_overwrites(tmp_path):
    workdir = str(tmp_path / "sft")
    assert stage_sft.run(tiny_sft_config(steps=2), workdir)["steps"] == 2
    assert workdir_lib.read_config(workdir)["sft"]["steps"] == 2
    c = tiny_sft_config(steps=3)
    with pytest.raises(StaleWorkdirError, match="--config.sft.steps: recorded 2, now 3"):
        stage_sft.run(c, workdir)
    c.sft.log_every = 1  # excluded: same result
    c.sft.steps = 2
    assert stage_sft.run(c, workdir)["steps"] == 2
    c.sft.steps, c.overwrite = 3, True
    assert stage_sft.run(c, workdir)["steps"] == 3
    assert workdir_lib.read_summary(f"{workdir}.old-1")["steps"] == 2
    assert workdir_lib.is_done(workdir) and workdir_lib.read_config(workdir)["sft"]["steps"] == 3


def test_chain_refuses_a_changed_prm_instead_of_reusing_it(tmp_path, adopt_fakes):
    root = str(tmp_path / "main")
    finished_chain(root)
    fake_eval(os.path.join(root, "eval_ppo"), [1, 0, 1, 0, 1, 1, 0, 0, 1, 0])
    first = stage_pipeline.run(tiny_config(), root)  # the fakes get their stages' configs recorded
    for name in ("", "sft", "prm", "eval_sft", "ppo", "eval_ppo"):
        assert workdir_lib.read_config(os.path.join(root, name)) is not None, name
    again = stage_pipeline.run(tiny_config(), root)  # the chain's summary is made again from its stages
    assert {k: v for k, v in again.items() if k != "seconds"} == {k: v for k, v in first.items() if k != "seconds"}
    before = mtimes(root)
    changed = tiny_config()
    changed.rm.steps += 1
    with pytest.raises(StaleWorkdirError) as e:
        stage_pipeline.run(changed, root)
    assert root in str(e.value) and f"--config.rm.steps: recorded {changed.rm.steps - 1}, now {changed.rm.steps}" \
        in str(e.value)
    assert mtimes(root) == before
    # Each stage compares its own config, which holds every section: the PRM and the PPO and
    # eval after it refuse too, so a retrained PRM is never followed by a reused PPO.
    chain = stage_pipeline.Chain(changed, root)
    policy = os.path.join(root, "sft", "export")
    for name, call in (("prm", lambda: chain.reward_model("prm", policy)),
                       ("ppo", lambda: chain.ppo("ppo", scheme="prm_max", policy=policy, seed=0,
                                                 reward_model=os.path.join(root, "prm", "export"))),
                       ("eval_ppo", lambda: chain.evaluate("eval_ppo", os.path.join(root, "ppo", "export"),
                                                           "PPO ppo"))):
        with pytest.raises(StaleWorkdirError, match=r"--config\.rm\.steps") as e:
            call()
        assert os.path.join(root, name) in str(e.value)
    # Excluded fields reuse the finished chain; the final evals' batch does not, as they
    # sample (eval.pass_k > 0 in the main job).
    same = tiny_config()
    same.ppo.log_every, same.checkpoint.every_steps, same.eval.plots = 5, 3, False
    same.pipeline.seeds = 1  # read by the chain alone: no chained stage compares it
    assert stage_pipeline.run(same, root)["ppo_runs"] == first["ppo_runs"]
    assert tiny_config().eval.pass_k > 0
    same.pipeline.eval_batch_size = 4  # the final evals get it as eval.batch_size
    with pytest.raises(StaleWorkdirError, match="--config.eval.batch_size: recorded 8, now 4"):
        stage_pipeline.run(same, root)


def test_legacy_chain_without_configs_is_refused(tmp_path):
    root = str(tmp_path / "main")
    finished_chain(root)  # fake stages of an older version: no run_config.json anywhere
    with pytest.raises(StaleWorkdirError, match="no run_config.json"):
        stage_pipeline.run(tiny_config(), root)


def test_move_on_a_fake_bucket(tmp_path):
    import fake_bucket  # noqa: PLC0415
    root = fake_bucket.install(tmp_path / "gcs")
    try:
        paths.write_text("gs://bucket/run/sft/summary.json", "{}")
        paths.write_text("gs://bucket/run/sft/checkpoints/1/x", "1")
        assert paths.move("gs://bucket/run/sft", "gs://bucket/run/sft.old-1") == "gs://bucket/run/sft.old-1"
        assert not paths.exists("gs://bucket/run/sft")
        assert open(os.path.join(root, "bucket/run/sft.old-1/checkpoints/1/x")).read() == "1"
        with pytest.raises(FileExistsError):
            paths.move("gs://bucket/run/sft.old-1", "gs://bucket/run/sft.old-1")
    finally:
        fake_bucket.uninstall()
