"""The experiment files in configs/: every preset builds and passes `config_lib.validate`;
validate names the bad field; the main job's key values."""
import importlib.util
import pathlib
import subprocess
import sys

import pytest

from jaxstep import config_lib
from jaxstep.parallel import rules as rules_lib
from jaxstep.data import step_checks

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"
FILES = sorted(p.stem for p in CONFIG_DIR.glob("*.py"))
# Fields a preset leaves to the command line (the run needs them).
REQUIRED = {("train_prm", "prm800k"): {"rm.prm800k_path": "/data/prm800k/phase2_train.jsonl"},
            ("train_orm", "prm800k"): {"rm.prm800k_path": "/data/prm800k/phase2_train.jsonl"}}
# configs/ppo_<file suffix>.py -> its ppo.scheme.
PPO_FILES = {"ppo_orm": "orm", "ppo_prm_avg": "prm_avg", "ppo_prm_prod": "prm_prod",
             "ppo_prm_min": "prm_min", "ppo_prm_max": "prm_max", "ppo_prm_dense": "prm_dense",
             "ppo_prm_clip": "clip", "ppo_prm_delta": "delta", "ppo_prm_clip_delta": "clip_delta"}


def load(stem: str):
    spec = importlib.util.spec_from_file_location(f"configs_{stem}", CONFIG_DIR / f"{stem}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config(stem: str, preset: str = ""):
    return load(stem).get_config(preset)


def set_field(config, field: str, value):
    *path, name = field.split(".")
    section = config
    for part in path:
        section = section[part]
    section[name] = value


PRESETS = [(stem, preset) for stem in FILES for preset in load(stem).PRESETS]


def test_every_file_lists_its_presets():
    assert set(PPO_FILES) <= set(FILES)
    for stem in FILES:
        presets = load(stem).PRESETS
        assert presets[0] == "" and len(set(presets)) == len(presets), stem


@pytest.mark.parametrize("stem,preset", PRESETS, ids=[f"{s}:{p or 'cpu'}" for s, p in PRESETS])
def test_every_preset_builds_and_validates(stem, preset):
    c = get_config(stem, preset)
    for field, value in REQUIRED.get((stem, preset), {}).items():
        set_field(c, field, value)
    assert config_lib.validate(c) is c
    for devices in (1, 8):
        config_lib.validate(c, num_devices=devices)
    if preset == "":
        assert c.to_dict() == get_config(stem, "cpu").to_dict()  # "cpu" names the same preset


def test_unknown_preset_names_the_file_and_the_presets():
    with pytest.raises(ValueError, match=r"train_prm\.py: unknown preset 'nope'.*'montecarlo'"):
        get_config("train_prm", "nope")
    with pytest.raises(ValueError, match="unknown preset 'gsm8k_examples'"):
        get_config("ppo_prm_max", "gsm8k_examples")


@pytest.mark.parametrize("stem", sorted(PPO_FILES))
def test_ppo_files_are_the_main_job_with_their_scheme(stem):
    for preset in ("", "paper"):
        c = get_config(stem, preset)
        assert (c.stage, c.ppo.scheme) == ("pipeline", PPO_FILES[stem])
        assert c.rm.kind == config_lib.reward_model_kind(c.ppo.scheme)
        assert c.to_dict() == config_lib.ppo_experiment(PPO_FILES[stem], preset).to_dict()


def test_main_job_key_values():
    c = get_config("ppo_prm_max")
    assert (c.name, c.stage, c.ppo.scheme, c.rm.kind) == ("ppo_prm_max", "pipeline", "prm_max", "prm")
    assert (c.data.max_prompt_len, c.data.max_response_len, c.data.num_train) == (48, 64, 4000)
    assert (c.sft.steps, c.sft.batch_size, c.sft.learning_rate) == (500, 32, 5e-3)
    assert (c.rm.steps, c.rm.likelihood_feature, c.rm.lm_loss_weight, c.rm.labels) == (200, True, 10.0, "exact")
    assert (c.rm.contrast_problems, c.rm.corruption_kinds) == (4000, "arithmetic,operand")
    p = c.ppo
    assert (p.steps, p.rollout_batch, p.minibatches, p.epochs, p.samples_per_prompt) == (120, 64, 2, 1, 4)
    assert (p.advantage, p.kl_estimator, p.learning_rate, p.warmup_steps) == ("grpo", "k3", 1e-4, 10)
    assert (p.kl_coef, p.clip_eps, p.eta, p.critic_init, p.critic_zero_head) == (0.1, 0.2, 0.8, "reward_model", True)
    assert (p.eval_limit, c.pipeline.eval_limit, c.eval.pass_k, c.checkpoint.every_steps) == (0, 2000, 4, 40)
    assert c.model.hf_path == "" and c.model.dtype == "float32"


def test_paper_key_values():
    c = get_config("ppo_prm_max", "paper")
    # Pan et al.: an OPT-1.3B generator, DeBERTa-v3-large reward models (300M backbone).
    assert (c.model.hf_path, c.model.dtype, c.mesh.data, c.mesh.fsdp) == ("facebook/opt-1.3b", "bfloat16", 1, -1)
    assert (c.rm.backbone, c.rm.init_from, c.ppo.critic_init) == ("deberta", "microsoft/deberta-v3-large", "policy")
    assert (c.data.train_sources, c.data.max_prompt_len, c.data.max_response_len) == ("gsm8k,math", 320, 512)
    assert (c.ppo.steps, c.ppo.rollout_batch, c.ppo.minibatches, c.ppo.learning_rate) == (500, 128, 2, 1e-6)
    assert (c.rm.labels, c.rm.steps, c.sft.steps, c.pipeline.eval_limit) == ("montecarlo", 1000, 700, 0)
    assert (c.model.remat, c.model.attention) == ("full", "splash")  # the plan stage's settings (README)
    sft = get_config("sft", "paper")  # the paper SFT is written once (config_lib.sft_paper)
    assert sft.sft.to_dict() == c.sft.to_dict() and sft.model.hf_path == c.model.hf_path
    assert (sft.data.max_prompt_len, sft.checkpoint.every_steps) == (512, 100)


def test_clip_delta_paper_is_the_recipe():
    """Gao et al.'s setup: a Qwen1.5 policy on GSM8K, BT PRM + BCE ORM, Clip-Delta + ORM,
    KL 0.1, clip 0.2, 1024 prompts x 8 samples per iteration."""
    c = get_config("ppo_prm_clip_delta_orm", "paper")
    p = c.ppo
    assert (c.model.hf_path, c.data.train_sources, p.train_sources) == ("Qwen/Qwen1.5-1.8B", "gsm8k", "gsm8k")
    assert (p.scheme, p.outcome_coef, p.kl_coef, p.clip_eps, p.eta) == ("clip_delta", 1.0, 0.1, 0.2, 0.8)
    assert (p.rollout_batch // p.samples_per_prompt, p.samples_per_prompt) == (1024, 8)
    assert (c.rm.kind, c.rm.loss, c.rm.backbone, c.model.dtype) == ("prm", "bt", "decoder", "bfloat16")
    assert (p.rollout_batch // p.minibatches) % p.microbatch_size == 0


def test_sweep_is_the_main_job_with_the_longer_prm():
    c, main = get_config("sweep"), get_config("ppo_prm_max")
    assert (c.name, c.stage, c.sweep.schemes, c.rm.steps) == ("sweep", "sweep", "orm,prm_max,prm_min,clip_delta", 600)
    c.name, c.stage, c.rm.steps = main.name, main.stage, main.rm.steps
    assert c.to_dict() == main.to_dict()


BAD_VALUES = [  # (config file, field, bad value, expected words in the error)
    ("ppo_prm_max", "stage", "train", "expected one of"),
    ("ppo_prm_max", "ppo.scheme", "prm_median", "expected one of ('orm', 'prm_avg'"),
    ("sft", "ppo.scheme", "prm_median", "expected one of"),  # name fields: every stage
    ("ppo_prm_max", "ppo.kl_estimator", "k2", "expected one of ('k1', 'k3')"),
    ("ppo_prm_max", "ppo.critic_init", "random", "expected one of ('reward_model', 'policy')"),
    ("ppo_prm_max", "ppo.minibatches", 3, "rollout batch 64 must split into that many minibatches"),
    ("ppo_prm_max", "ppo.minibatches", 0, "rollout batch 64"),
    ("ppo_prm_max", "ppo.samples_per_prompt", 3, "divide the rollout batch 64"),
    ("ppo_prm_max", "ppo.samples_per_prompt", 1, "needs ppo.samples_per_prompt >= 2"),
    ("ppo_prm_max", "ppo.rollout_batch", 0, "must be >= 1"),
    ("ppo_prm_max", "ppo.max_consecutive_skips", -1, "must be >= 0"),
    ("sweep", "sweep.schemes", "orm,prm_median", "unknown scheme(s) ['prm_median']"),
    ("sweep", "sweep.schemes", " , ", "no scheme"),
    ("train_prm", "rm.kind", "grm", "expected one of ('orm', 'prm')"),
    ("train_prm", "rm.labels", "human", "expected one of ('exact', 'prm800k', 'montecarlo')"),
    ("train_prm", "rm.loss", "hinge", "expected one of ('bce', 'bt')"),
    ("train_prm", "rm.label_rule", "strict", "expected one of ('reference', 'valid')"),
    ("train_prm", "rm.mc_mode", "medium", "expected one of ('hard', 'soft')"),
    ("train_prm", "rm.corruption_kinds", "arithmetic,typo", "unknown kind(s) ['typo']"),
    ("train_prm", "rm.lm_loss_weight", 1.0, "needs rm.likelihood_feature=True"),  # with the feature off
    ("ppo_prm_max", "rm.prm800k_path", "", "rm.labels='prm800k' needs"),  # with labels=prm800k
]


@pytest.mark.parametrize("stem,field,value,words", BAD_VALUES, ids=[f"{f}={v!r}" for _, f, v, _ in BAD_VALUES])
def test_validate_names_the_bad_field(stem, field, value, words):
    c = get_config(stem)
    if field == "rm.lm_loss_weight":
        c.rm.likelihood_feature = False
    if field == "rm.prm800k_path":
        c.rm.labels = "prm800k"
    set_field(c, field, value)
    with pytest.raises(ValueError) as e:
        config_lib.validate(c)
    message = str(e.value)
    assert f"{field}={value!r}: " in message and words in message, message
    assert message.count("\n") == 1, f"one problem expected:\n{message}"


def test_validate_lists_every_problem():
    c = get_config("ppo_prm_max")
    c.ppo.scheme, c.rm.loss = "prm_median", "hinge"
    with pytest.raises(ValueError, match=r"2 problems\):\n  ppo\.scheme='prm_median'.*\n  rm\.loss='hinge'"):
        config_lib.validate(c)


def test_checks_follow_the_stage():
    c = get_config("sft")
    c.ppo.minibatches = 3  # the sft stage runs no PPO
    c.rm.lm_loss_weight, c.rm.likelihood_feature = 1.0, False  # ... and trains no PRM
    config_lib.validate(c, num_devices=8)
    c = get_config("train_orm")
    c.rm.lm_loss_weight, c.rm.likelihood_feature = 1.0, False  # ignored by an ORM
    config_lib.validate(c)
    c = get_config("ppo_prm_max")
    c.rm.labels, c.ppo.reward_model = "prm800k", "/runs/prm/export"  # a given PRM is not trained
    config_lib.validate(c)
    c = get_config("sweep")
    c.rm.labels, c.sweep.prm = "prm800k", "/runs/prm/export"
    config_lib.validate(c)
    c.sweep.prm = ""
    with pytest.raises(ValueError, match="rm.prm800k_path"):
        config_lib.validate(c)


def test_device_checks_need_the_device_count():
    c = get_config("ppo_prm_max")
    c.ppo.samples_per_prompt = 2  # so that a batch of 6 is whole prompts too
    c.ppo.rollout_batch, c.ppo.minibatches = 8, 4  # 2 rows per minibatch
    config_lib.validate(c)
    config_lib.validate(c, num_devices=2)
    with pytest.raises(ValueError, match="ppo.minibatches=4: the rollout batch 8 .* over 8 data-parallel devices"):
        config_lib.validate(c, num_devices=8)
    c.ppo.rollout_batch, c.ppo.minibatches = 6, 3  # rounded up to 8 on 8 devices: 3 minibatches do not fit
    with pytest.raises(ValueError, match="ppo.minibatches=3: the rollout batch 8 "):
        config_lib.validate(c, num_devices=8)
    c.mesh.tensor = 2  # 4 devices: 2 data-parallel ways, 2 rows per minibatch
    config_lib.validate(c, num_devices=4)
    with pytest.raises(ValueError, match="rollout batch 8"):  # rounded up to a multiple of 4 processes
        config_lib.validate(c, num_devices=4, num_processes=4)
    c = get_config("sft", "paper")
    c.mesh.data, c.mesh.fsdp = 3, -1
    with pytest.raises(ValueError, match=r"mesh.data/fsdp/tensor=3/-1/1: .*does not divide 8 devices"):
        config_lib.validate(c, num_devices=8)


def test_names_come_from_their_modules():
    from jaxstep.rewards import shaping
    assert config_lib.SCHEMES == tuple(shaping.SCHEMES)
    assert config_lib.CORRUPTION_KINDS == tuple(step_checks.KINDS)
    main = pytest.importorskip("jaxstep.main")
    assert set(main.STAGES) == set(config_lib.STAGES)


def test_default_rules_live_in_parallel_rules():
    assert config_lib.DEFAULT_RULES is rules_lib.DEFAULT_RULES
    assert config_lib.base_config("x", "sft").mesh.rules == rules_lib.DEFAULT_RULES


def test_config_lib_imports_no_stage_code():
    code = ("import sys, jaxstep.config_lib; "
            "bad = sorted(m for m in sys.modules if m.startswith(('jaxstep.train', 'jaxstep.stages'))); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=CONFIG_DIR.parent)
