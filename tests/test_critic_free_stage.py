"""Stage ppo with a critic-free estimator (process-supervised GRPO on Clip-Delta rewards,
k3 KL loss): no critic anywhere (scorer, state, checkpoint), metric lines written, and a
run stopped and resumed equals an unbroken one bitwise."""
import json
import os

import numpy as np
import pytest

from jaxstep import config_lib
from jaxstep.metrics import read_metrics
from jaxstep.stages import ppo as stage_ppo
from run_helpers import assert_same_run, read_checkpoint, tiny_model

STEPS = 2


def grpo_config(inputs, advantage="grpo_process"):
    c = config_lib.base_config("test_grpo", "ppo")
    c.data.num_train = 200
    c.data.max_prompt_len = 64
    c.data.max_response_len = 24
    tiny_model(c)
    p = c.ppo
    p.policy, p.reward_model = inputs["ppo.policy"], inputs["ppo.reward_model"]
    p.scheme = "clip_delta"
    p.advantage = advantage
    p.samples_per_prompt = 4
    p.kl_estimator = "k3"
    p.steps = STEPS
    p.rollout_batch = 16  # 4 prompts x 4 responses; minibatches of 8 over the 8 test devices
    p.minibatches = 2
    p.max_steps = 8
    p.learning_rate = 1e-3
    p.eval_limit = 0
    c.checkpoint.every_steps = 1
    return config_lib.validate(c)


pytestmark = pytest.mark.usefixtures("compilation_cache")  # tests/conftest.py


@pytest.fixture(scope="module")
def inputs(tiny_chain):
    """The PPO stage tests' tiny chain (tests/conftest.py): its policy and PRM."""
    return {"ppo.policy": tiny_chain["sft"], "ppo.reward_model": tiny_chain["prm"]}


@pytest.fixture(scope="module")
def unbroken(inputs, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("grpo_unbroken"))
    summary = stage_ppo.run(grpo_config(inputs), workdir)
    return workdir, summary


def test_stage_runs_without_a_critic(unbroken):
    workdir, summary = unbroken
    assert summary["steps"] == STEPS and summary["advantage"] == "grpo_process"
    assert summary["skipped_steps"] == 0
    rows = [r for r in read_metrics(os.path.join(workdir, "metrics.jsonl")) if "score" in r]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    for key in ("policy_loss", "kl_loss", "kl", "advantage_mean", "policy_grad_norm", "rollout_accuracy",
                "rm_score", "update_seconds"):
        assert all(np.isfinite(r[key]) for r in rows), key
    for key in ("value_loss", "critic_grad_norm", "value_mean", "return_mean"):
        assert all(key not in r for r in rows), key
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-4)  # the policy starts as the reference
    state, extra = read_checkpoint(workdir, STEPS)
    assert set(state["ppo"]) == {"policy_params", "policy_opt_state", "kl_coef", "step"}
    assert int(state["ppo"]["step"]) == STEPS
    with open(os.path.join(workdir, "summary.json")) as f:
        assert json.load(f)["advantage"] == "grpo_process"


def test_update_config_follows_the_estimator(inputs):
    cfg = stage_ppo.ppo_update_config(grpo_config(inputs))
    assert (cfg.advantage, cfg.group_size, cfg.loss_aggregation, cfg.norm_length) == (
        "grpo_process", 4, "seq_mean_token_mean", 24)
    assert not cfg.needs_critic and not cfg.kl_in_reward and cfg.kl_loss_coef == pytest.approx(0.1)
    c = grpo_config(inputs, "dr_grpo")
    assert stage_ppo.ppo_update_config(c).loss_aggregation == "seq_mean_token_sum_norm"
    c.ppo.loss_aggregation = "token_mean"
    assert stage_ppo.ppo_update_config(c).loss_aggregation == "token_mean"
    gae = stage_ppo.ppo_update_config(config_lib.base_config("x", "ppo"))
    assert gae.needs_critic and gae.loss_aggregation == "token_mean"


@pytest.mark.slow
def test_stopped_and_resumed_equals_unbroken(unbroken, inputs, tmp_path):
    workdir, _ = unbroken
    config = grpo_config(inputs)
    other = str(tmp_path / "resumed")
    assert stage_ppo.run(config, other, stop_after=1) == {"stopped_at": 1, "done": False}
    summary = stage_ppo.run(config, other)
    assert summary["steps"] == STEPS
    assert_same_run(workdir, other, STEPS, "grpo_process stopped after 1 and resumed")


# The subprocess runs of the sharded test: grpo_config's settings on the command line.
SHARDED_OVERRIDES = {
    "stage": "ppo", "data.num_train": 200, "data.max_prompt_len": 64, "data.max_response_len": 24,
    "ppo.scheme": "clip_delta", "ppo.advantage": "grpo_process", "ppo.samples_per_prompt": 4,
    "ppo.kl_estimator": "k3", "ppo.steps": STEPS, "ppo.rollout_batch": 16, "ppo.minibatches": 2,
    "ppo.max_steps": 8, "ppo.learning_rate": 1e-3, "ppo.warmup_steps": 0,
    "ppo.eval_limit": 8,  # the final greedy eval decodes sharded too
    "checkpoint.every_steps": STEPS,
}

# Metric keys that count, time or describe rather than compute.
SHARDED_SKIP = ("_seconds", "per_second")


@pytest.mark.slow
def test_eight_devices_match_one_device(inputs, tmp_path):
    """The whole stage (rollouts, group advantages over the step rewards of each prompt's
    4 responses, k3 loss, policy steps, greedy eval) on 8 fake CPU devices, the batch
    sharded 8 ways, gives the metrics of the same run on one device.

    Not bitwise, and cannot be: the policy gradient, the loss means and the advantage
    statistics are sums over the batch, which 8 devices add in another order (8 partial
    sums, then an all-reduce) than one, so float32 rounding differs by a few ulps.
    Measured (2 iterations): 46 of 58 metric values bitwise equal, among them every
    rollout number (the sampled tokens are the same: accuracy, lengths, RM scores,
    rewards); the others differ by 2e-5 relative at most (the step-2 KL, where the
    ulp-level weight differences of the first update show) and the step-1 KL, 0 up to
    rounding, by under 1e-6 absolute. Hence rtol 1e-4 (5x the largest seen) with atol
    1e-6 for numbers that are 0 up to rounding, and exact equality for the rollout's
    discrete numbers.
    """
    from run_helpers import Launch, child_env, command
    from test_distributed_ppo import wait_all
    overrides = {**SHARDED_OVERRIDES, **inputs}
    runs = {}
    for devices in (1, 8):  # one after the other: the runs share the machine's cores
        workdir = tmp_path / f"d{devices}"
        wait_all([Launch(command("configs/grpo_prm_clip_delta.py", workdir, overrides), child_env(devices),
                         tmp_path, f"d{devices}")])
        runs[devices] = workdir
    one, eight = (read_metrics(os.path.join(runs[d], "metrics.jsonl")) for d in (1, 8))
    assert [sorted(r) for r in one] == [sorted(r) for r in eight]
    assert sum("score" in r for r in one) == STEPS
    diffs = {}
    for a, b in zip(one, eight):
        for key, want in a.items():
            if key.endswith(SHARDED_SKIP) or not isinstance(want, (int, float)):
                assert key.endswith(SHARDED_SKIP) or b[key] == want, (a["step"], key)
                continue
            assert np.isfinite(want) and np.isfinite(b[key]), (a["step"], key)
            diffs[f"{a['step']}:{key}"] = abs(b[key] - want) / max(abs(want), 1e-6)
            assert b[key] == pytest.approx(want, rel=1e-4, abs=1e-6), (a["step"], key, want, b[key])
    differ = {k: v for k, v in diffs.items() if v > 0}
    print(f"8 vs 1 device: {len(diffs) - len(differ)} of {len(diffs)} metric values bitwise equal; "
          f"the others (relative difference): {sorted(differ.items(), key=lambda kv: -kv[1])}")
    exact = ("rollout_accuracy", "response_length", "num_steps", "rm_score", "score")  # same samples
    for a, b in zip(one, eight):
        for key in exact:
            if key in a:
                assert a[key] == b[key], (a["step"], key)
    s1, s8 = (json.loads((runs[d] / "summary.json").read_text()) for d in (1, 8))
    assert s1["steps"] == s8["steps"] == STEPS

