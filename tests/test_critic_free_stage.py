"""Stage ppo with a critic-free estimator (process-supervised GRPO on Clip-Delta rewards,
k3 KL loss): no critic anywhere (scorer, state, checkpoint), metric lines written, and a
run stopped and resumed equals an unbroken one bitwise."""
import json
import os

import jax
import numpy as np
import pytest

from jaxstep import config_lib
from jaxstep.metrics import read_metrics
from jaxstep.stages import ppo as stage_ppo
from run_helpers import assert_same_run, build_ppo_inputs, read_checkpoint, tiny_model

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


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
    """A persistent compilation cache (the resumed run recompiles the same programs)."""
    from jax._src import compilation_cache  # noqa: PLC0415
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    old = {n: getattr(jax.config, n) for n in names}
    compilation_cache.reset_cache()
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    yield
    for n, v in old.items():
        jax.config.update(n, v)
    compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return build_ppo_inputs(tmp_path_factory.mktemp("grpo_inputs"))


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
