"""DeBERTa reward models in the stages: the orm/prm stage from a DeBERTa init
(`rm.backbone=deberta`) on PRM800K records and on synthetic samples of a tiny policy,
then PPO on the trained DeBERTa PRM, end to end."""
from __future__ import annotations

import os

import jax
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("sentencepiece")

from deberta_helpers import deberta_folder  # noqa: E402
from run_helpers import PPO_P as P, PPO_R as R, build_tiny_chain, tiny_ppo_config  # noqa: E402
from jaxstep import config_lib  # noqa: E402
from jaxstep.data import sources  # noqa: E402
from jaxstep.metrics import read_metrics  # noqa: E402
from jaxstep.models import deberta_heads, reward_io  # noqa: E402
from jaxstep.rewards import scoring, shaping  # noqa: E402
from jaxstep.rl import rollout as rollout_lib  # noqa: E402
from jaxstep.rl import scorer as scorer_lib  # noqa: E402
from jaxstep.stages import ppo as stage_ppo  # noqa: E402
from jaxstep.stages import reward_model as stage_rm  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("compilation_cache")]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny random DeBERTa-v3 style folder with a sentencepiece tokenizer (rm.init_from)."""
    return str(deberta_folder(tmp_path_factory.mktemp("deberta") / "base", seed=0))


def _rm_config(stage, base_folder, steps=6):
    c = config_lib.base_config("deberta_rm_test", stage)
    c.rm.kind = stage
    c.rm.backbone = "deberta"
    c.rm.init_from = base_folder
    c.data.num_train = 50
    c.data.max_prompt_len = 64
    c.data.max_response_len = 64
    c.rm.steps = steps
    c.rm.batch_size = 8
    c.rm.warmup_steps = 1
    c.rm.learning_rate = 3e-3
    c.rm.log_every = 2
    c.rm.eval_problems = 0
    c.rm.eval_batch_size = 8
    c.checkpoint.every_steps = 3
    config_lib.validate(c)
    return c


@pytest.mark.parametrize("kind,loss", [("prm", "bce"), ("prm", "bt"), ("orm", "bce")])
def test_deberta_reward_models_train_on_prm800k(tmp_path, shared_data, base, kind, loss):
    c = _rm_config(kind, base)
    c.data.max_prompt_len = 192
    c.data.max_response_len = 192
    if kind == "prm":
        c.rm.labels, c.rm.loss = "prm800k", loss
    else:
        c.rm.orm_labels = "prm800k"
    c.rm.prm800k_path = str(shared_data / "prm800k")
    summary = stage_rm.run(c, str(tmp_path / kind))
    assert summary["steps"] == 6 and summary["loss"] == loss and np.isfinite(summary["final_loss"])
    key = "prm/records_step_auc" if kind == "prm" else "orm/records_outcome_auc"
    # Evaluated on the held-out records (the AUC is undefined when the few held-out
    # steps that fit have one class).
    assert key in summary["eval"] or key in summary["eval"].get("undefined", {}), summary["eval"]
    assert summary["data"]["train_records"] > 0
    model, params, tokenizer, loaded_kind = reward_io.load_reward_model(summary["export"])
    assert loaded_kind == kind and isinstance(model, deberta_heads.DebertaRewardModel)
    assert model.needs_step_ends == (kind == "prm") and tokenizer.cls_token == "[CLS]"
    rows = [r for r in read_metrics(os.path.join(str(tmp_path / kind), "metrics.jsonl")) if "loss" in r]
    assert rows and all(np.isfinite(r["loss"]) for r in rows)


def test_deberta_prm_stage_then_ppo_end_to_end(tmp_path, base):
    # A tiny random policy (BPE tokenizer) at <root>/sft/export samples the PRM's data.
    chain = build_tiny_chain(tmp_path, tiny_ppo_config(), kinds=())
    c = _rm_config("prm", base, steps=8)
    c.rm.generator = chain["sft"]
    c.rm.num_problems = 16
    c.rm.samples_per_problem = 2
    c.rm.corrupted_per_problem = 1.0  # exact labels with both classes
    c.rm.eval_problems = 8
    c.rm.best_of_n = 2
    c.sampler.batch_size = 32
    c.data.max_prompt_len, c.data.max_response_len = P, R
    summary = stage_rm.run(c, str(tmp_path / "prm"))
    assert summary["steps"] == 8 and np.isfinite(summary["final_loss"])
    assert "prm/sample_step_auc" in summary["eval"] or "prm/flaw_detection" in str(summary["eval"])
    rm_model, rm_params, rm_tok, kind = reward_io.load_reward_model(summary["export"])
    assert kind == "prm" and rm_model.needs_step_ends

    # The rollout scorer reads the DeBERTa PRM through its own tokenizer, with step ends
    # at each step's last character, for every scheme.
    tok, model, params = chain["tokenizer"], chain["model"], chain["params"]
    problems = sources.load_problems(chain["config"], "synthetic", "train")[:4]
    texts = ["Ann has 4 + 1 = 5 apples.\n#### 5", "#### 3", "Ben has 3 * 2 = 6 pens.\nHe has 6 - 1 = 5.\n#### 5",
             "a\nb\n#### 1"]
    from test_ppo_stage import rollout_from_texts
    roll = rollout_from_texts(problems, texts, tok)
    batch = dict(rollout_lib.sequence_batch(roll), **rollout_lib.reward_model_batch(
        roll, rm_tok, P + R + 8, "\n", step_positions=rm_model.step_positions))
    direct = np.asarray(scoring.score_steps(rm_model, rm_params, batch["rm_ids"], batch["rm_mask"],
                                            batch["rm_step_ends"], batch["rm_step_mask"] & roll.step_mask))
    assert np.all((direct > 0) & (direct < 1) | ~roll.step_mask)
    for scheme in sorted(shaping.SCHEMES):
        scorer = scorer_lib.make_scorer(model, None, rm_model, "prm", scorer_lib.ShapingSettings(scheme=scheme),
                                        prompt_len=P)
        out = jax.device_get(scorer({"policy": params, "ref": params, "critic": None, "rm": rm_params}, batch))
        np.testing.assert_allclose(out["step_scores"], direct, rtol=1e-5, atol=1e-6, err_msg=scheme)
        assert np.all(np.isfinite(out["token_rewards"])), scheme

    # PPO on it, as the stage runs it (the PRM re-tokenizes every rollout).
    config = tiny_ppo_config(scheme="clip_delta", steps=2)
    config.ppo.policy, config.ppo.reward_model = chain["sft"], summary["export"]
    config.ppo.critic_init = "policy"  # an encoder PRM cannot initialise the decoder critic
    config.ppo.eval_limit = 4
    out = stage_ppo.run(config, str(tmp_path / "ppo"))
    assert out["steps"] == 2
    rows = [r for r in read_metrics(str(tmp_path / "ppo" / "metrics.jsonl")) if "rm_score" in r]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(np.isfinite(r["rm_score"]) and 0 < r["rm_score"] < 1 for r in rows)
