"""Stage `plan`: will the experiment fit a TPU slice, and how fast will it run?

    python -m jaxstep.main --config=configs/ppo_prm_max.py:paper --config.stage=plan \\
        --config.plan.topology=v5e-8 --workdir=runs/plan

Compiles, ahead of time and from abstract shapes only (no weights, no data, no
downloads), the jitted programs the experiment's stages run, for `plan.topology` (a
Cloud TPU slice, compiled here with the TPU compiler, `jaxstep.parallel.aot`; h100-N /
h200-N GPUs, compiled with the CUDA plugin and no GPU, `jaxstep.parallel.gpu_targets`;
or cpu-N):

  sft      the SFT train step (`jaxstep.stages.sft.train_step`), batch `sft.batch_size`
  rm       the reward-model train step (`jaxstep.stages.reward_model.train_step`); with
           `rm.backbone="deberta"` the DeBERTa ORM/PRM of `rm.init_from`
           (`jaxstep.models.deberta_heads`, block-causal PRM batches with step ends)
  sampler  the KV-cache sampler (prefill + decode loop, `jaxstep.models.generate`), at
           `sampler.batch_size` prompts (rollouts run in chunks of it)
  scorer   the rollout scorer (`jaxstep.rl.scorer.make_scorer`), one chunk of
           min(ppo.rollout_batch, sampler.batch_size) rows; frozen params in bf16 when
           model.dtype is (`jaxstep.parallel.placement.frozen_dtype`); with
           `ppo.outcome_coef` > 0 also the ORM (PRM + ORM); a DeBERTa reward model
           (a `ppo.reward_model` export, or `rm.backbone="deberta"`) scores its own
           re-tokenized copy of the rollouts (P + R tokens, `ppo.max_steps` step slots)
  update   the PPO update (`jaxstep.rl.update.make_ppo_update`)

Model shapes come from a local folder's config.json, or for hub names from
`jaxstep.models.shapes.HUB_CONFIGS` (the HF configs of the models the presets use), or
from `config.model` for the tiny decoder. Params are float32 master weights sharded by `mesh.rules` over
`mesh` (resolved on the slice's chips); the programs use the experiment's
`model.remat`, `model.logits_chunk`, `model.attention` and microbatch sizes.

Writes `<workdir>/plan.json` and `plan.md` (a local folder or a gs:// URL,
`jaxstep.paths`): per program and per chip, argument,
output, temporary and code bytes, the peak (see `jaxstep.parallel.aot.analyze`), the
chip's HBM and whether it fits; FLOPs and the time at peak; for the run, the estimated
seconds per PPO iteration and the update's estimated MFU. Raises SystemExit (exit
status 1) naming the knobs when a program does not fit (`plan.fail_on_oom`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import time

import jax
import jax.numpy as jnp

from jaxstep import generation, models
from jaxstep.config_lib.validation import PLAN_PROGRAMS, comma_list
from jaxstep import paths as paths_lib
from jaxstep.models import deberta_heads
from jaxstep.models.shapes import count_params, deberta_reward_model, is_deberta, model_config, model_paths
from jaxstep.parallel import aot
from jaxstep.parallel import gpu_targets
from jaxstep.parallel import mesh as mesh_lib
from jaxstep.parallel import placement
from jaxstep.parallel import rules as rules_lib
from jaxstep.rewards.shaping import reward_model_kind
from jaxstep.rl import scorer as scorer_lib
from jaxstep.rl import update as update_lib
from jaxstep.reports import plan as plan_report
from jaxstep.rl import advantages
from jaxstep.stages import ppo as ppo_stage
from jaxstep.stages import reward_model as rm_stage
from jaxstep.stages import sft as sft_stage
from jaxstep.train.optim import make_optimizer, ppo_optimizer

logger = logging.getLogger(__name__)

PROGRAMS = PLAN_PROGRAMS
KNOBS = ("model.remat (full, dots_no_batch, offload)", "model.logits_chunk", "sft.microbatch_size",
         "rm.microbatch_size", "ppo.microbatch_size", "ppo.minibatches", "model.attention (xla)",
         "mesh.fsdp (shard params over more chips)",
         "sampler.batch_size / ppo.rollout_batch", "a larger plan.topology")


def _topology(config) -> aot.Topology:
    """`plan.topology`, for GPUs described by `plan.gpu_target_config` when set (its
    device_memory_size, when it has one, is the memory the programs must fit)."""
    topo = aot.parse_topology(config.plan.topology)
    path = config.plan.get("gpu_target_config", "")
    if topo.is_gpu and path:
        memory = gpu_targets.memory_bytes(paths_lib.read_text(path))
        topo = dataclasses.replace(topo, target_config_file=path, hbm_bytes=memory or topo.hbm_bytes)
    return topo


def prepare(config) -> None:
    """Before jax starts (`jaxstep.main`): the plan compiles for a described target, so
    this process runs on the host CPU alone, and a cpu-N topology needs N host CPU devices.

    Without JAX_PLATFORMS, jax would start every backend it finds: a TPU VM's chips (held
    while the plan compiles, and busy if a job runs there) and the CUDA plugin, whose
    start-up check fails without the CUDA libraries and leaves h100-N/h200-N with no
    compiler ("topology not implemented for cuda"). A JAX_PLATFORMS the user set is kept.
    """
    if not os.environ.get("JAX_PLATFORMS"):
        try:
            jax.config.update("jax_platforms", "cpu")
        except RuntimeError:  # jax already started (a library caller): its platforms stay
            pass
    topo = aot.parse_topology(config.plan.topology)
    if topo.is_cpu:
        try:
            jax.config.update("jax_num_cpu_devices", max(topo.num_chips, 1))
        except RuntimeError:  # jax already started; abstract_devices explains if too few
            pass


# ----------------------------------------------------------------------------- shapes


class _Builder:
    """Abstract (sharded `ShapeDtypeStruct`) params, optimizer states and batches on a mesh."""

    def __init__(self, mesh, rules):
        self.mesh, self.rules = mesh, rules
        self.replicated = rules_lib.replicated(mesh)

    def params(self, module, dtype=jnp.float32):
        """f32 master weights; frozen models (reference, reward model) in `frozen_dtype`."""
        shapes = models.abstract_params(module)
        shardings = rules_lib.param_shardings(shapes, models.logical_specs(module), self.mesh, self.rules)
        return aot.with_shardings(shapes, shardings, dtype)

    def opt_state(self, tx, params):
        """`tx.init(params)` shapes: param-shaped subtrees (moments) sharded like the params,
        the rest (counts) replicated."""
        shapes = jax.eval_shape(tx.init, params)
        pdef = jax.tree.structure(params)
        shardings = jax.tree.map(lambda p: p.sharding, params)
        tree = jax.tree.map(lambda x: shardings if jax.tree.structure(x) == pdef else self.replicated,
                            shapes, is_leaf=lambda x: jax.tree.structure(x) == pdef)
        return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, tree)

    def scalar(self, dtype=jnp.int32):
        return jax.ShapeDtypeStruct((), dtype, sharding=self.replicated)

    def key(self):
        return jax.ShapeDtypeStruct((), jax.eval_shape(lambda: jax.random.key(0)).dtype, sharding=self.replicated)

    def batch(self, **shapes):
        """`name=((dims...), dtype)` -> ShapeDtypeStructs with dim 0 over the data axes."""
        return {k: jax.ShapeDtypeStruct(s, d, sharding=rules_lib.batch_sharding(self.mesh, len(s)))
                for k, (s, d) in shapes.items()}

    def train_state(self, module, tx):
        params = self.params(module)
        return {"params": params, "opt_state": self.opt_state(tx, params), "step": self.scalar(),
                "rng": self.key()}


def _round(batch: int, ways: int) -> int:
    return max(ways, -(-batch // ways) * ways)


# ----------------------------------------------------------------------------- programs


def build_programs(config, mesh, names) -> dict[str, tuple]:
    """`{name: (fn, abstract_args, compile_kwargs, info)}` for the programs in `names`."""

    b = _Builder(mesh, config.mesh.rules)
    ways = mesh_lib.data_parallel_size(mesh)
    d, m, p, r = config.data, config.model, config.ppo, config.rm
    remat, chunk = m.get("remat", "none"), m.get("logits_chunk", 0)
    attn = m.get("attention", "einsum")  # the attention product of every model (jaxstep.models.attention)
    paths = model_paths(config)
    policy_cfg, rm_cfg = model_config(config, paths["policy"]), model_config(config, paths["rm"])
    policy = models.Decoder(policy_cfg, remat=remat, attention=attn)
    block_causal = bool(r.get("block_causal", True))
    P, R = d.max_prompt_len, d.max_response_len
    kw = dict(mesh=mesh, rules=config.mesh.rules)
    out = {}
    if "sft" in names:
        B, L = _round(config.sft.batch_size, ways), config.sft.max_len or P + R
        tx = make_optimizer(config.sft)
        step = functools.partial(sft_stage.train_step, policy, tx,
                                 microbatch_size=config.sft.get("microbatch_size", 0), logits_chunk=chunk)
        out["sft"] = (step, (b.train_state(policy, tx), b.batch(
            ids=((B, L), jnp.int32), mask=((B, L), bool), loss_mask=((B, L), bool))),
            dict(kw, donate_argnums=0), dict(batch=B, length=L, model=paths["policy"] or "tiny",
                                             params=count_params(b.params(policy)), loops=_loops(B, config.sft)))
    if "rm" in names:
        kind = config.stage if config.stage in ("orm", "prm") else r.kind
        loss = r.loss if kind == "prm" else "bce"
        if r.get("backbone", "decoder") == "deberta" and not r.init_from:
            raise ValueError("rm.backbone='deberta' needs rm.init_from: a DeBERTa-v2/v3 HF folder or a "
                             "jaxstep.models.shapes.HUB_CONFIGS name to size it")
        train_cfg = model_config(config, paths["rm_train"])
        if is_deberta(train_cfg):  # as jaxstep.rm.backbones builds it: the encoder + a fresh head
            boundary = ()
            rm_model = deberta_heads.DebertaRewardModel(train_cfg, kind=kind, block_causal=block_causal,
                                                        remat=(remat or "none") != "none")
        else:
            boundary = (1,) if (r.likelihood_feature and kind == "prm") else ()
            rm_model = models.ScalarModel(rm_cfg, remat=remat, boundary_ids=boundary, attention=attn)
        B, L = _round(r.batch_size, ways), r.max_len or P + R
        S = config.plan.rm_steps if kind == "prm" else 1
        lm_weight = float(r.lm_loss_weight) if (loss == "bce" and boundary) else 0.0
        tx = make_optimizer(r)
        step = functools.partial(rm_stage.train_step, rm_model, tx, loss, lm_weight=lm_weight,
                                 microbatch_size=r.get("microbatch_size", 0))
        if loss == "bt":
            # A block-causal PRM also takes every row's step ends (encode_pairs(with_steps=True)).
            steps = (dict(step_ends=((B, 2, S), jnp.int32), step_mask=((B, 2, S), bool))
                     if getattr(rm_model, "needs_step_ends", False) else {})
            batch = b.batch(ids=((B, 2, L), jnp.int32), mask=((B, 2, L), bool), target=((B, 2), jnp.int32),
                            pair_mask=((B,), bool), **steps)
        else:
            batch = b.batch(ids=((B, L), jnp.int32), mask=((B, L), bool), step_ends=((B, S), jnp.int32),
                            step_mask=((B, S), bool), labels=((B, S), jnp.float32),
                            label_mask=((B, S), bool), lm_mask=((B, L), bool))
        out["rm"] = (step, (b.train_state(rm_model, tx), batch), dict(kw, donate_argnums=0),
                     dict(batch=B, length=L, kind=kind, loss=loss, model=paths["rm_train"] or "tiny",
                          params=count_params(b.params(rm_model)), loops=_loops(B, r)))
    temperature = ppo_stage.rollout_temperature(config)
    B = _round(p.rollout_batch, ways)
    if "sampler" in names:
        SB = _round(config.sampler.batch_size or p.rollout_batch, ways)  # rollouts run in chunks of it
        s = config.sampler

        def sample(params, ids, mask, key):
            return models.generate(policy, params, ids, mask, key, max_new_tokens=R, temperature=temperature,
                                   top_k=s.top_k, top_p=s.top_p, eos_id=policy_cfg.eos_token_id or 0, pad_id=0,
                                   decode_block=s.decode_block)
        out["sampler"] = (sample, (b.params(policy), *b.batch(ids=((SB, P), jnp.int32),
                                                              mask=((SB, P), jnp.int32)).values(), b.key()),
                          kw, dict(batch=SB, rollout_batch=B, prompt_len=P, new_tokens=R,
                                 params=count_params(b.params(policy)), loops=R))
    needs_critic = _needs_critic(config)
    if (needs_critic and p.critic_init == "reward_model" and is_deberta(rm_cfg)
            and {"scorer", "update"} & set(names)):
        raise ValueError(f"ppo.critic_init='reward_model' needs a decoder reward model; {paths['rm']} is a "
                         "DeBERTa encoder (set ppo.critic_init='policy')")
    critic_cfg = rm_cfg if p.critic_init == "reward_model" and not is_deberta(rm_cfg) else policy_cfg
    critic = models.ScalarModel(critic_cfg, remat=remat, attention=attn)
    T = P + R
    seq = dict(input_ids=((B, T), jnp.int32), attention_mask=((B, T), jnp.int32),
               response_mask=((B, T), jnp.float32), old_logprobs=((B, T), jnp.float32),
               positions=((B, T), jnp.int32))
    if "scorer" in names:
        rm_kind = reward_model_kind(p.scheme)
        if is_deberta(rm_cfg):  # a DeBERTa export (or what the pipeline trains from rm.init_from)
            rm_model = deberta_reward_model(config, paths["rm"], rm_kind, block_causal=block_causal,
                                            fresh_head=not p.reward_model)
        else:
            rm_model = models.ScalarModel(rm_cfg, boundary_ids=_rm_boundary_ids(config, rm_kind), attention=attn)
        orm_model = None
        if p.outcome_coef > 0:  # PRM + ORM in one reward: the ORM is the scorer's second model
            orm_cfg = model_config(config, paths["orm"])
            orm_model = (deberta_reward_model(config, paths["orm"], "orm", fresh_head=not p.outcome_reward_model)
                         if is_deberta(orm_cfg) else models.ScalarModel(orm_cfg, attention=attn))
        for name, model in (("reward_model", rm_model), ("outcome_reward_model", orm_model)):
            want = rm_kind if name == "reward_model" else "orm"
            if getattr(model, "kind", want) != want:
                raise ValueError(f"plan: ppo.{name} ({paths['rm' if name == 'reward_model' else 'orm']}) holds "
                                 f"kind {model.kind!r}, but scheme {p.scheme!r} needs kind {want!r}")
        s = config.sampler
        recompute = (p.recompute_logprobs or s.top_k > 0 or s.top_p < 1.0
                     or jnp.dtype(m.dtype) != jnp.float32)  # as the ppo stage decides
        scorer = scorer_lib.make_scorer(
            policy, critic if needs_critic else None, rm_model, rm_kind, ppo_stage.shaping_settings(config),
            prompt_len=P, temperature=temperature, recompute_logprobs=recompute, mesh=mesh,
            rules=config.mesh.rules, logits_chunk=chunk, orm_model=orm_model)
        frozen = placement.frozen_dtype(m.dtype)  # as the ppo stage keeps them
        params = {"policy": b.params(policy), "ref": b.params(policy, frozen), "rm": b.params(rm_model, frozen)}
        if orm_model is not None:
            params["orm"] = b.params(orm_model, frozen)
        if needs_critic:
            params["critic"] = b.params(critic)
        CB = generation.chunk_rows(B, config.sampler.batch_size, mesh)  # rows per scorer call
        cseq = {k: ((CB, T), dtype) for k, (_, dtype) in seq.items()}
        # An encoder reward model reads its own re-tokenized copy of every rollout, padded to
        # P + R tokens with the rollout's step slots (jaxstep.rl.rollout.reward_model_batch).
        retokenized = [prefix for prefix, model in (("rm_", rm_model), ("orm_", orm_model))
                       if isinstance(model, deberta_heads.DebertaRewardModel)]
        for prefix in retokenized:
            cseq.update({prefix + "ids": ((CB, T), jnp.int32), prefix + "mask": ((CB, T), jnp.int32),
                         prefix + "step_ends": ((CB, p.max_steps), jnp.int32),
                         prefix + "step_mask": ((CB, p.max_steps), bool)})
        batch = b.batch(**cseq, step_ends=((CB, p.max_steps), jnp.int32), step_mask=((CB, p.max_steps), bool),
                        lengths=((CB,), jnp.int32), success=((CB,), jnp.float32))
        sizes = {k: count_params(v) for k, v in params.items()}
        info = dict(batch=CB, length=T, loops=-(-B // CB), params=sum(sizes.values()),
                    rm_params=sizes["rm"], rm_model=paths["rm"] or "tiny")
        if orm_model is not None:
            info.update(orm_params=sizes["orm"], orm_model=paths["orm"] or "tiny")
        if retokenized:
            info["rm_length"] = T
        out["scorer"] = (scorer.jitted, (params, batch), kw, info)
    if "update" in names:
        cfg = ppo_stage.ppo_update_config(config)
        policy_tx = ppo_optimizer(p.learning_rate, p)
        critic_tx = ppo_optimizer(p.critic_learning_rate, p) if needs_critic else None
        pp = b.params(policy)
        cp = b.params(critic) if needs_critic else None
        state = update_lib.PPOState(
            policy_params=pp, policy_opt_state=b.opt_state(policy_tx, pp), critic_params=cp,
            critic_opt_state=b.opt_state(critic_tx, cp) if needs_critic else None,
            kl=update_lib.KLState(coef=b.scalar(jnp.float32)), step=b.scalar())
        update = update_lib.make_ppo_update(
            scorer_lib.make_policy_apply(policy, P), scorer_lib.make_critic_apply(critic) if needs_critic else None,
            policy_tx, critic_tx, cfg, mesh=mesh, logical_rules=config.mesh.rules,
            state_shardings=jax.tree.map(lambda x: x.sharding, state),
            policy_logprobs=scorer_lib.make_policy_logprobs(policy, P, chunk))
        extra = dict(values=((B, T), jnp.float32), token_rewards=((B, T), jnp.float32),
                     ref_logprobs=((B, T), jnp.float32))
        out["update"] = (update.update, (state, b.batch(**seq, **extra), b.key()),
                         dict(kw, donate_argnums=0, out_shardings=(jax.tree.map(lambda x: x.sharding, state),
                                                                   b.replicated)),
                         dict(batch=B, length=T, critic=needs_critic, loops=cfg.epochs * cfg.minibatches
                              * _loops(B // cfg.minibatches, p), microbatch=cfg.microbatch_size,
                              policy_params=count_params(pp), critic_params=count_params(cp) if cp else 0))
    return out


def _rm_boundary_ids(config, rm_kind: str) -> tuple[int, ...]:
    """A stand-in for the PRM's likelihood-feature ids (their count does not change the
    program's size): from ppo.reward_model's reward_model.json, else the rm section."""
    path = paths_lib.join(config.ppo.reward_model, "reward_model.json") if config.ppo.reward_model else ""
    if path and paths_lib.isfile(path):  # a local folder or a bucket (gs://...)
        return tuple(json.loads(paths_lib.read_text(path)).get("likelihood_boundary_ids") or ())
    return (1,) if rm_kind == "prm" and config.rm.likelihood_feature else ()


def _loops(batch: int, section) -> int:
    micro = section.get("microbatch_size", 0)
    return batch // micro if 0 < micro < batch else 1


def _needs_critic(config) -> bool:
    advantage = config.ppo.get("advantage", "gae")
    return getattr(advantages, "needs_critic", lambda name: True)(advantage)


# ----------------------------------------------------------------------------- stage


@contextlib.contextmanager
def _cudnn_advice(topo):
    """jax's "cuDNN not found" (cudnn attention traced without the library) as an error
    that says what to do."""
    try:
        yield
    except RuntimeError as e:
        if "cuDNN" not in str(e):
            raise
        raise ValueError(f"plan: model.attention='cudnn' needs the cuDNN library to compile for "
                         f"{topo.name} ({e}); plan GPUs with --config.model.attention=xla "
                         "(jax.nn.dot_product_attention through XLA), or install jax[cuda12]") from e


def _write(config, topo, mesh, reports, workdir: str, started: float) -> dict:
    plan = plan_report.summarize(config, topo, dict(mesh.shape), reports)
    plan["seconds"] = round(time.time() - started, 1)
    # Through jaxstep.paths (etils.epath): a gs:// workdir works like a local one.
    paths_lib.write_text(paths_lib.join(workdir, "plan.json"), json.dumps(plan, indent=2, default=str))
    paths_lib.write_text(paths_lib.join(workdir, "plan.md"), plan_report.markdown(plan))
    return plan


def run(config, workdir: str) -> dict:
    """Compiles the programs of `plan.programs` for `plan.topology`; writes plan.json and
    plan.md in `workdir`; returns the plan. Raises SystemExit(message) when one does not
    fit and `plan.fail_on_oom`."""
    started = time.time()
    topo = _topology(config)
    names = comma_list(config.plan.programs)
    bad = [n for n in names if n not in PROGRAMS]
    if bad or not names:
        raise ValueError(f"plan.programs={config.plan.programs!r}: expected a comma list of {PROGRAMS}")
    mesh = aot.make_abstract_mesh(topo, config.mesh)
    logger.info("plan: %s (%d chips, %s), mesh %s, remat %s", topo.name, topo.num_chips,
                plan_report.size(topo.hbm_bytes), dict(mesh.shape), config.model.get("remat", "none"))
    reports = {}
    with _cudnn_advice(topo):  # tracing (build_programs) or compiling cudnn attention
        programs = build_programs(config, mesh, names)
        for i, name in enumerate(names, 1):
            fn, args, kwargs, info = programs[name]
            logger.info("plan: [%d/%d] compiling %s for %s ...", i, len(names), name, topo.name)
            report = aot.compile_and_analyze(name, fn, *args, topology=topo, **kwargs)
            report.update(info=info, error=(report["error"] or "")[:2000] or None)
            reports[name] = report
            logger.info("plan: %s", aot.format_report(report))
            plan = _write(config, topo, mesh, reports, workdir, started)  # after each program: partial plans
    logger.info("plan: wrote %s (%.0f s)", paths_lib.join(workdir, "plan.md"), plan["seconds"])
    too_big = [n for n, rep in reports.items() if not rep["fits"]]
    if too_big and config.plan.fail_on_oom:
        raise SystemExit(f"plan: {', '.join(too_big)} does not fit {topo.name} "
                         f"({plan_report.size(topo.hbm_bytes)} per chip); see {workdir}/plan.md. "
                         f"Knobs: {'; '.join(KNOBS)}.")
    return plan
