"""Stage ppo: rollout pieces (sampling, step ends, the jitted scoring/shaping pass) and the
stage itself on a tiny model (iterations, checkpoints, metrics, resume, export)."""
import json
import os

import jax
import numpy as np
import pytest

from jaxstep.data import batching, formatting
from jaxstep.data import tokenizer as tokenizer_lib
from jaxstep.metrics import read_metrics
from jaxstep.rewards import scoring
from jaxstep.models import build as model_build
from jaxstep.models import reward_io
from jaxstep.rl import rollout as rollout_lib
from jaxstep.rl import scorer as scorer_lib
from jaxstep.rewards import shaping
from jaxstep.data import sources
from jaxstep.stages import ppo as stage_ppo
from jaxstep.parallel import mesh as mesh_lib
from run_helpers import PPO_P as P, PPO_R as R, PPO_S as S, long_prompts, rollout_from_texts, tiny_ppo_config as tiny_config

pytestmark = pytest.mark.usefixtures("compilation_cache")  # tests/conftest.py


@pytest.fixture(scope="module")
def tiny(tiny_chain):
    """The tiny chain (tests/conftest.py: a policy at <root>/sft/export, a PRM and an ORM
    from it) with the reward models loaded and 8 training problems."""
    config = tiny_chain["config"]
    rm_model, rm_params, _, _ = reward_io.load_reward_model(tiny_chain["prm"])
    orm_model, orm_params, _, _ = reward_io.load_reward_model(tiny_chain["orm"])
    problems = sources.load_problems(config, "synthetic", "train")[:8]
    return dict(tiny_chain, rm=(rm_model, rm_params), orm=(orm_model, orm_params), problems=problems)


def test_sample_grades_and_finds_steps(tiny):
    mesh = mesh_lib.make_mesh(tiny["config"].mesh)
    config = tiny_config()
    config.ppo.temperature = 0.7
    settings = stage_ppo.sample_settings(config)
    assert settings.temperature == 0.7
    out = rollout_lib.sample(tiny["model"], tiny["params"], tiny["tokenizer"], tiny["problems"],
                             jax.random.key(0), settings, mesh=mesh)
    assert out.tokens.shape == (8, R) and out.prompt_ids.shape == (8, P)
    eos = tiny["tokenizer"].eos_token_id
    for b in range(8):
        n = out.lengths[b]
        assert 1 <= n <= R
        assert out.texts[b] == tiny["tokenizer"].decode(out.tokens[b, :n], skip_special_tokens=True)
        assert out.finished[b] == (out.tokens[b, n - 1] == eos)
        ends = batching.step_ends_from_tokens(out.tokens[b], tiny["tokenizer"])[:S]
        np.testing.assert_array_equal(out.step_ends[b, :len(ends)], ends)
        assert out.step_mask[b].sum() == len(ends)
        assert np.all(out.logprobs[b, n:] == 0) and np.all(out.logprobs[b, :n] < 0)
    batch = rollout_lib.sequence_batch(out)
    np.testing.assert_array_equal(batch["input_ids"][:, P:], out.tokens)
    # The rollout's log-probs are those of the tempered policy, as the update computes them.
    recomputed = scorer_lib.make_policy_logprobs(tiny["model"], P)(
        tiny["params"], batch["input_ids"], batch["attention_mask"], batch["positions"], temperature=0.7)
    np.testing.assert_allclose(np.asarray(recomputed) * batch["response_mask"], batch["old_logprobs"], atol=2e-4)
    np.testing.assert_array_equal(batch["response_mask"].sum(1), out.lengths)
    assert batch["response_mask"][:, :P].sum() == 0


def test_scorer_rewards_at_step_ends_and_reference_logprobs(tiny):
    config, tok, model, params = tiny["config"], tiny["tokenizer"], tiny["model"], tiny["params"]
    problems = tiny["problems"][:4]
    texts = ["Ann has 1 + 1 = 2 apples.\n#### 2", "Ann has 1 + 1 = 2 apples.\nAnn has 1 + 1 = 2 apples.\n#### 2",
             "#### 7", "Ben has 3 * 2 = 6 pens.\nThey have 6 - 1 = 5 pens.\n#### 5"]
    roll = rollout_from_texts(problems, texts, tok)
    batch = rollout_lib.sequence_batch(roll)
    rm_model, rm_params = tiny["rm"]
    shaping = scorer_lib.ShapingSettings(scheme="prm_dense", alpha=0.5, success_coef=2.0)
    scorer = scorer_lib.make_scorer(model, rm_model, rm_model, "prm", shaping, prompt_len=P,
                                     recompute_logprobs=True)
    out = jax.device_get(scorer({"policy": params, "ref": params, "critic": rm_params, "rm": rm_params}, batch))
    # Reference logprobs: exact log-softmax of a full forward at the response tokens, 0 elsewhere.
    logits = np.asarray(model.apply({"params": params}, batch["input_ids"],
                                    attention_mask=batch["attention_mask"], positions=batch["positions"]))
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    T = P + R
    expected = np.zeros((4, T), np.float32)
    expected[:, 1:] = np.take_along_axis(logp[:, :-1], batch["input_ids"][:, 1:, None], -1)[..., 0]
    expected *= batch["response_mask"]
    np.testing.assert_allclose(out["ref_logprobs"], expected, atol=2e-4)
    np.testing.assert_allclose(out["old_logprobs"], out["ref_logprobs"], atol=1e-6)
    # Step scores: sigmoid of the RM head at prompt + step end.
    head = np.asarray(rm_model.apply({"params": rm_params}, batch["input_ids"],
                                     attention_mask=batch["attention_mask"], positions=batch["positions"]))
    for b in range(4):
        k = int(roll.step_mask[b].sum())
        assert k == len(formatting.split_steps(texts[b]))
        pos = P + roll.step_ends[b, :k]
        np.testing.assert_allclose(out["step_scores"][b, :k], 1 / (1 + np.exp(-head[b, pos])),
                                   rtol=1e-4, atol=1e-6)
        assert np.all(out["step_scores"][b, k:] == 0)
        # Dense rewards: alpha * score at each step end, plus success_coef * success at the last token.
        want = np.zeros(T, np.float32)
        np.add.at(want, pos, 0.5 * out["step_scores"][b, :k])
        want[P + roll.lengths[b] - 1] += 2.0 * roll.correct[b]
        np.testing.assert_allclose(out["token_rewards"][b], want, atol=1e-6)
        # Values: the critic's output after token t-1, only on the response.
        np.testing.assert_allclose(out["values"][b, P:P + roll.lengths[b]],
                                   head[b, P - 1:P + roll.lengths[b] - 1], rtol=1e-4, atol=1e-5)
        assert np.all(out["values"][b, :P] == 0)
    assert out["token_rewards"].dtype == np.float32


def test_response_logprobs_match_full_logits(tiny):
    """The update's hook (LM head on the response positions only) equals token_logprobs of
    the full logits on the response, with entropies, at a temperature."""
    from jaxstep.models.logprobs import token_logprobs
    model, params = tiny["model"], tiny["params"]
    rng = np.random.default_rng(0)
    ids = rng.integers(3, len(tiny["tokenizer"]), (2, P + R)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[0, :5] = 0
    positions = np.maximum(np.cumsum(mask, 1) - 1, 0).astype(np.int32)
    logits = model.apply({"params": params}, ids, attention_mask=mask, positions=positions)
    want_lp, want_ent = token_logprobs(logits, ids, temperature=0.7, with_entropy=True)
    hook = scorer_lib.make_policy_logprobs(model, P)
    lp, ent = hook(params, ids, mask, positions, temperature=0.7, with_entropy=True)
    np.testing.assert_allclose(np.asarray(lp)[:, P:], np.asarray(want_lp)[:, P:], atol=1e-5)
    np.testing.assert_allclose(np.asarray(ent)[:, P:], np.asarray(want_ent)[:, P:], atol=1e-5)
    assert np.all(np.asarray(lp)[:, :P] == 0) and np.all(np.asarray(ent)[:, :P] == 0)
    plain = np.asarray(hook(params, ids, mask, positions))  # temperature 1, no entropy
    np.testing.assert_allclose(plain[:, P:], np.asarray(token_logprobs(logits, ids))[:, P:], atol=1e-5)


def test_scorer_orm_and_retokenized_reward_model(tiny):
    config, tok, model, params = tiny["config"], tiny["tokenizer"], tiny["model"], tiny["params"]
    problems = tiny["problems"][:4]
    texts = ["Ann has 4 + 1 = 5 apples.\n#### 5", "#### 3", "Ben has 3 * 2 = 6 pens.\n#### 6", "a\nb\n#### 1"]
    roll = rollout_from_texts(problems, texts, tok)
    batch = rollout_lib.sequence_batch(roll)
    orm_model, orm_params = tiny["orm"]
    scorer = scorer_lib.make_scorer(model, orm_model, orm_model, "orm",
                                     scorer_lib.ShapingSettings(scheme="orm", success_coef=0.0), prompt_len=P)
    out = jax.device_get(scorer({"policy": params, "ref": params, "critic": orm_params, "rm": orm_params}, batch))
    direct = np.asarray(scoring.score_outcome(orm_model, orm_params, batch["input_ids"], batch["attention_mask"]))
    np.testing.assert_allclose(out["outcome_scores"], direct, rtol=1e-5)
    last = P + roll.lengths - 1
    np.testing.assert_allclose(out["token_rewards"][np.arange(4), last], direct, rtol=1e-5)
    assert np.count_nonzero(out["token_rewards"]) == 4
    # A reward model with another tokenizer reads re-tokenized text; with the same one the
    # scores must match the shared-sequence path exactly.
    rm_model, rm_params = tiny["rm"]
    shaping = scorer_lib.ShapingSettings(scheme="prm_min")
    prm = scorer_lib.make_scorer(model, rm_model, rm_model, "prm", shaping, prompt_len=P)
    params_tree = {"policy": params, "ref": params, "critic": rm_params, "rm": rm_params}
    shared = jax.device_get(prm(params_tree, batch))
    retok = dict(batch, **rollout_lib.reward_model_batch(roll, tok, P + R + 2, "\n"))
    separate = jax.device_get(prm(params_tree, retok))
    np.testing.assert_allclose(separate["step_scores"], shared["step_scores"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(separate["token_rewards"], shared["token_rewards"], rtol=1e-4, atol=1e-5)
    assert rollout_lib.same_tokenizer(tok, tok)


def test_update_config_and_inputs(tiny):
    c = tiny_config()
    cfg = stage_ppo.ppo_update_config(c)
    assert cfg.kl_in_reward and cfg.kl_loss_coef == 0 and cfg.kl_target is None and cfg.clip_eps == 0.2
    c.ppo.kl_estimator, c.ppo.adaptive_kl = "k3", True
    cfg = stage_ppo.ppo_update_config(c)
    assert not cfg.kl_in_reward and cfg.kl_loss_coef == pytest.approx(0.1) and cfg.kl_target is None
    c.ppo.kl_estimator = "k1"
    assert stage_ppo.ppo_update_config(c).kl_target == 6.0
    assert shaping.reward_model_kind("orm") == "orm" and shaping.reward_model_kind("clip_delta") == "prm"
    with pytest.raises(ValueError, match="ppo.scheme"):
        shaping.reward_model_kind("prm_median")
    workdir = os.path.join(tiny["root"], "ppo")
    assert stage_ppo.input_paths(c, workdir) == (os.path.join(tiny["root"], "sft", "export"),
                                           os.path.join(tiny["root"], "prm", "export"))
    missing = tiny_config(scheme="orm")
    missing.ppo.policy = os.path.join(tiny["root"], "sft", "export")
    with pytest.raises(FileNotFoundError, match="ppo.reward_model"):
        stage_ppo.run(missing, os.path.join(tiny["root"], "elsewhere", "ppo"))


def test_stage_runs_checkpoints_resumes_and_exports(tiny):
    workdir = os.path.join(tiny["root"], "ppo")
    config = tiny_config(steps=2)
    config.ppo.eval_limit = 4
    first = stage_ppo.run(config, workdir, stop_after=1)  # "preempted" after one iteration
    assert first == {"stopped_at": 1, "done": False}
    assert not os.path.exists(os.path.join(workdir, "summary.json"))
    assert os.listdir(os.path.join(workdir, "checkpoints")) == ["1"]
    summary = stage_ppo.run(config, workdir)  # resumes at iteration 1
    rows = [r for r in read_metrics(os.path.join(workdir, "metrics.jsonl")) if "score" in r]
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("kl", "reward", "score", "policy_loss", "value_loss", "rollout_accuracy", "num_steps",
                "response_length", "repeated_step_fraction", "empty_step_fraction", "rm_score",
                "rollout_seconds", "update_seconds"):
        assert all(np.isfinite(r[key]) for r in rows), key
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-4)  # the policy starts as the reference
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1", "2"]
    assert summary["steps"] == 2 and summary["skipped_steps"] == 0 and summary["eval_problems"] == 4
    prompts = [*stage_ppo.load_prompts(config), *sources.eval_problems(config, 4)]
    assert summary["prompts_truncated"] == long_prompts(prompts, tiny["tokenizer"], P)
    with open(os.path.join(workdir, "summary.json")) as f:
        assert json.load(f)["scheme"] == "prm_dense"
    export = os.path.join(workdir, "export")
    assert os.path.isfile(os.path.join(export, "model.safetensors"))
    _, exported = model_build.build_model(config, tokenizer_lib.resolve_tokenizer(config, export), export)
    changed = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
                           exported, tiny["params"])
    assert max(jax.tree.leaves(changed)) > 0  # PPO moved the policy
    assert os.path.isfile(os.path.join(workdir, "report.md"))
    assert stage_ppo.run(config, workdir) == summary  # done: reused, not recomputed


@pytest.mark.slow
def test_resume_is_exact(tiny, tmp_path):
    """Stopping after iteration 1 and resuming gives the same policy as running straight through."""
    config = tiny_config(scheme="clip_delta", steps=2)
    config.ppo.eval_limit = 0
    config.ppo.policy = os.path.join(tiny["root"], "sft", "export")
    config.ppo.reward_model = os.path.join(tiny["root"], "prm", "export")
    straight = stage_ppo.run(config, str(tmp_path / "a"))
    stage_ppo.run(config, str(tmp_path / "b"), stop_after=1)
    resumed = stage_ppo.run(config, str(tmp_path / "b"))
    for a, b in zip(*(model_build.build_model(config, tokenizer_lib.resolve_tokenizer(config, s["export"]), s["export"])[1:]
                      for s in (straight, resumed))):
        jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)
    rows_a = read_metrics(str(tmp_path / "a" / "metrics.jsonl"))
    rows_b = read_metrics(str(tmp_path / "b" / "metrics.jsonl"))
    assert [r["score"] for r in rows_a] == [r["score"] for r in rows_b]
