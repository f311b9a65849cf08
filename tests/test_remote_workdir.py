"""gs:// workdirs: every file a stage reads or writes goes through `jaxstep.paths`, so a
run in a bucket works like a local one (a fake bucket: `tests/fake_bucket.py`), and on
several hosts only process 0 writes while every process makes the same reuse decisions.
Also: the count of skipped data records reaches the stages' summaries."""
import json
import os
import sys

import pytest

import fake_bucket
from jaxstep import config_lib, paths
from jaxstep import workdir as workdir_lib
from jaxstep.data import sources
from jaxstep.metrics import read_metrics
from jaxstep.stages import evaluate as stage_eval
from jaxstep.stages import sft as stage_sft
from run_helpers import REPO_ROOT, Launch, child_env, tiny_model

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def bucket(tmp_path):
    """`gs://bucket/...` backed by `<tmp>/gcs/bucket/...` for the test's duration."""
    root = fake_bucket.install(tmp_path / "gcs")
    yield root
    fake_bucket.uninstall()


def tiny_sft_config():
    c = config_lib.base_config("test_remote", "sft")
    tiny_model(c, max_position_embeddings=256)
    c.data.num_train = 64
    c.data.num_eval = 4
    c.data.synthetic_max_steps = 2
    c.data.max_prompt_len = 64
    c.data.max_response_len = 24
    c.sft.steps = 6
    c.sft.batch_size = 8
    c.sft.log_every = 2
    c.sft.eval_every = 0
    c.sft.eval_limit = 4
    c.checkpoint.every_steps = 3
    return c


def test_paths_layer_on_a_fake_bucket(bucket):
    url = "gs://bucket/run/x/a.json"
    assert paths.is_remote(url) and not paths.is_remote("runs/x")
    assert paths.join("gs://bucket/run", "x", "a.json") == url
    assert paths.parent(url) == "gs://bucket/run/x" and paths.absolute("gs://bucket/run/") == "gs://bucket/run"
    paths.write_text(url, "{}")
    assert paths.isfile(url) and paths.isdir("gs://bucket/run/x") and not paths.exists("gs://bucket/no")
    assert open(os.path.join(bucket, "bucket/run/x/a.json")).read() == "{}"
    staged = paths.Staged("gs://bucket/run/x/lines.jsonl")
    with open(staged.local, "a") as f:
        f.write("1\n")
    staged.push()
    again = paths.Staged("gs://bucket/run/x/lines.jsonl")  # resumes from the bucket's copy
    with open(again.local, "a") as f:
        f.write("2\n")
    again.push()
    assert paths.read_text("gs://bucket/run/x/lines.jsonl") == "1\n2\n"
    local = paths.local_copy("gs://bucket/run/x")
    assert not paths.is_remote(local) and open(os.path.join(local, "a.json")).read() == "{}"
    assert paths.local_copy("gs://bucket/run/x") == local  # downloaded once
    assert paths.agree(True) and not paths.agree(False)  # one process: its own flag


def test_sft_and_eval_stages_in_a_bucket(bucket, tmp_path, monkeypatch):
    """SFT and eval with gs:// workdirs: summary, HF export, metrics, TensorBoard, report,
    samples and plots land in the bucket, the eval loads the SFT export from it, and a
    second run reuses both stages. Nothing local is made from the URL (no `gs:` folder)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    run = "gs://bucket/run"
    sft_dir, eval_dir = f"{run}/sft", f"{run}/eval_sft"
    summary = stage_sft.run(tiny_sft_config(), sft_dir)
    local = os.path.join(bucket, "bucket", "run")
    assert summary["export"] == f"{sft_dir}/export" and summary["data_skipped"] == 0
    for name in ("summary.json", "metrics.jsonl", "export/config.json", "export/model.safetensors",
                 "export/tokenizer.json"):
        assert os.path.isfile(os.path.join(local, "sft", name)), name
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(local, "sft", "tb", "sft")))
    assert os.listdir(os.path.join(local, "sft", "checkpoints"))  # Orbax, beside the rest
    rows = read_metrics(f"{sft_dir}/metrics.jsonl")
    assert [r["step"] for r in rows if "loss" in r] == [2, 4, 6]
    assert not [p for p in os.listdir(os.path.join(local, "sft")) if p.endswith(".tmp")]

    c = config_lib.base_config("test_remote", "eval")
    tiny_model(c, max_position_embeddings=256)
    c.data.num_train = 64
    c.eval.model = summary["export"]
    c.eval.limit = 4
    c.eval.batch_size = 4
    c.eval.max_new_tokens = 8
    evaluated = stage_eval.run(c, eval_dir)
    assert evaluated["data_skipped"] == 0 and evaluated["report"] == f"{eval_dir}/report.md"
    for name in ("summary.json", "samples.jsonl", "report.md", "accuracy.png", "training_curves.png"):
        assert os.path.isfile(os.path.join(local, "eval_sft", name)), name
    with open(os.path.join(local, "eval_sft", "accuracy.png"), "rb") as f:
        assert f.read(8) == PNG_MAGIC
    assert "](accuracy.png)" in paths.read_text(f"{eval_dir}/report.md")

    assert workdir_lib.is_done(sft_dir) and workdir_lib.is_done(eval_dir)
    assert stage_sft.run(tiny_sft_config(), sft_dir) == summary  # reused, read from the bucket
    assert stage_eval.run(c, eval_dir) == evaluated
    assert os.listdir(cwd) == []


def test_skipped_records_are_counted_in_the_loaded_problems(shared_data):
    """MATH train holds two records whose last \\boxed{} is empty: skipped and counted,
    also through a weighted mix (what the SFT/PPO/eval summaries report as data_skipped)."""
    c = config_lib.base_config("test_remote", "sft")
    c.data.data_dir = str(shared_data)
    problems = sources.load_problems(c, "math", "train")
    assert problems.skipped == 2 and sources.skipped_count(problems) == 2
    mixed = sources.load_problems(c, "gsm8k:0.5,math:0.5", "train", limit=50)
    assert len(mixed) == 50 and mixed.skipped == 2
    assert sources.load_problems(c, "gsm8k", "test", limit=5).skipped == 0
    assert sources.skipped_count([1, 2], problems) == 2


MAIN_OVERRIDES = {
    "data.num_train": 200, "data.max_prompt_len": 64, "data.max_response_len": 24,
    "model.hidden_size": 32, "model.num_layers": 2, "model.num_heads": 2, "model.num_kv_heads": 1,
    "model.intermediate_size": 64,
    "sft.steps": 12, "sft.eval_limit": 0, "sft.batch_size": 8,
    "rm.steps": 6, "rm.num_problems": 8, "rm.samples_per_problem": 2, "rm.eval_problems": 4,
    "rm.best_of_n": 2, "rm.batch_size": 8,
    "ppo.steps": 2, "ppo.rollout_batch": 8, "ppo.minibatches": 1, "ppo.eval_limit": 4,
    # The critic's GAE, the main job's estimator when this test was written (the main job
    # with GRPO in two processes is not run here: its PPO stage would take as long again).
    "ppo.advantage": "gae", "ppo.samples_per_prompt": 1, "ppo.kl_estimator": "k1",
    "pipeline.eval_limit": 8, "pipeline.eval_batch_size": 8, "checkpoint.every_steps": 2,
}


@pytest.mark.slow
def test_main_job_in_two_processes_sharing_a_bucket(tmp_path):
    """The whole main job (sft -> prm -> evals -> ppo -> report) by two jax.distributed
    processes with one gs:// workdir: process 0 writes, both finish, and a rerun of both
    reuses every stage (the reuse decision is process 0's on both). Nothing treats the
    URL as a local path: no `gs:` folder appears in the processes' working directory."""
    root, cwd = tmp_path / "gcs", tmp_path / "cwd"
    cwd.mkdir()
    workdir = "gs://bucket/main"
    cmd = [sys.executable, str(REPO_ROOT / "tests" / "fake_bucket.py"), str(root),
           f"--config={REPO_ROOT / 'configs' / 'ppo_prm_max.py'}", f"--workdir={workdir}",
           *[f"--config.{k}={v}" for k, v in MAIN_OVERRIDES.items()]]
    _wait_all(_launch_in(cwd, cmd, tmp_path, "main"))
    assert sorted(os.listdir(cwd)) == [], sorted(os.listdir(cwd))  # e.g. a local `gs:/bucket/main`
    local = root / "bucket" / "main"
    summary = json.loads((local / "summary.json").read_text())
    assert (local / "report.md").is_file()
    for name in ("sft", "prm", "eval_sft", "ppo", "eval_ppo"):
        assert (local / name / "summary.json").is_file(), name
        assert not summary["timings"][name]["reused"], name
    assert (local / "ppo" / "export" / "model.safetensors").is_file()
    assert (local / "prm" / "export" / "reward_model.json").is_file()
    assert (local / "prm" / "data" / "info.json").is_file()
    for name in ("sft", "prm", "ppo"):  # one writer: every step logged once
        steps = [r["step"] for r in map(json.loads, (local / name / "metrics.jsonl").read_text().splitlines())
                 if "loss" in r or "score" in r]
        assert len(steps) == len(set(steps)) and steps, name
    assert summary["ppo_runs"][0]["eval"]["n"] == 8

    for f in (local / "summary.json",):
        f.unlink()  # the chain runs again: every stage reused
    _wait_all(_launch_in(cwd, cmd, tmp_path, "again"))
    rerun = json.loads((local / "summary.json").read_text())
    assert all(t["reused"] for t in rerun["timings"].values()), rerun["timings"]
    assert sorted(os.listdir(cwd)) == [], sorted(os.listdir(cwd))


# The whole main job twice in two processes: past run_helpers' 300 s on a busy machine.
MAIN_JOB_TIMEOUT_S = 1800


def _wait_all(launches: list[Launch]) -> None:
    """`test_distributed_ppo.wait_all` with the main job's time limit."""
    try:
        for launch in launches:
            rc = launch.wait(timeout=MAIN_JOB_TIMEOUT_S)
            assert rc == 0, f"rc {rc}:\n" + "\n".join(l.tail(3000) for l in launches)
    finally:
        for launch in launches:
            launch.kill()


def _launch_in(cwd, cmd, log_dir, name: str, count: int = 2) -> list[Launch]:
    """`test_distributed_ppo.launch_processes` with the processes started in `cwd`."""
    from test_distributed_ppo import _free_port
    port = _free_port()
    return [Launch(cmd, child_env(1, JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                                  JAX_NUM_PROCESSES=str(count), JAX_PROCESS_ID=str(pid)),
                   log_dir, f"{name}{pid}", cwd=cwd) for pid in range(count)]
