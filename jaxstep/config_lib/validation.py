"""`validate(config)`: the checks a config can fail before any stage runs.

`jaxstep.main` calls it after the command-line overrides; one ValueError names every bad
field (`ppo.minibatches=3: ...`). Name fields are checked for every stage (their
defaults are valid); the PPO batch checks apply to the stages that run PPO, the PRM
checks to the stages that train a PRM.

With `num_devices` (and `num_processes`), as `jaxstep.main` passes them, the mesh shape
and the rollout batch over the data-parallel devices are checked too; without them
those checks are left to the stages, which hold the real mesh. Also left to the stages:
checks of files and data (folders exist, a reward model's kind, tokenizers, data-source
weights, the synthetic-problem knobs).
"""
from __future__ import annotations

import math
from typing import Any

from jaxstep.data import synthetic
from jaxstep.parallel import mesh as mesh_lib
from jaxstep.rewards import shaping

# Valid values of the config's name fields (the stages may import them from here).
STAGES = ("sft", "eval", "orm", "prm", "ppo", "pipeline", "sweep")  # config.stage
PPO_STAGES = ("ppo", "pipeline", "sweep")  # stages that run PPO
SCHEMES = tuple(shaping.SCHEMES)  # ppo.scheme, sweep.schemes
KL_ESTIMATORS = ("k1", "k3")  # ppo.kl_estimator
CRITIC_INITS = ("reward_model", "policy")  # ppo.critic_init
RM_KINDS = ("orm", "prm")  # rm.kind
RM_LABELS = ("exact", "prm800k", "montecarlo")  # rm.labels
RM_LOSSES = ("bce", "bt")  # rm.loss
LABEL_RULES = ("reference", "valid")  # rm.label_rule (jaxstep.data.synthetic.label_steps)
MC_MODES = ("hard", "soft")  # rm.mc_mode
CORRUPTION_KINDS = tuple(synthetic.KINDS)  # rm.corruption_kinds (comma list)


def comma_list(spec: str) -> list[str]:
    """"orm, prm_max" -> ["orm", "prm_max"]."""
    return [s.strip() for s in spec.split(",") if s.strip()]


def trained_reward_models(config) -> set[str]:
    """The reward-model kinds the stage trains: stage orm/prm its own; the main job the
    one its scheme needs unless `ppo.reward_model` is given; the sweep those its schemes
    need unless `sweep.prm` / `sweep.orm` are given."""
    stage = config.stage
    kind = lambda scheme: "orm" if scheme == "orm" else "prm"  # noqa: E731 (unknown schemes are reported apart)
    if stage in RM_KINDS:
        return {stage}
    if stage == "pipeline" and not config.ppo.reward_model:
        return {kind(config.ppo.scheme)}
    if stage == "sweep":
        given = {"prm": config.sweep.prm, "orm": config.sweep.orm}
        return {k for k in map(kind, comma_list(config.sweep.schemes)) if not given[k]}
    return set()


def _data_parallel(config, num_devices: int | None, errors: list[str]) -> int:
    """How many ways the batch splits over the mesh (1 without `num_devices`)."""
    if num_devices is None:
        return 1
    try:
        shape = mesh_lib.mesh_shape(config.mesh, num_devices)
    except ValueError as e:
        errors.append(f"mesh.data/fsdp/tensor={config.mesh.data}/{config.mesh.fsdp}/{config.mesh.tensor}: {e}")
        return 1
    return shape["data"] * shape["fsdp"]


def problems(config, num_devices: int | None = None, num_processes: int = 1) -> list[str]:
    """Every problem `validate` would raise for, one line each, naming the field."""
    errors: list[str] = []

    def check(ok: bool, field: str, value: Any, why: str):
        if not ok:
            errors.append(f"{field}={value!r}: {why}")

    def one_of(field: str, value: Any, allowed: tuple):
        check(value in allowed, field, value, f"expected one of {allowed}")

    p, r, s = config.ppo, config.rm, config.sweep
    one_of("stage", config.stage, STAGES)
    ways = _data_parallel(config, num_devices, errors)  # checks the mesh shape
    # PPO and sweep.
    one_of("ppo.scheme", p.scheme, SCHEMES)
    one_of("ppo.kl_estimator", p.kl_estimator, KL_ESTIMATORS)
    one_of("ppo.critic_init", p.critic_init, CRITIC_INITS)
    check(p.max_consecutive_skips >= 0, "ppo.max_consecutive_skips", p.max_consecutive_skips, "must be >= 0")
    schemes = comma_list(s.schemes)
    bad = [x for x in schemes if x not in SCHEMES]
    check(bool(schemes) and not bad, "sweep.schemes", s.schemes,
          f"unknown scheme(s) {bad}; expected a comma list of {SCHEMES}" if bad else "no scheme")
    if config.stage in PPO_STAGES:
        check(p.rollout_batch >= 1, "ppo.rollout_batch", p.rollout_batch, "must be >= 1")
        step = math.lcm(ways, num_processes)  # the stage rounds the batch up to a multiple of this
        batch = max(step, -(-p.rollout_batch // step) * step)
        over = f" that divide over {ways} data-parallel devices" if ways > 1 else ""
        check(p.rollout_batch < 1 or (p.minibatches >= 1 and batch % p.minibatches == 0
                                      and (batch // p.minibatches) % ways == 0),
              "ppo.minibatches", p.minibatches, f"the rollout batch {batch} must split into that many "
              f"minibatches{over}")
        check(p.rollout_batch < 1 or (p.samples_per_prompt >= 1 and batch % p.samples_per_prompt == 0),
              "ppo.samples_per_prompt", p.samples_per_prompt, f"must be >= 1 and divide the rollout batch {batch}")
    # Reward models.
    one_of("rm.kind", r.kind, RM_KINDS)
    one_of("rm.labels", r.labels, RM_LABELS)
    one_of("rm.loss", r.loss, RM_LOSSES)
    one_of("rm.label_rule", r.label_rule, LABEL_RULES)
    one_of("rm.mc_mode", r.mc_mode, MC_MODES)
    bad = [x for x in comma_list(r.corruption_kinds) if x not in CORRUPTION_KINDS]
    check(not bad, "rm.corruption_kinds", r.corruption_kinds,
          f"unknown kind(s) {bad}; expected a comma list of {CORRUPTION_KINDS} ('' = all)")
    if "prm" in trained_reward_models(config):
        check(r.labels != "prm800k" or bool(r.prm800k_path), "rm.prm800k_path", r.prm800k_path,
              "rm.labels='prm800k' needs a PRM800K .jsonl file or folder")
        check(r.labels != "montecarlo" or r.mc_samples >= 1, "rm.mc_samples", r.mc_samples,
              "rm.labels='montecarlo' needs >= 1 completion per step prefix")
        check(r.lm_loss_weight <= 0 or r.likelihood_feature, "rm.lm_loss_weight", r.lm_loss_weight,
              "> 0 needs rm.likelihood_feature=True (the PRM keeps the LM head)")
    return errors


def validate(config, num_devices: int | None = None, num_processes: int = 1):
    """Raises one ValueError naming every bad field of `config` (see `problems`); returns
    `config`. `num_devices` (jax.device_count()) adds the mesh checks; `num_processes`
    (jax.process_count()) rounds the rollout batch as the PPO stage does."""
    errors = problems(config, num_devices, num_processes)
    if errors:
        raise ValueError(f"invalid config ({len(errors)} problem{'s' * (len(errors) > 1)}):\n  "
                         + "\n  ".join(errors))
    return config
