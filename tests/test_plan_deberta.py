"""Stage `plan` with DeBERTa reward models (`rm.backbone="deberta"`, DeBERTa exports as
`ppo.reward_model` / `ppo.outcome_reward_model`): the rm train step and the rollout
scorer compiled for cpu-2 from a tiny random DeBERTa folder, their params counted against
the real models loaded from the folders; and the hub configs the presets name, sized
against their published parameter counts."""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from deberta_helpers import TINY, V3  # noqa: E402
from jaxstep import config_lib, models  # noqa: E402
from jaxstep.models import deberta, deberta_heads, deberta_hf, reward_io, shapes  # noqa: E402
from jaxstep.models.config import ModelConfig  # noqa: E402
from jaxstep.stages import plan  # noqa: E402


def _size(tree) -> int:
    """Independent count: the number of scalars in a tree of real arrays."""
    return int(sum(np.asarray(x).size for x in jax.tree.leaves(tree)))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny random DeBERTa-v3 encoder folder (rm.init_from) and a PRM and an ORM export
    of it (reward_model.json with backbone deberta)."""
    import transformers
    root = tmp_path_factory.mktemp("plan_deberta")
    config = transformers.DebertaV2Config(**{**TINY, **V3})
    transformers.DebertaV2Model(config).float().save_pretrained(root / "base")
    encoder, params = deberta_hf.load(root / "base")
    out = {"base": str(root / "base")}
    for i, kind in enumerate(("prm", "orm")):
        model, rm_params = deberta_heads.init_from_encoder(encoder, params, kind, jax.random.key(i))
        out[kind] = deberta_heads.save_reward_model(str(root / kind), model, rm_params, None, kind)
    return out


def _experiment(scheme="prm_max", **overrides):
    """A one-layer decoder policy, short rows, cpu-2."""
    c = config_lib.ppo_experiment(scheme)
    c.stage = "plan"
    c.plan.topology = "cpu-2"
    c.model.num_layers, c.model.hidden_size, c.model.num_heads, c.model.num_kv_heads = 1, 32, 2, 1
    c.model.intermediate_size = 64
    c.data.max_prompt_len = c.data.max_response_len = 16
    c.rm.batch_size = c.ppo.rollout_batch = c.sampler.batch_size = 4
    c.ppo.max_steps = c.plan.rm_steps = 4
    c.rm.likelihood_feature = False
    c.ppo.critic_init = "policy"
    for key, value in overrides.items():
        section, field = key.split("__")
        c[section][field] = value
    config_lib.validate(c)
    return c


@pytest.mark.parametrize("kind,loss", [("prm", "bce"), ("prm", "bt"), ("orm", "bce")])
def test_plan_rm_program_of_a_deberta_backbone(tmp_path, folders, kind, loss):
    c = _experiment(rm__backbone="deberta", rm__init_from=folders["base"], rm__kind=kind, rm__loss=loss,
                    plan__programs="rm")
    result = plan.run(c, str(tmp_path))
    rep = result["programs"]["rm"]
    assert rep["fits"] and rep["error"] is None and rep["flops_per_call"] > 0
    assert (rep["info"]["kind"], rep["info"]["loss"]) == (kind, loss if kind == "prm" else "bce")
    # The real model, built as the rm stage builds it (weights loaded, fresh head).
    encoder, encoder_params = deberta_hf.load(folders["base"])
    _, real = deberta_heads.init_from_encoder(encoder, encoder_params, kind, jax.random.key(0))
    assert rep["info"]["params"] == _size(real)
    head = 32 + 1 if kind == "prm" else (32 * 32 + 32) + (32 + 1)  # classifier (+ ORM pooler), by hand
    assert _size(real) == _size(encoder_params) + head
    assert json.loads((tmp_path / "plan.json").read_text())["programs"]["rm"]["fits"]
    assert "| rm | yes |" in (tmp_path / "plan.md").read_text()


@pytest.fixture
def bucket(tmp_path):
    """`gs://bucket/...` backed by `<tmp>/gcs/bucket/...` (tests/fake_bucket.py)."""
    import fake_bucket
    root = fake_bucket.install(tmp_path / "gcs")
    yield root
    fake_bucket.uninstall()


def test_plan_scorer_with_a_deberta_prm_and_orm(tmp_path, folders, bucket):
    """Clip-Delta PRM + ORM (two DeBERTa exports): the scorer holds both, each reading its
    own re-tokenized copy of the rollouts; the plan is written into a gs:// workdir."""
    c = _experiment("clip_delta", ppo__reward_model=folders["prm"], ppo__outcome_coef=1.0,
                    ppo__outcome_reward_model=folders["orm"], plan__programs="scorer",
                    ppo__advantage="gae")  # with the critic the scorer runs too

    result = plan.run(c, "gs://bucket/plan")
    written = tmp_path / "gcs" / "bucket" / "plan"
    assert json.loads((written / "plan.json").read_text())["programs"]["scorer"]["fits"]
    assert "| scorer | yes |" in (written / "plan.md").read_text()
    info = result["programs"]["scorer"]["info"]
    assert result["programs"]["scorer"]["fits"] and result["programs"]["scorer"]["error"] is None
    prm = reward_io.load_reward_model(folders["prm"])
    orm = reward_io.load_reward_model(folders["orm"])
    assert (prm[3], orm[3]) == ("prm", "orm")
    assert info["rm_params"] == _size(prm[1]) and info["orm_params"] == _size(orm[1])
    policy_cfg = shapes.model_config(c, "")
    policy = shapes.count_params(models.abstract_params(policy_cfg))
    critic = shapes.count_params(models.abstract_params(models.ScalarModel(policy_cfg)))
    assert critic == policy + 32 + 1 - (0 if policy_cfg.tie_word_embeddings else 32 * policy_cfg.vocab_size)
    assert info["params"] == 2 * policy + critic + _size(prm[1]) + _size(orm[1])  # policy, ref, critic, RMs
    assert info["rm_length"] == 32


def test_plan_sizes_reward_models_in_a_bucket(tmp_path, folders, bucket):
    """Reward-model exports in gs:// are sized as the local ones (config.json and
    reward_model.json read through jaxstep.paths)."""
    import shutil
    for kind in ("prm", "orm"):
        shutil.copytree(folders[kind], tmp_path / "gcs" / "bucket" / "rms" / kind)
    local = _experiment("clip_delta", ppo__reward_model=folders["prm"], ppo__outcome_coef=1.0,
                        ppo__outcome_reward_model=folders["orm"], plan__programs="scorer")
    remote = _experiment("clip_delta", ppo__reward_model="gs://bucket/rms/prm", ppo__outcome_coef=1.0,
                         ppo__outcome_reward_model="gs://bucket/rms/orm", plan__programs="scorer")
    a = plan.run(local, str(tmp_path / "a"))["programs"]["scorer"]
    b = plan.run(remote, str(tmp_path / "b"))["programs"]["scorer"]
    assert b["fits"] and b["error"] is None
    for key in ("params", "rm_params", "orm_params", "rm_length"):
        assert b["info"][key] == a["info"][key], key
    assert b["info"]["rm_model"] == "gs://bucket/rms/prm"


@pytest.mark.parametrize("reward", ["prm", "orm"])
def test_plan_scorer_with_one_deberta_reward_model(tmp_path, folders, reward):
    c = _experiment("prm_max" if reward == "prm" else "orm", ppo__reward_model=folders[reward],
                    plan__programs="scorer")
    info = plan.run(c, str(tmp_path))["programs"]["scorer"]["info"]
    assert info["rm_params"] == _size(reward_io.load_reward_model(folders[reward])[1])
    assert "orm_params" not in info
    assert (tmp_path / "plan.json").is_file()


def test_plan_scorer_of_the_pipeline_sizes_the_deberta_it_will_train(tmp_path, folders):
    """No ppo.reward_model: the PRM the main job trains from rm.init_from (a fresh head)."""
    c = _experiment(rm__backbone="deberta", rm__init_from=folders["base"], plan__programs="scorer")
    info = plan.run(c, str(tmp_path))["programs"]["scorer"]["info"]
    encoder, encoder_params = deberta_hf.load(folders["base"])
    assert info["rm_params"] == _size(encoder_params) + 32 + 1


def test_plan_rejects_a_wrong_reward_model_kind_and_a_deberta_critic(tmp_path, folders):
    c = _experiment("prm_max", ppo__reward_model=folders["orm"], plan__programs="scorer")
    with pytest.raises(ValueError, match="holds kind 'orm', but scheme 'prm_max' needs kind 'prm'"):
        plan.run(c, str(tmp_path))
    c = _experiment("prm_max", ppo__reward_model=folders["prm"], ppo__critic_init="reward_model",
                    plan__programs="scorer", ppo__advantage="gae")
    with pytest.raises(ValueError, match="ppo.critic_init"):
        plan.run(c, str(tmp_path))


# Published sizes (model cards): DeBERTa-v3-large 435M incl. the 131M embedding, base
# 184M, OPT-1.3B 1.316B, Qwen1.5-1.8B 1.837B, Qwen2-7B 7.62B.
@pytest.mark.parametrize("name,published,cls", [
    ("microsoft/deberta-v3-large", 435e6, deberta.DebertaConfig),
    ("microsoft/deberta-v3-base", 184e6, deberta.DebertaConfig),
    ("facebook/opt-1.3b", 1.316e9, ModelConfig),
    ("Qwen/Qwen1.5-1.8B", 1.837e9, ModelConfig),
    ("Qwen/Qwen2-7B", 7.62e9, ModelConfig)])
def test_hub_configs_match_the_published_sizes(name, published, cls):
    c = config_lib.base_config("t", "plan")
    cfg = shapes.model_config(c, name)
    assert isinstance(cfg, cls)
    module = deberta.DebertaEncoder(cfg) if shapes.is_deberta(cfg) else cfg
    n = shapes.count_params(models.abstract_params(module))
    assert abs(n - published) / published < 0.01, (name, n)
    if name == "microsoft/deberta-v3-large":
        assert cfg.vocab_size * cfg.hidden_size == 128100 * 1024  # the 131M embedding
        assert (cfg.relative_attention, cfg.position_buckets, cfg.share_att_key, cfg.rel_norm) == (
            True, 256, True, True)
        assert cfg.pos_att_type == ("p2c", "c2p") and not cfg.position_biased_input


def test_a_local_config_json_wins_over_the_hub_table(tmp_path):
    c = config_lib.base_config("t", "plan")
    d = dict(shapes.HUB_CONFIGS["microsoft/deberta-v3-base"], num_hidden_layers=2)
    (tmp_path / "config.json").write_text(json.dumps(d))
    assert shapes.model_config(c, str(tmp_path)).num_layers == 2
    assert shapes.model_config(c, "microsoft/deberta-v3-base").num_layers == 12
