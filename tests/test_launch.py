"""launch/tpu.sh and launch/slurm_gpu.sh against fake gcloud/sbatch/srun/scontrol on PATH.

With FAKE_GCLOUD_EXEC=1 the fake gcloud also plays the TPU worker: `scp` copies into
$FAKE_REMOTE_HOME, `ssh --command` runs the command there with bash, and `storage
rsync` copies from $FAKE_GCS_ROOT/<bucket>/<path>; a fake `python3` (the image's 3.10)
and the venv python it "creates" record what they are asked to do.
"""
import json
import os
import pathlib
import stat
import subprocess
import sys
import textwrap

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
TPU_SH = REPO_ROOT / "launch" / "tpu.sh"
SLURM_SH = REPO_ROOT / "launch" / "slurm_gpu.sh"
# The launchers only check that the config file exists; setup.py always does.
CONFIG = "setup.py:paper"

# Each fake appends one JSON line {"tool", "argv", ...} to $FAKE_LOG.
_FAKES = {
    "gcloud": """
        import json, os, shutil, subprocess, sys, tarfile
        argv = sys.argv[1:]
        record = {"tool": "gcloud", "argv": argv}
        if "scp" in argv:
            source = argv[argv.index("scp") + 1]
            with tarfile.open(source) as tar:
                record["members"] = sorted(m.name for m in tar.getmembers())
        with open(os.environ["FAKE_LOG"], "a") as log:
            log.write(json.dumps(record) + "\\n")
        if os.environ.get("FAKE_GCLOUD_EXEC"):
            home = os.environ["FAKE_REMOTE_HOME"]
            if "scp" in argv:
                dest = argv[argv.index("scp") + 2].split(":", 1)[1]
                shutil.copy(source, os.path.join(home, dest))
            elif "ssh" in argv:
                command = [a for a in argv if a.startswith("--command=")][0][len("--command="):]
                env = dict(os.environ, HOME=home)
                sys.exit(subprocess.run(["bash", "-c", command], cwd=home, env=env).returncode)
            elif argv[:2] == ["storage", "rsync"]:
                assert argv[2] == "--recursive", argv
                source = os.path.join(os.environ["FAKE_GCS_ROOT"], argv[3][len("gs://"):])
                shutil.copytree(source, argv[4], dirs_exist_ok=True)
        if "describe" in argv:
            state = os.environ.get("FAKE_TPU_STATE")
            if not state:
                print("ERROR: (gcloud.compute.tpus.tpu-vm.describe) NOT_FOUND", file=sys.stderr)
                sys.exit(1)
            print(state)
    """,
    "sbatch": """
        import json, os, sys
        script = sys.argv[-1]
        with open(os.environ["FAKE_LOG"], "a") as log:
            log.write(json.dumps({"tool": "sbatch", "argv": sys.argv[1:],
                                  "script": open(script).read()}) + "\\n")
        print("Submitted batch job 42")
    """,
    "scontrol": """
        import sys
        assert sys.argv[1:3] == ["show", "hostnames"], sys.argv
        print("gpu-node-07\\ngpu-node-08")
    """,
    "srun": """
        # Starts SLURM_NTASKS copies of the command, as srun does across the nodes.
        import json, os, subprocess, sys
        argv = sys.argv[1:]
        options = [a for a in argv[:next(i for i, a in enumerate(argv) if not a.startswith("-"))]]
        command = argv[len(options):]
        with open(os.environ["FAKE_LOG"], "a") as log:
            log.write(json.dumps({"tool": "srun", "argv": argv}) + "\\n")
        per_node = int([o for o in options if o.startswith("--ntasks-per-node=")][0].split("=")[1])
        for rank in range(int(os.environ["SLURM_NTASKS"])):
            env = dict(os.environ, SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank % per_node))
            subprocess.run(command, env=env, check=True)
    """,
    "fakepython": """
        import json, os, sys
        if sys.argv[1:2] == ["-c"]:  # the job's version check: answer as this Python
            os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
        env = {k: v for k, v in os.environ.items() if k.startswith("JAX_")}
        with open(os.environ["FAKE_LOG"], "a") as log:
            log.write(json.dumps({"tool": "python", "argv": sys.argv[1:], "env": env,
                                  "cwd": os.getcwd()}) + "\\n")
    """,
}


@pytest.fixture
def fake_env(tmp_path):
    """Environment with the fakes first on PATH; returns (env, read_log)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in _FAKES.items():
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    # Python 3.10, as on clusters with an old system python: fails the job's check.
    old = bin_dir / "python310"
    old.write_text(f"#!{sys.executable}\nimport sys\nsys.version_info = (3, 10, 12, 'final', 0)\n"
                   "exec(sys.argv[2]) if sys.argv[1] == '-c' else sys.exit(0)\n")
    old.chmod(old.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "calls.jsonl"
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_LOG": str(log),
           "USER": "tester", "HOME": str(tmp_path), "LANG": "C"}

    def read_log():
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines()]

    return env, read_log


def run_script(script, args, env, cwd=None):
    return subprocess.run(["bash", str(script), *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def tpu_args(*flags):
    """Full tpu.sh command line: common flags, `flags`, then quoted main args after `--`."""
    return ["--name", "rl-pod", "--zone", "us-central2-b", "--project", "my-proj",
            "--accelerator-type", "v4-32", "--version", "tpu-ubuntu2204-base",
            "--config", CONFIG, "--workdir", "gs://bucket/runs/ppo",
            "--extra-args", "--config.ppo.kl_coef=0.05", *flags, "--", "--config.name=prm max"]


def test_tpu_creates_when_describe_fails(fake_env):
    env, read_log = fake_env
    result = run_script(TPU_SH, tpu_args("--spot"), env)
    assert result.returncode == 0, result.stderr
    calls = [c["argv"] for c in read_log()]
    assert [c[3] for c in calls] == ["describe", "create", "scp", "ssh", "ssh"]
    location = ["--zone=us-central2-b", "--project=my-proj"]
    assert calls[0][:5] == ["compute", "tpus", "tpu-vm", "describe", "rl-pod"]
    assert calls[1] == ["compute", "tpus", "tpu-vm", "create", "rl-pod", *location,
                        "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base", "--spot"]
    scp = calls[2]
    assert scp[5:] == ["rl-pod:jaxstep.tar.gz", *location, "--worker=all"]
    members = read_log()[2]["members"]
    assert "./setup.py" in members and "./jaxstep/main.py" in members
    assert "./launch/tpu.sh" in members
    assert not any(m.startswith("./.git/") or "__pycache__" in m for m in members)
    install, main = calls[3], calls[4]
    for ssh in (install, main):
        assert ssh[4:8] == ["rl-pod", *location, "--worker=all"]
    assert "tar -xzf jaxstep.tar.gz -C jaxstep" in install[8]
    # The image's python3 is 3.10: uv makes a 3.11 venv and jaxstep goes into it.
    assert "; python3 -m pip install --user -q --upgrade uv;" in install[8]
    assert ("|| python3 -m uv venv --clear --seed --python 3.11 .venv; "
            ".venv/bin/python -m pip install -q --upgrade pip; "
            ".venv/bin/python -m pip install -q -e '.[tpu]'") in install[8]
    assert "sys.version_info[:2] != (3, 11)" in install[8]
    assert main[8] == ("--command=cd jaxstep && export JAXSTEP_DISTRIBUTED=1 && .venv/bin/python -m "
                       "jaxstep.main --config=setup.py:paper --workdir=gs://bucket/runs/ppo "
                       "--config.ppo.kl_coef=0.05 '--config.name=prm max'")
    for ssh in (install, main):  # the remote commands are valid shell
        assert subprocess.run(["bash", "-n", "-c", ssh[8][len("--command="):]]).returncode == 0


def test_tpu_reuses_existing_vm(fake_env):
    env, read_log = fake_env
    env["FAKE_TPU_STATE"] = "READY"
    result = run_script(TPU_SH, tpu_args("--skip-install", "--detach"), env)
    assert result.returncode == 0, result.stderr
    calls = [c["argv"] for c in read_log()]
    assert [c[3] for c in calls] == ["describe", "ssh"]
    assert "reusing TPU rl-pod" in result.stderr
    command = calls[1][-1]
    assert command.startswith("--command=cd jaxstep && export JAXSTEP_DISTRIBUTED=1 && nohup ")
    assert "> rl-pod.log 2>&1 < /dev/null &" in command


def test_tpu_recreates_preempted_spot_vm(fake_env):
    env, read_log = fake_env
    env["FAKE_TPU_STATE"] = "PREEMPTED"
    result = run_script(TPU_SH, tpu_args("--spot", "--skip-install"), env)
    assert result.returncode == 0, result.stderr
    calls = [c["argv"] for c in read_log()]
    assert [c[3] for c in calls] == ["describe", "delete", "create", "ssh"]
    assert "--quiet" in calls[1]


def test_tpu_dry_run_prints_and_runs_nothing(fake_env):
    env, read_log = fake_env
    result = run_script(TPU_SH, tpu_args("--preemptible", "--dry-run"), env)
    assert result.returncode == 0, result.stderr
    assert read_log() == []
    lines = result.stdout.splitlines()
    assert lines[0].startswith("gcloud compute tpus tpu-vm describe rl-pod --zone=us-central2-b")
    assert any(line.startswith("gcloud compute tpus tpu-vm create rl-pod") and
               line.endswith("--preemptible") for line in lines)
    assert any(" scp " in line and line.endswith("--worker=all") for line in lines)
    assert sum(" ssh rl-pod " in line for line in lines) == 2


def _fake_data(folder):
    (folder / "gsm8k").mkdir(parents=True)
    (folder / "gsm8k" / "test.jsonl").write_text('{"question": "Q?", "answer": "1+1=2\\n#### 2"}\n')
    (folder / "math").mkdir()
    (folder / "math" / "test.jsonl").write_text("{}\n")
    return folder


def test_tpu_data_from_gcs(fake_env):
    env, read_log = fake_env
    result = run_script(TPU_SH, tpu_args("--skip-install", "--data", "gs://my-bucket/jaxstep data"), env)
    assert result.returncode == 0, result.stderr
    calls = [c["argv"] for c in read_log()]
    assert [c[3] for c in calls] == ["describe", "create", "ssh", "ssh"]
    stage, main = calls[2][-1], calls[3][-1]
    assert calls[2][4:8] == ["rl-pod", "--zone=us-central2-b", "--project=my-proj", "--worker=all"]
    assert stage == ('--command=set -e; mkdir -p "$HOME"/jaxstep-data; gcloud storage rsync '
                     '--recursive \'gs://my-bucket/jaxstep data\' "$HOME"/jaxstep-data')
    assert ('--workdir=gs://bucket/runs/ppo --config.data.data_dir="$HOME"/jaxstep-data '
            "--config.ppo.kl_coef=0.05 '--config.name=prm max'") in main


def test_tpu_data_from_local_folder(fake_env, tmp_path):
    env, read_log = fake_env
    data = _fake_data(tmp_path / "my data")
    result = run_script(TPU_SH, tpu_args("--skip-install", "--data", str(data),
                                         "--remote-data", "/mnt/disks/data"), env)
    assert result.returncode == 0, result.stderr
    log = read_log()
    calls = [c["argv"] for c in log]
    assert [c[3] for c in calls] == ["describe", "create", "scp", "ssh", "ssh"]
    assert calls[2][5:] == ["rl-pod:jaxstep-data.tar.gz", "--zone=us-central2-b",
                            "--project=my-proj", "--worker=all"]
    assert {"./gsm8k/test.jsonl", "./math/test.jsonl"} <= set(log[2]["members"])
    assert calls[3][-1] == ("--command=set -e; mkdir -p /mnt/disks/data; tar -xzf jaxstep-data.tar.gz "
                            "-C /mnt/disks/data; rm -f jaxstep-data.tar.gz")
    assert "--config.data.data_dir=/mnt/disks/data " in calls[4][-1]


def test_tpu_dry_run_shows_install_and_data(fake_env, tmp_path):
    env, read_log = fake_env
    data = _fake_data(tmp_path / "data")
    result = run_script(TPU_SH, tpu_args("--dry-run", "--python-version", "3.12", "--data", str(data)), env)
    assert result.returncode == 0, result.stderr
    assert read_log() == []
    lines = result.stdout.splitlines()
    assert any(line.startswith("tar -czf ") and line.endswith(f"jaxstep-data.tar.gz -C {data} .")
               for line in lines)
    assert sum(line.startswith("gcloud compute tpus tpu-vm scp ") for line in lines) == 2
    install = next(line for line in lines if "uv venv" in line)
    assert "python3 -m uv venv --clear --seed --python 3.12 .venv" in install
    assert ".venv/bin/python -m pip install -q -e" in install
    assert "--config.data.data_dir=\"$HOME\"/jaxstep-data" in lines[-1]
    assert " .venv/bin/python -m jaxstep.main " in lines[-1]


_WORKER_FAKES = {  # on the fake TPU worker: the image's python3 (3.10) and uv's venv python
    "python3": """
        import json, os, pathlib, sys
        argv = sys.argv[1:]
        with open(os.environ["FAKE_LOG"], "a") as log:
            log.write(json.dumps({"tool": "python3", "argv": argv, "cwd": os.getcwd()}) + "\\n")
        if argv[:3] == ["-m", "uv", "venv"]:
            version = argv[argv.index("--python") + 1]
            venv_python = pathlib.Path(argv[-1]) / "bin" / "python"
            venv_python.parent.mkdir(parents=True, exist_ok=True)
            venv_python.write_text(pathlib.Path(os.environ["FAKE_VENV_PYTHON"]).read_text()
                                   .replace("VERSION", repr(tuple(map(int, version.split("."))))))
            venv_python.chmod(0o755)
    """,
    "venv_python": """
        import json, os, sys
        if sys.argv[1] == "-c":
            sys.version_info = VERSION + (0, "final", 0)
            exec(sys.argv[2])
            sys.exit(0)
        with open(os.environ["FAKE_LOG"], "a") as log:
            log.write(json.dumps({"tool": "venv-python", "version": VERSION, "argv": sys.argv[1:],
                                  "cwd": os.getcwd()}) + "\\n")
    """,
}


def test_tpu_commands_run_on_a_fake_worker(fake_env, tmp_path):
    """Runs the remote commands for real: venv made once (and again for a new
    version), jaxstep installed into it, data staged, main started from the venv."""
    env, read_log = fake_env
    bin_dir = tmp_path / "worker-bin"
    bin_dir.mkdir()
    for name, body in _WORKER_FAKES.items():
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
        path.chmod(0o755)
    remote_home = tmp_path / "worker"
    remote_home.mkdir()
    gcs = tmp_path / "gcs"
    _fake_data(gcs / "bucket" / "data")
    env = dict(env, PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", FAKE_GCLOUD_EXEC="1",
               FAKE_REMOTE_HOME=str(remote_home), FAKE_GCS_ROOT=str(gcs),
               FAKE_VENV_PYTHON=str(bin_dir / "venv_python"), FAKE_TPU_STATE="READY")

    def launch(*flags):
        before = len(read_log())
        result = run_script(TPU_SH, tpu_args(*flags), env)
        assert result.returncode == 0, result.stderr
        return [c for c in read_log()[before:] if c["tool"] != "gcloud"]

    code = remote_home / "jaxstep"
    calls = launch("--data", "gs://bucket/data")
    assert [c["argv"][:3] for c in calls] == [
        ["-m", "pip", "install"], ["-m", "uv", "venv"], ["-m", "pip", "install"],
        ["-m", "pip", "install"], ["-m", "jaxstep.main", "--config=setup.py:paper"]]
    assert calls[1]["argv"] == ["-m", "uv", "venv", "--clear", "--seed", "--python", "3.11", ".venv"]
    assert [c["tool"] for c in calls] == ["python3", "python3", "venv-python", "venv-python", "venv-python"]
    assert calls[3]["argv"] == ["-m", "pip", "install", "-q", "-e", ".[tpu]"]
    assert all(c["cwd"] == str(code) for c in calls) and (code / "setup.py").is_file()
    main = calls[-1]
    assert main["version"] == [3, 11]
    assert main["argv"][4:] == [f"--config.data.data_dir={remote_home}/jaxstep-data",
                                "--config.ppo.kl_coef=0.05", "--config.name=prm max"]
    assert (remote_home / "jaxstep-data" / "gsm8k" / "test.jsonl").is_file()

    # Again: the 3.11 venv is kept; a local data folder is copied over.
    local = _fake_data(tmp_path / "local-data")
    (local / "math" / "train.jsonl").write_text("{}\n")
    calls = launch("--data", str(local))
    assert [c["argv"][:3] for c in calls if c["tool"] == "python3"] == [["-m", "pip", "install"]]
    assert (remote_home / "jaxstep-data" / "math" / "train.jsonl").is_file()
    assert not (remote_home / "jaxstep-data.tar.gz").exists()

    # A different --python-version makes a new venv.
    calls = launch("--python-version", "3.12")
    assert ["-m", "uv", "venv", "--clear", "--seed", "--python", "3.12", ".venv"] in [c["argv"] for c in calls]
    assert calls[-1]["version"] == [3, 12] and not any("data_dir" in a for a in calls[-1]["argv"])


@pytest.mark.parametrize("args, message", [
    (["--config", CONFIG], "--zone is required"),
    (["--zone", "z"], "--config is required"),
    (["--zone", "z", "--config", "configs/no_such_config.py"], "not found"),
    (["--zone", "z", "--config", CONFIG, "--spot", "--preemptible"], "exclusive"),
    (["--zone", "z", "--config", CONFIG, "--bogus"], "unknown argument"),
    (["--zone", "z", "--config", CONFIG, "--python-version", "3.10"], "3.11 or newer"),
    (["--zone", "z", "--config", CONFIG, "--python-version", "3.11.4"], "MAJOR.MINOR"),
    (["--zone", "z", "--config", CONFIG, "--data", "s3://bucket/data"], "gs://bucket/path or a local folder"),
    (["--zone", "z", "--config", CONFIG, "--data", "/no/such/folder"], "not found"),
])
def test_tpu_rejects_bad_flags(fake_env, args, message):
    env, read_log = fake_env
    result = run_script(TPU_SH, args, env)
    assert result.returncode == 2 and message in result.stderr
    assert read_log() == []


def test_help(fake_env):
    env, _ = fake_env
    for script in (TPU_SH, SLURM_SH):
        result = run_script(script, ["-h"], env)
        assert result.returncode == 0 and result.stdout.startswith("Usage:")
        assert "--dry-run" in result.stdout
        assert "set -euo pipefail" in script.read_text()


def _slurm_job_env(env, ntasks):
    """The variables SLURM sets in a job of two nodes."""
    return dict(env, SLURM_JOB_NODELIST="gpu-node-[07-08]", SLURM_NTASKS=str(ntasks),
                SLURM_JOB_ID="42")


def test_slurm_sbatch_script_sets_coordinator(fake_env, tmp_path):
    env, read_log = fake_env
    workdir = tmp_path / "run"
    args = ["--config", CONFIG, "--workdir", str(workdir), "--nodes", "2",
            "--gpus-per-node", "4", "--partition", "gpu", "--time", "2:00:00",
            "--account", "lab", "--job-name", "ppo", "--port", "23456",
            "--python", "fakepython", "--setup", "export SETUP_RAN=1",
            "--extra-args", "--config.ppo.kl_coef=0.05", "--", "--config.name=prm max"]
    result = run_script(SLURM_SH, args, env)
    assert result.returncode == 0, result.stderr
    (submit,) = read_log()
    assert submit["tool"] == "sbatch"
    script_path = pathlib.Path(submit["argv"][-1])
    assert script_path.parent == workdir / "slurm" and script_path.suffix == ".sbatch"
    script = submit["script"]
    for line in ["#SBATCH --job-name=ppo", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1",
                 "#SBATCH --gpus-per-node=4", "#SBATCH --partition=gpu",
                 "#SBATCH --time=2:00:00", "#SBATCH --account=lab",
                 f"#SBATCH --output={workdir}/slurm/%x-%j.out", "set -euo pipefail"]:
        assert line in script.splitlines()
    assert (workdir / "slurm").is_dir()  # SLURM needs the --output folder to exist

    # Run the job script as SLURM would on the first node (2 tasks, one per node).
    log_before = len(read_log())
    job = subprocess.run(["bash", str(script_path)], env=_slurm_job_env(env, 2),
                         capture_output=True, text=True, timeout=60)
    assert job.returncode == 0, job.stderr
    calls = read_log()[log_before:]
    assert [c["tool"] for c in calls] == ["srun", "python", "python"]
    assert calls[0]["argv"][:3] == ["--nodes=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    for rank, call in enumerate(calls[1:]):
        assert call["env"] == {"JAX_COORDINATOR_ADDRESS": "gpu-node-07:23456",
                               "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(rank)}
        assert call["argv"] == ["-m", "jaxstep.main", "--config=setup.py:paper",
                                f"--workdir={workdir}", "--config.ppo.kl_coef=0.05",
                                "--config.name=prm max"]
        assert call["cwd"] == str(REPO_ROOT)


def test_slurm_srun_one_process_per_gpu(fake_env, tmp_path):
    env, read_log = fake_env
    args = ["--config", CONFIG, "--workdir", str(tmp_path / "run"), "--gpus-per-node", "2",
            "--tasks-per-node", "2", "--python", "fakepython", "--srun",
            "--script", str(tmp_path / "job.sh")]
    result = subprocess.run(["bash", str(SLURM_SH), *args], env=_slurm_job_env(env, 2),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    calls = read_log()
    assert [c["tool"] for c in calls] == ["srun", "python", "python"]
    assert [c["env"]["JAX_LOCAL_DEVICE_IDS"] for c in calls[1:]] == ["0", "1"]
    assert [c["env"]["JAX_PROCESS_ID"] for c in calls[1:]] == ["0", "1"]
    assert (tmp_path / "job.sh").is_file()


def test_slurm_dry_run_and_bad_flags(fake_env, tmp_path):
    env, read_log = fake_env
    result = run_script(SLURM_SH, ["--config", CONFIG, "--workdir", str(tmp_path / "run"),
                                   "--nodes", "4", "--dry-run"], env)
    assert result.returncode == 0, result.stderr
    assert read_log() == [] and not (tmp_path / "run").exists()
    assert "#SBATCH --nodes=4" in result.stdout
    assert result.stdout.splitlines()[-1].startswith("sbatch ")
    bad = run_script(SLURM_SH, ["--config", CONFIG, "--nodes", "two"], env)
    assert bad.returncode == 2 and "positive integer" in bad.stderr
    bad = run_script(SLURM_SH, ["--config", CONFIG, "--gpus-per-node", "8",
                                "--tasks-per-node", "3"], env)
    assert bad.returncode == 2 and "--tasks-per-node" in bad.stderr


def test_slurm_checks_python_and_passes_data(fake_env, tmp_path):
    env, read_log = fake_env
    data = tmp_path / "data"
    data.mkdir()
    common = ["--config", CONFIG, "--workdir", str(tmp_path / "run"), "--nodes", "2",
              "--srun", "--data", str(data / ".." / "data")]
    result = subprocess.run(["bash", str(SLURM_SH), *common, "--python", "fakepython",
                             "--script", str(tmp_path / "ok.sh")],
                            env=_slurm_job_env(env, 2), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    script = (tmp_path / "ok.sh").read_text()
    assert "fakepython -c 'import sys; sys.exit(sys.version_info < (3, 11))'" in script
    calls = [c for c in read_log() if c["tool"] == "python"]
    assert len(calls) == 2
    for call in calls:
        assert call["argv"][:4] == ["-m", "jaxstep.main", "--config=setup.py:paper",
                                    f"--workdir={tmp_path / 'run'}"]
        assert call["argv"][4:] == [f"--config.data.data_dir={data}"]  # made absolute, normalised
    # Python 3.10 (an old system python3): the job stops before srun, with a hint.
    before = len(read_log())
    old = subprocess.run(["bash", str(SLURM_SH), *common, "--python", "python310",
                          "--script", str(tmp_path / "old.sh")],
                         env=_slurm_job_env(env, 2), capture_output=True, text=True, timeout=60)
    assert old.returncode == 1 and "python310 is not Python >= 3.11" in old.stderr
    assert "uv venv --python 3.11" in old.stderr
    assert read_log()[before:] == []  # no srun
    for bad, message in (("gs://bucket/data", "shared filesystem"), (str(tmp_path / "nope"), "not found")):
        result = run_script(SLURM_SH, ["--config", CONFIG, "--data", bad, "--dry-run"], env)
        assert result.returncode == 2 and message in result.stderr
