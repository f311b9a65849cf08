"""PRM + ORM in one reward (the Clip/Delta recipe): the shaping function by hand, the
scorer with a PRM and a public HF ORM of another tokenizer (against transformers), the
config fields, and a PPO stage run with both models."""
import os

import jax
import numpy as np
import pytest

from jaxstep.config_lib import validation
from jaxstep.data import synthetic
from jaxstep.data import tokenizer as tokenizer_lib
from jaxstep.metrics import read_metrics
from jaxstep.models import reward_io
from jaxstep.rewards import shaping
from jaxstep.rl import rollout as rollout_lib
from jaxstep.rl import scorer as scorer_lib
from jaxstep.stages import ppo as stage_ppo
from run_helpers import PPO_P as P, PPO_R as R, rollout_from_texts, tiny_ppo_config

pytestmark = pytest.mark.usefixtures("compilation_cache")  # tests/conftest.py

# The shaping module docstring's example: 4 steps ending at tokens 2, 5, 9, 11 of 12.
SCORES = np.array([0.9, 0.6, 0.8, 0.7, 0.0], np.float32)
MASK = np.array([1, 1, 1, 1, 0], bool)
ENDS = np.array([2, 5, 9, 11, 0], np.int32)


def test_prm_plus_orm_hand_values():
    # clip_delta: c = [0, -0.2, 0, -0.1] -> [0 - (-0.2), -0.2 - 0, 0 (kept), 0 (last)]; + 0.5 * 0.7 at 11.
    out = np.asarray(shaping.prm_plus_orm("clip_delta", SCORES, MASK, ENDS, 12, 0.7, time=12, eta=0.8,
                                          orm_coef=0.5))
    want = np.zeros(12, np.float32)
    want[[2, 5, 11]] = [0.2, -0.2, 0.35]
    np.testing.assert_allclose(out, want, atol=1e-6)
    # clip alone (Gao et al.'s sum_k min(r_k - eta, 0) + ORM): [0, -0.2, 0, -0.1] + 0.35 at 11.
    out = np.asarray(shaping.prm_plus_orm("clip", SCORES, MASK, ENDS, 12, 0.7, time=12, eta=0.8, orm_coef=0.5))
    want = np.zeros(12, np.float32)
    want[[5, 11]] = [-0.2, 0.25]
    np.testing.assert_allclose(out, want, atol=1e-6)
    # The whole sample: alpha 2 on the PRM part, success 1 (coef 1), prompt of 3 tokens.
    out = np.asarray(shaping.shape_sample("clip_delta", SCORES, MASK, ENDS, 12, 1.0, 0.0, 3, 0.7, time=15,
                                          alpha=2.0, eta=0.8, orm_coef=0.5))
    want = np.zeros(15, np.float32)
    want[[5, 8, 14]] = [0.4, -0.4, 0.35 + 1.0]
    np.testing.assert_allclose(out, want, atol=1e-6)
    # An empty response gets nothing from either model.
    assert not np.any(np.asarray(shaping.prm_plus_orm("clip", SCORES, MASK, ENDS, 0, 0.7, time=12)))


def test_shape_rewards_without_an_orm_is_unchanged_and_needs_scores_with_one():
    scores, mask, ends = SCORES[None].repeat(2, 0), MASK[None].repeat(2, 0), ENDS[None].repeat(2, 0)
    lengths, success = np.array([12, 7]), np.array([1.0, 0.0])
    plain = np.asarray(shaping.shape_rewards("clip_delta", scores, mask, ends, lengths, success, time=12))
    zero = np.asarray(shaping.shape_rewards("clip_delta", scores, mask, ends, lengths, success, time=12,
                                            orm_scores=np.array([0.3, 0.9]), orm_coef=0.0))
    np.testing.assert_array_equal(plain, zero)
    both = np.asarray(shaping.shape_rewards("clip_delta", scores, mask, ends, lengths, success, time=12,
                                            orm_scores=np.array([0.3, 0.9]), orm_coef=2.0))
    diff = both - plain
    assert diff[0, 11] == pytest.approx(0.6) and diff[1, 6] == pytest.approx(1.8)
    assert np.count_nonzero(np.abs(diff) > 1e-7) == 2
    with pytest.raises(ValueError, match="orm_scores"):
        shaping.shape_rewards("clip", scores, mask, ends, lengths, success, time=12, orm_coef=1.0)


def test_scorer_adds_a_public_orm_with_another_tokenizer(tiny_chain, tmp_path):
    pytest.importorskip("transformers")
    from test_hf_reward import _hf_folder, _softmax_first, _torch_out
    tok, model, params = tiny_chain["tokenizer"], tiny_chain["model"], tiny_chain["params"]
    prm, prm_params, _, _ = reward_io.load_reward_model(tiny_chain["prm"])
    orm_tok = tokenizer_lib.build_tokenizer(300, num_problems=200, seed=1)
    hf_orm = _hf_folder(tmp_path, orm_tok, "Qwen2ForSequenceClassification", "qwen2", num_labels=2)
    orm, orm_params, orm_tok, kind = reward_io.load_reward_model(str(tmp_path))
    assert kind == "orm" and not rollout_lib.same_tokenizer(tok, orm_tok)
    problems = synthetic.generate(4, split="train", seed=0)
    texts = ["Ann has 4 + 1 = 5 apples.\n#### 5", "#### 3", "Ben has 3 * 2 = 6 pens.\n#### 6", "a\nb\n#### 1"]
    roll = rollout_from_texts(problems, texts, tok)
    batch = rollout_lib.sequence_batch(roll)
    batch.update(rollout_lib.reward_model_batch(roll, orm_tok, P + R, "\n", prefix="orm_"))
    tree = {"policy": params, "ref": params, "critic": None, "rm": prm_params, "orm": orm_params}
    both = scorer_lib.make_scorer(model, None, prm, "prm", scorer_lib.ShapingSettings(
        "clip_delta", success_coef=1.0, orm_coef=0.5), prompt_len=P, orm_model=orm)
    alone = scorer_lib.make_scorer(model, None, prm, "prm", scorer_lib.ShapingSettings(
        "clip_delta", success_coef=1.0), prompt_len=P)
    out, ref = jax.device_get(both(tree, batch)), jax.device_get(alone(tree, batch))
    theirs = _softmax_first(_torch_out(hf_orm, batch["orm_ids"], batch["orm_mask"])[:, ::-1])
    np.testing.assert_allclose(out["orm_scores"], theirs, atol=1e-4)
    np.testing.assert_array_equal(out["step_scores"], ref["step_scores"])
    want = np.zeros_like(ref["token_rewards"])
    want[np.arange(4), P + roll.lengths - 1] = 0.5 * theirs
    np.testing.assert_allclose(out["token_rewards"] - ref["token_rewards"], want, atol=1e-4)


def test_config_fields_are_validated():
    c = tiny_ppo_config("orm")
    c.ppo.outcome_coef = 1.0
    c.ppo.rm_good_token = "-"
    problems = "\n".join(validation.problems(c))
    assert "ppo.outcome_coef=1.0" in problems and "ppo.rm_bad_token='-'" in problems
    c = tiny_ppo_config("clip_delta")
    c.stage = "pipeline"
    assert validation.trained_reward_models(c) == {"prm"}
    c.ppo.outcome_coef = 1.0
    assert validation.trained_reward_models(c) == {"prm", "orm"} and not validation.problems(c)
    c.ppo.outcome_reward_model = "/some/orm"
    assert validation.trained_reward_models(c) == {"prm"}


def test_ppo_stage_runs_with_a_public_prm_and_an_orm(tiny_chain, tmp_path):
    """PPO with a Math-Shepherd PRM (another tokenizer, step tags) + the chain's ORM."""
    pytest.importorskip("transformers")
    from test_hf_reward import _hf_folder, shepherd_tokenizer
    shepherd = str(tmp_path / "shepherd")
    _hf_folder(shepherd, shepherd_tokenizer(), "LlamaForCausalLM", "llama")
    config = tiny_ppo_config(scheme="clip_delta", steps=1)
    config.ppo.reward_model = shepherd
    config.ppo.outcome_coef = 1.0
    config.ppo.eval_limit = 0
    config.ppo.export = False
    with pytest.raises(ValueError, match="critic_init='policy'"):  # a public RM is no critic
        stage_ppo.run(config, os.path.join(tiny_chain["root"], "ppo_bad_critic"))
    config.ppo.critic_init = "policy"
    workdir = os.path.join(tiny_chain["root"], "ppo_prm_orm")
    summary = stage_ppo.run(config, workdir)  # finds <root>/sft and <root>/orm
    assert summary["outcome_reward_model"] == tiny_chain["orm"] and summary["reward_model"] == shepherd
    rows = [r for r in read_metrics(os.path.join(workdir, "metrics.jsonl")) if "orm_score" in r]
    assert rows and 0.0 < rows[0]["orm_score"] < 1.0
    config.ppo.outcome_reward_model = os.path.join(tiny_chain["root"], "missing")
    with pytest.raises(FileNotFoundError, match="ppo.outcome_reward_model"):
        stage_ppo.run(config, os.path.join(tiny_chain["root"], "ppo_missing"))


def test_chain_gives_ppo_the_orm(monkeypatch, tmp_path):
    """The main job's PPO stage gets the ORM it trained (or was given) as ppo.outcome_reward_model."""
    from jaxstep.stages import pipeline
    seen = []
    monkeypatch.setattr(pipeline.ppo, "run", lambda config, workdir: seen.append(config) or {"export": "x"})
    chain = pipeline.Chain(tiny_ppo_config("clip_delta"), str(tmp_path))
    chain.ppo("ppo", scheme="clip_delta", policy="p", reward_model="r", seed=3, outcome_reward_model="o")
    chain.ppo("ppo2", scheme="clip_delta", policy="p", reward_model="r", seed=3)
    assert seen[0].ppo.outcome_reward_model == "o" and seen[0].ppo.reward_model == "r"
    assert seen[1].ppo.outcome_reward_model == ""
