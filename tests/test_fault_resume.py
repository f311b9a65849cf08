"""Fault drills on real runs: a stage launched as a user does (`python -m jaxstep.main`),
killed with SIGKILL (or sent SIGTERM) at a random step and relaunched until it finishes,
ends bitwise equal (CPU) to an unbroken run of the same config.

The step is drawn from a seeded generator (`JAXSTEP_FAULT_SEED`, default below) and
named in every assertion message. Checkpoints are saved every 2-3 steps, the same in
the unbroken and the faulted runs, so a SIGKILL loses a few steps and the restart
really resumes mid-run, from the newest checkpoint finalized before the kill (the kill
may land while a save is being written); a SIGTERM makes the stage save its own
checkpoint at the next step boundary and exit 0.

Compared with the unbroken run (`run_helpers.assert_same_run`): the exported
model.safetensors, the whole final Orbax checkpoint (params, optimizer states, step,
RNG key, KL coefficient, data-loader position, guard state) and every metric line
(timings aside), including lines a SIGKILLed run logged past its last checkpoint and
the restart logged again. Runs use two CPU devices (state restored sharded) and a
compilation cache shared by the module's runs (restarts skip most compiles).
"""
import os
import signal
import time

import numpy as np
import pytest

from run_helpers import (LAUNCH_TIMEOUT_S, TINY_MODEL, Launch, assert_same_run, build_ppo_inputs,
                         child_env, command, finalized_checkpoints, logged_steps, read_checkpoint)
from jaxstep import workdir as workdir_lib

FAULT_SEED = int(os.environ.get("JAXSTEP_FAULT_SEED", "20240611"))
RESTARTS = 3

SFT_STEPS, SFT_EVERY = 24, 3
SFT_OVERRIDES = {
    **{f"model.{k}": v for k, v in TINY_MODEL.items()},
    "data.num_train": 96, "data.max_prompt_len": 48, "data.max_response_len": 48,
    "sft.steps": SFT_STEPS, "sft.batch_size": 8, "sft.learning_rate": 1e-2, "sft.warmup_steps": 4,
    "sft.eval_limit": 0, "sft.log_every": 1,
    "checkpoint.every_steps": SFT_EVERY, "checkpoint.keep": 2,
}

PPO_STEPS, PPO_EVERY = 10, 2
PPO_OVERRIDES = {
    "stage": "ppo",
    "data.max_prompt_len": 64, "data.max_response_len": 24,
    # 12 prompts, 4 per iteration (2 samples each): the loader starts a new epoch every 3.
    "ppo.num_prompts": 12, "ppo.samples_per_prompt": 2,
    "ppo.advantage": "gae",  # the critic path: its params, optimizer and KL controller survive too
    "ppo.steps": PPO_STEPS, "ppo.rollout_batch": 8, "ppo.minibatches": 2, "ppo.epochs": 1,
    "ppo.max_steps": 8, "ppo.learning_rate": 1e-3, "ppo.critic_learning_rate": 1e-3,
    "ppo.warmup_steps": 3, "ppo.critic_warmup_steps": 0,
    # An adaptive KL coefficient: controller state that must survive the restart.
    "ppo.kl_estimator": "k1", "ppo.adaptive_kl": True, "ppo.target_kl": 0.5, "ppo.kl_horizon": 100,
    "ppo.critic_init": "reward_model", "ppo.eval_limit": 0, "ppo.log_every": 1,
    "checkpoint.every_steps": PPO_EVERY, "checkpoint.keep": 2,
}


def fault_step(rng: np.random.Generator, every: int, steps: int) -> int:
    """A step after the first checkpoint and at least two before the end."""
    return int(rng.integers(every + 1, steps - 1))


def run_unbroken(cmd, env, workdir, log_dir) -> None:
    launch = Launch(cmd, env, log_dir, "unbroken")
    assert launch.wait() == 0, launch.tail()
    assert workdir_lib.is_done(workdir), launch.tail()


def run_with_fault(cmd, env, workdir, log_dir, sig: int, step: int, what: str) -> dict:
    """Launches `cmd`, sends `sig` once it has logged `step` and finalized a checkpoint,
    then relaunches the same command until the stage is done. Returns what happened."""
    first = Launch(cmd, env, log_dir, "faulted")
    try:
        deadline = time.monotonic() + LAUNCH_TIMEOUT_S
        while not (max(logged_steps(workdir), default=0) >= step and finalized_checkpoints(workdir)):
            assert first.proc.poll() is None, \
                f"{what}: the run exited (rc {first.proc.returncode}) before step {step}:\n{first.tail()}"
            assert time.monotonic() < deadline, f"{what}: step {step} not reached:\n{first.tail()}"
            time.sleep(0.02)
        at_step = max(logged_steps(workdir))
        first.proc.send_signal(sig)
        rc = first.wait()
    finally:
        first.kill()
    info = {"signal_after_step": at_step, "rc": rc, "checkpoints_then": finalized_checkpoints(workdir)}
    what = f"{what} (signal after step {at_step}; checkpoints then {info['checkpoints_then']})"
    assert not workdir_lib.is_done(workdir), f"{what}: the run finished before the signal hit it"
    if sig == signal.SIGKILL:
        assert rc == -signal.SIGKILL, f"{what}: rc {rc}\n{first.tail()}"
    else:  # SIGTERM: the stage saves its own checkpoint at the next step boundary, exits 0
        assert rc == 0, f"{what}: rc {rc}\n{first.tail()}"
        assert "stopped at" in first.log(), f"{what}:\n{first.tail()}"
        assert max(info["checkpoints_then"]) >= at_step, what
    resume_from = max(info["checkpoints_then"])
    for attempt in range(1, RESTARTS + 1):
        launch = Launch(cmd, env, log_dir, f"restart{attempt}")
        rc = launch.wait()
        assert rc == 0, f"{what}: restart {attempt} failed (rc {rc}):\n{launch.tail()}"
        if attempt == 1:
            assert f"resumed from step {resume_from}\n" in launch.log() \
                or f"resumed from iteration {resume_from}\n" in launch.log(), \
                f"{what}: the restart did not resume from checkpoint {resume_from}:\n{launch.tail()}"
        if workdir_lib.is_done(workdir):
            break
    assert workdir_lib.is_done(workdir), f"{what}: not done after {RESTARTS} restarts"
    info["restarts"] = attempt
    return info


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("jax_cache")


# ----------------------------------------------------------------------------- SFT

@pytest.fixture(scope="module")
def sft_unbroken(tmp_path_factory, cache_dir):
    root = tmp_path_factory.mktemp("sft_unbroken")
    workdir = root / "run"
    run_unbroken(command("configs/sft.py", workdir, SFT_OVERRIDES), child_env(2, cache_dir), workdir, root)
    return workdir


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_sft_fault_and_restart_is_bitwise(sft_unbroken, tmp_path, cache_dir, sig):
    step = fault_step(np.random.default_rng([FAULT_SEED, 0, int(sig)]), SFT_EVERY, SFT_STEPS)
    what = f"sft, {signal.Signals(sig).name} at step {step} (JAXSTEP_FAULT_SEED={FAULT_SEED})"
    workdir = tmp_path / "run"
    info = run_with_fault(command("configs/sft.py", workdir, SFT_OVERRIDES), child_env(2, cache_dir),
                          workdir, tmp_path, sig, step, what)
    print(what, info)
    assert_same_run(sft_unbroken, workdir, SFT_STEPS, what)


# ----------------------------------------------------------------------------- PPO

@pytest.fixture(scope="module")
def ppo_inputs(tmp_path_factory):
    return build_ppo_inputs(tmp_path_factory.mktemp("ppo_inputs"))


def ppo_command(workdir, inputs) -> list[str]:
    return command("configs/ppo_prm_max.py", workdir, {**PPO_OVERRIDES, **inputs})


@pytest.fixture(scope="module")
def ppo_unbroken(tmp_path_factory, cache_dir, ppo_inputs):
    root = tmp_path_factory.mktemp("ppo_unbroken")
    workdir = root / "run"
    run_unbroken(ppo_command(workdir, ppo_inputs), child_env(2, cache_dir), workdir, root)
    return workdir


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_ppo_fault_and_restart_is_bitwise(ppo_unbroken, ppo_inputs, tmp_path, cache_dir, sig):
    step = fault_step(np.random.default_rng([FAULT_SEED, 1, int(sig)]), PPO_EVERY, PPO_STEPS)
    what = f"ppo, {signal.Signals(sig).name} at iteration {step} (JAXSTEP_FAULT_SEED={FAULT_SEED})"
    workdir = tmp_path / "run"
    info = run_with_fault(ppo_command(workdir, ppo_inputs), child_env(2, cache_dir), workdir, tmp_path,
                          sig, step, what)
    print(what, info)
    assert_same_run(ppo_unbroken, workdir, PPO_STEPS, what)
    # The KL controller moved (its state really had to be carried over the restart).
    state, _ = read_checkpoint(workdir, PPO_STEPS)
    assert float(np.asarray(state["ppo"]["kl_coef"])) != pytest.approx(0.1, rel=1e-4), what
