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

from jaxstep.models.attention import ATTENTION_IMPLS  # model.attention
from jaxstep.models.decoder import REMAT_POLICIES  # model.remat
from jaxstep.parallel import mesh as mesh_lib
from jaxstep.rewards import shaping
from jaxstep.rl import advantages, losses
from jaxstep.data import formatting, step_checks

# Valid values of the config's name fields (the stages may import them from here).
STAGES = ("sft", "eval", "orm", "prm", "ppo", "pipeline", "sweep", "plan")  # config.stage
PPO_STAGES = ("ppo", "pipeline", "sweep")  # stages that run PPO
ESTIMATORS = tuple(advantages.ESTIMATORS)  # ppo.advantage, sweep.estimators (comma list)
# Estimators that normalise over the responses to one prompt (ppo.samples_per_prompt >= 2).
GROUP_ESTIMATORS = tuple(n for n, e in advantages.ESTIMATORS.items() if e.level in ("sequence", "step"))
LOSS_AGGREGATIONS = ("",) + tuple(losses.LOSS_AGGREGATIONS)  # ppo.loss_aggregation ("" = the estimator's)
SCHEMES = tuple(shaping.SCHEMES)  # ppo.scheme, sweep.schemes
KL_ESTIMATORS = ("k1", "k3")  # ppo.kl_estimator
CRITIC_INITS = ("reward_model", "policy")  # ppo.critic_init
RM_KINDS = ("orm", "prm")  # rm.kind
RM_LABELS = ("exact", "prm800k", "montecarlo")  # rm.labels
ORM_LABELS = ("samples", "prm800k")  # rm.orm_labels
RM_LOSSES = ("bce", "bt")  # rm.loss
LABEL_RULES = ("reference", "valid")  # rm.label_rule (jaxstep.data.step_checks.label_steps)
MC_MODES = ("hard", "soft")  # rm.mc_mode
RM_BACKBONES = ("decoder", "deberta")  # rm.backbone (jaxstep.rm.backbones.BACKBONES)
PLAN_PROGRAMS = ("sft", "rm", "sampler", "scorer", "update")  # plan.programs (comma list)
CORRUPTION_KINDS = tuple(step_checks.KINDS)  # rm.corruption_kinds (comma list)
PROMPT_TEMPLATES = tuple(formatting.PROMPT_TEMPLATES)  # data.prompt_template


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
    if stage == "pipeline":
        needed = set() if config.ppo.reward_model else {kind(config.ppo.scheme)}
        if config.ppo.get("outcome_coef", 0.0) > 0 and not config.ppo.get("outcome_reward_model"):
            needed.add("orm")  # the second reward model of PRM + ORM
        return needed
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
    one_of("data.prompt_template", config.data.get("prompt_template", "plain"), PROMPT_TEMPLATES)
    ways = _data_parallel(config, num_devices, errors)  # checks the mesh shape
    # PPO and sweep.
    one_of("ppo.scheme", p.scheme, SCHEMES)
    one_of("ppo.kl_estimator", p.kl_estimator, KL_ESTIMATORS)
    one_of("ppo.critic_init", p.critic_init, CRITIC_INITS)
    one_of("ppo.advantage", p.advantage, ESTIMATORS)
    one_of("ppo.loss_aggregation", p.loss_aggregation, LOSS_AGGREGATIONS)
    estimators = comma_list(s.estimators or p.advantage)
    bad = [x for x in estimators if x not in ESTIMATORS]
    check(bool(estimators) and not bad, "sweep.estimators", s.estimators,
          f"unknown estimator(s) {bad}; expected a comma list of {ESTIMATORS}" if bad else "no estimator")
    check(p.max_consecutive_skips >= 0, "ppo.max_consecutive_skips", p.max_consecutive_skips, "must be >= 0")
    check(p.outcome_coef >= 0, "ppo.outcome_coef", p.outcome_coef, "must be >= 0 (0 = no second reward model)")
    check(p.outcome_coef == 0 or p.scheme != "orm", "ppo.outcome_coef", p.outcome_coef,
          "adds an ORM to a PRM scheme; with ppo.scheme='orm' the ORM is already the reward (set 0)")
    for field in ("rm_step_tag", "rm_good_token", "rm_bad_token"):
        check(bool(p[field].strip()), f"ppo.{field}", p[field], "must be a non-empty token")
    check(p.rm_good_token != p.rm_bad_token, "ppo.rm_bad_token", p.rm_bad_token, "must differ from ppo.rm_good_token")
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
        used = estimators if config.stage == "sweep" else [p.advantage]
        group = [x for x in used if x in GROUP_ESTIMATORS]
        check(not group or p.samples_per_prompt >= 2, "ppo.samples_per_prompt", p.samples_per_prompt,
              f"advantage {group[0] if group else ''!r} compares the responses to one prompt: it needs "
              f"ppo.samples_per_prompt >= 2 (e.g. 4)")
        free = [x for x in used if x in ESTIMATORS and not advantages.needs_critic(x)]
        check(not free or p.critic_warmup_steps == 0, "ppo.critic_warmup_steps", p.critic_warmup_steps,
              f"advantage {free[0] if free else ''!r} has no critic to warm up; set 0")
    # Memory knobs (model.remat, model.logits_chunk, gradient accumulation).
    m = config.model
    one_of("model.remat", m.get("remat", "none"), REMAT_POLICIES)
    check(m.get("logits_chunk", 0) >= 0, "model.logits_chunk", m.get("logits_chunk", 0), "must be >= 0 (0 = off)")
    block = config.sampler.decode_block
    check(block >= 0, "sampler.decode_block", block, "must be >= 0 (0 = one decode loop over the whole cache)")
    for name, section in (("sft", config.sft), ("rm", r)):
        micro = section.get("microbatch_size", 0)
        check(micro >= 0 and (micro == 0 or section.batch_size % micro == 0), f"{name}.microbatch_size",
              micro, f"must be 0 (off) or divide {name}.batch_size={section.batch_size}")
    micro, rows = p.get("microbatch_size", 0), p.rollout_batch // max(p.minibatches, 1)
    check(micro >= 0 and (micro == 0 or micro >= rows or rows % micro == 0), "ppo.microbatch_size", micro,
          f"must be 0 (off) or divide the minibatch (ppo.rollout_batch / ppo.minibatches = {rows} rows)")
    one_of("model.attention", m.get("attention", "einsum"), ATTENTION_IMPLS)
    if config.stage == "plan" and "plan" in config:
        from jaxstep.parallel import aot  # noqa: PLC0415  (the TPU compiler loads lazily)
        try:
            aot.parse_topology(config.plan.topology)
        except ValueError as e:
            errors.append(f"plan.topology={config.plan.topology!r}: {e}")
        bad = [x for x in comma_list(config.plan.programs) if x not in PLAN_PROGRAMS]
        check(bool(comma_list(config.plan.programs)) and not bad, "plan.programs", config.plan.programs,
              f"expected a comma list of {PLAN_PROGRAMS}")
    # Reward models.
    one_of("rm.kind", r.kind, RM_KINDS)
    one_of("rm.labels", r.labels, RM_LABELS)
    one_of("rm.loss", r.loss, RM_LOSSES)
    one_of("rm.label_rule", r.label_rule, LABEL_RULES)
    one_of("rm.mc_mode", r.mc_mode, MC_MODES)
    bad = [x for x in comma_list(r.corruption_kinds) if x not in CORRUPTION_KINDS]
    check(not bad, "rm.corruption_kinds", r.corruption_kinds,
          f"unknown kind(s) {bad}; expected a comma list of {CORRUPTION_KINDS} ('' = all)")
    one_of("rm.orm_labels", r.get("orm_labels", "samples"), ORM_LABELS)
    one_of("rm.backbone", r.get("backbone", "decoder"), RM_BACKBONES)
    if r.get("backbone", "decoder") == "deberta" and trained_reward_models(config):
        check(bool(r.init_from), "rm.init_from", r.init_from,
              "rm.backbone='deberta' needs a DeBERTa-v2/v3 HF folder or hub name")
        check(not r.likelihood_feature, "rm.likelihood_feature", r.likelihood_feature,
              "must be False with rm.backbone='deberta' (an encoder has no LM head)")
    if "orm" in trained_reward_models(config) and r.get("orm_labels") == "prm800k":
        check(bool(r.prm800k_path), "rm.prm800k_path", r.prm800k_path,
              "rm.orm_labels='prm800k' needs a PRM800K .jsonl file or folder")
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
