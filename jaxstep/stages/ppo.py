"""Stage `ppo`: PPO of the SFT policy on ORM/PRM rewards.

    python -m jaxstep.main --config=configs/ppo_prm_max.py --config.stage=ppo \\
        --config.ppo.policy=runs/x/sft/export --config.ppo.reward_model=runs/x/prm/export \\
        --workdir=runs/x/ppo

(`configs/ppo_*.py` run the whole chain, `jaxstep.stages.pipeline`, which calls this
stage in `<workdir>/ppo` with the SFT and PRM it trained next to it.)

One iteration:
  prompts (a weighted mix of sources, `ppo.train_sources`, read by a resumable loader)
  -> rollout with the KV-cache sampler (the current policy)
  -> response text, final-answer grading, step boundaries in the generated tokens
  -> one jitted pass (`jaxstep.rl.scorer.make_scorer`): reference logprobs (frozen
     SFT params), critic values, reward-model scores, shaped token rewards
     (`ppo.scheme`, alpha, eta, success reward; with `ppo.outcome_coef` > 0 also a
     second model's, an ORM's, score at the last token: PRM + ORM in one reward)
  -> the jitted, sharded PPO update (`jaxstep.rl.update`: KL to the reference, GAE,
     policy + critic steps over epochs x minibatches, KL controller)
  -> metrics: PPO losses, reward, KL, timings and reward-hacking statistics
     (`jaxstep.evaluation.hacking`) every `ppo.log_every` iterations.

The critic is a separate scalar model initialised from the reward model
(`ppo.critic_init = "reward_model"`) or from the SFT backbone with a fresh head
("policy"). A critic-free estimator (`ppo.advantage` grpo, rloo, dr_grpo, reinforce_pp,
grpo_process; `jaxstep.rl.advantages`) builds, shards, scores with, updates and
checkpoints no critic at all. Orbax checkpoints hold the whole PPO state (policy and
critic params and optimizer states, KL controller, step), the RNG key and the prompt loader's position,
so a restarted run continues exactly. A non-finite loss or gradient skips the update
(params untouched); `ppo.max_consecutive_skips` such iterations in a row stop the run.
At the end: greedy accuracy on `ppo.eval_limit` eval problems, `<workdir>/export` (HF
folder of the final policy), `report.md` (curves as PNG, hacking statistics) and
`summary.json`.
"""
from __future__ import annotations

import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxstep import models
from jaxstep import paths, workdir as workdir_lib
from jaxstep.data import batching, formatting, sources
from jaxstep.data import tokenizer as tokenizer_lib
from jaxstep.data.truncation import report_truncated_prompts
from jaxstep.evaluation.hacking import rollout_stats
from jaxstep.evaluation.policy import greedy_eval
from jaxstep.metrics import MetricWriter, read_metrics
from jaxstep.models import build as model_build
from jaxstep.models import hf_reward
from jaxstep.models.reward_io import load_reward_model
from jaxstep.parallel import distributed, placement
from jaxstep.parallel import mesh as mesh_lib
from jaxstep.parallel import rules as rules_lib
from jaxstep.reports import ppo as report
from jaxstep.rewards.shaping import reward_model_kind
from jaxstep.rl import advantages as advantages_lib
from jaxstep.rl import chunked
from jaxstep.rl import rollout as rollout_lib
from jaxstep.rl import scorer as scorer_lib
from jaxstep.rl import update as update_lib
from jaxstep.rl.kl import KLState
from jaxstep.train import guards, loop
from jaxstep.train.optim import ppo_optimizer

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- config -> settings

def input_paths(config, workdir: str) -> tuple[str, str]:
    """(policy folder, reward-model folder): `ppo.policy` / `ppo.reward_model`, else the
    exports of the sibling stages `<workdir>/../sft` and `<workdir>/../<orm|prm>`."""
    p = config.ppo
    policy = p.policy or workdir_lib.default_input(workdir, "sft")
    reward_model = p.reward_model or workdir_lib.default_input(workdir, reward_model_kind(p.scheme))
    return policy, reward_model


def outcome_model_path(config, workdir: str) -> str:
    """The second reward model (an ORM, PRM + ORM in one reward) when `ppo.outcome_coef` > 0:
    `ppo.outcome_reward_model`, else the export of the sibling stage `<workdir>/../orm`; "" otherwise."""
    p = config.ppo
    if p.outcome_coef <= 0:
        return ""
    return p.outcome_reward_model or workdir_lib.default_input(workdir, "orm")


def reward_model_options(config) -> dict:
    """`load_reward_model`'s options for a Math-Shepherd folder (`ppo.rm_step_tag`, ...)."""
    p = config.ppo
    return dict(step_tag=p.rm_step_tag, good_token=p.rm_good_token, bad_token=p.rm_bad_token)


def ppo_update_config(config) -> update_lib.PPOConfig:
    """`jaxstep.rl.update.PPOConfig` from `config.ppo` (and the sampling temperature)."""
    p = config.ppo
    if p.kl_estimator not in ("k1", "k3"):
        raise ValueError(f"ppo.kl_estimator must be k1 or k3, got {p.kl_estimator!r}")
    k1 = p.kl_estimator == "k1"
    return update_lib.PPOConfig(
        clip_eps=p.clip_eps, value_clip_eps=p.value_clip if p.value_clip > 0 else None,
        gamma=p.gamma, lam=p.lam, epochs=p.epochs, minibatches=p.minibatches,
        ent_coef=p.entropy_coef, kl_in_reward=k1, kl_loss_coef=0.0 if k1 else p.kl_coef,
        kl_target=p.target_kl if (p.adaptive_kl and k1) else None, kl_horizon=float(p.kl_horizon),
        whiten_advantages=p.whiten_advantages, normalize_rewards=p.normalize_rewards,
        temperature=rollout_temperature(config), advantage=p.advantage, group_size=p.samples_per_prompt,
        loss_aggregation=p.loss_aggregation or advantages_lib.ESTIMATORS[p.advantage].loss_aggregation,
        norm_length=config.data.max_response_len, microbatch_size=p.get("microbatch_size", 0))


def rollout_temperature(config) -> float:
    """`ppo.temperature`, else `sampler.temperature`."""
    return config.ppo.temperature or config.sampler.temperature


def sample_settings(config) -> rollout_lib.SampleSettings:
    s, d = config.sampler, config.data
    return rollout_lib.SampleSettings(
        max_prompt_len=d.max_prompt_len, max_new_tokens=d.max_response_len,
        max_steps=config.ppo.max_steps, temperature=rollout_temperature(config), top_k=s.top_k, top_p=s.top_p,
        delimiter=d.step_delimiter, template=formatting.config_template(config),
        decode_block=s.decode_block)


def shaping_settings(config) -> scorer_lib.ShapingSettings:
    p = config.ppo
    return scorer_lib.ShapingSettings(scheme=p.scheme, alpha=p.alpha, eta=p.eta,
                                       success_coef=p.success_coef, orm_coef=p.outcome_coef)


# ----------------------------------------------------------------------------- state I/O

def state_to_tree(state: update_lib.PPOState) -> dict:
    """PPOState -> plain dict (the checkpoint layout; no critic keys without a critic)."""
    tree = {"policy_params": state.policy_params, "policy_opt_state": state.policy_opt_state,
            "critic_params": state.critic_params, "critic_opt_state": state.critic_opt_state,
            "kl_coef": state.kl.coef, "step": state.step}
    return {k: v for k, v in tree.items() if v is not None}


def tree_to_state(tree: dict) -> update_lib.PPOState:
    return update_lib.PPOState(
        policy_params=tree["policy_params"], policy_opt_state=tree["policy_opt_state"],
        critic_params=tree.get("critic_params"), critic_opt_state=tree.get("critic_opt_state"),
        kl=KLState(coef=tree["kl_coef"]), step=tree["step"])


def _copy(tree):
    """New buffers (the update donates the state; the reference must not alias it)."""
    return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)


# ----------------------------------------------------------------------------- pieces

def load_prompts(config) -> list:
    """The PPO prompt mix (`ppo.train_sources`, else `data.train_sources`), train split."""
    p = config.ppo
    spec = p.train_sources or config.data.train_sources
    return sources.load_problems(config, spec, "train", limit=p.num_prompts or None,
                                key=jax.random.fold_in(jax.random.key(config.seed), 211))


# ----------------------------------------------------------------------------- stage

def run(config, workdir: str, *, stop_after: int | None = None) -> dict:
    """Runs (or resumes, or reuses) PPO in `workdir`; returns the summary.

    Args:
      stop_after: stop after this iteration as if preempted (checkpoint saved, no
        summary); the next call resumes. For drills and tests.
    """
    if (done := workdir_lib.reuse_if_done(workdir, "ppo", config)) is not None:
        return done
    loop.quiet_library_logs()
    started = time.time()
    p = config.ppo
    rm_kind = reward_model_kind(p.scheme)
    policy_path, rm_path = input_paths(config, workdir)
    orm_path = outcome_model_path(config, workdir)
    policy_is_hub_name = bool(p.policy) and not paths.is_remote(p.policy) and not os.path.exists(p.policy)
    for what, path, field, stage, ok in (
            ("SFT policy", policy_path, "ppo.policy", "sft", policy_is_hub_name or paths.isdir(policy_path)),
            ("reward model", rm_path, "ppo.reward_model", rm_kind, paths.isdir(rm_path)),
            *([("outcome reward model", orm_path, "ppo.outcome_reward_model", "orm", paths.isdir(orm_path))]
              if orm_path else [])):
        if not ok:
            raise FileNotFoundError(f"ppo: the {what} folder {path} does not exist; set {field} or run "
                                    f"the {stage} stage first (configs/ppo_*.py run the whole chain)")

    # ============================================================ setup: policy, reference, reward model, critic
    tokenizer = tokenizer_lib.resolve_tokenizer(config, policy_path)
    model, sft_params = model_build.build_model(config, tokenizer, policy_path)
    dtype = jnp.dtype(config.model.dtype)
    rm_model, rm_params, rm_tokenizer, kind = load_reward_model(rm_path, dtype=dtype,
                                                                **reward_model_options(config))
    if kind != rm_kind:
        raise ValueError(f"ppo: scheme {p.scheme!r} needs an {rm_kind.upper()}, but {rm_path} holds "
                         f"an {kind.upper()}")
    rm_steps = getattr(rm_model, "step_positions", "delimiter")  # "offsets": DeBERTa RMs re-tokenize
    rm_layout = hf_reward.layout_of(rm_model)  # public HF PRMs: separator / Math-Shepherd step tag
    shared_tokens = (rollout_lib.same_tokenizer(tokenizer, rm_tokenizer) and rm_steps == "delimiter"
                     and rm_layout.name == "plain")
    orm_model = orm_params = orm_tokenizer = None
    if orm_path:  # PRM + ORM in one reward: the ORM's score at the last token, weight ppo.outcome_coef
        orm_model, orm_params, orm_tokenizer, orm_kind = load_reward_model(orm_path, dtype=dtype,
                                                                           **reward_model_options(config))
        if orm_kind != "orm":
            raise ValueError(f"ppo: ppo.outcome_reward_model must be an ORM, but {orm_path} holds a PRM")
    orm_steps = getattr(orm_model, "step_positions", "delimiter")
    orm_shared = orm_path and rollout_lib.same_tokenizer(tokenizer, orm_tokenizer) and orm_steps == "delimiter"
    # Re-tokenized reward-model inputs use the policy's prompt format when the RM's tokenizer can.
    template = formatting.config_template(config)
    rm_template = rollout_lib.reward_model_template(template, rm_tokenizer)
    orm_template = rollout_lib.reward_model_template(template, orm_tokenizer) if orm_path else template
    if not shared_tokens and rm_template != template:
        logger.warning("ppo: the reward model's tokenizer has no chat template; it scores plain prompts")
    mesh = mesh_lib.make_mesh(config.mesh)
    rules = config.mesh.rules
    root = jax.random.key(config.seed)
    k_critic, k_loop = jax.random.fold_in(root, 301), placement.place_on_mesh(jax.random.fold_in(root, 302), mesh)
    needs_critic = advantages_lib.needs_critic(p.advantage)
    critic_model = critic_params = None  # none for a critic-free estimator
    if not needs_critic:
        logger.info("ppo: advantage %s: no critic", p.advantage)
    elif p.critic_init == "reward_model":
        if not shared_tokens or not isinstance(rm_model, models.ScalarModel):
            raise ValueError(f"ppo.critic_init='reward_model' needs the reward model ({rm_path}) to "
                             f"be a jaxstep decoder reward model sharing the policy's tokenizer; use "
                             f"critic_init='policy'")
        # The critic is the reward model's backbone and scalar head (no likelihood feature).
        critic_model = models.ScalarModel(rm_model.config, remat=model.remat, attention=model.attention)  # as the policy
        critic_params = _copy(models.without_likelihood(rm_params))
    else:
        critic_model = models.ScalarModel(model.config, remat=model.remat, attention=model.attention)  # as the policy
        critic_params = models.scalar_params_from_decoder(sft_params, k_critic, model.config)
    if needs_critic and p.critic_zero_head:
        critic_params["score"] = jax.tree.map(jnp.zeros_like, critic_params["score"])
    logger.info("ppo: policy %s (%.2fM params), %s %s, critic from %s, scheme %s", policy_path,
                model_build.count_params(sft_params) / 1e6, kind.upper(), rm_path,
                p.critic_init if needs_critic else "nothing (critic-free)", p.scheme)

    policy_params = placement.shard_params(sft_params, model, mesh, rules)
    ref_params = _copy(policy_params)
    rm_params = placement.shard_params(rm_params, rm_model, mesh, rules)
    if orm_model is not None:
        orm_params = placement.shard_params(orm_params, orm_model, mesh, rules)
    frozen = placement.frozen_dtype(dtype)  # bf16 compute: the frozen models' params in bf16 too
    if frozen != jnp.float32:  # (the trained policy and critic keep f32 master weights)
        ref_params, rm_params, orm_params = placement.cast_params((ref_params, rm_params, orm_params), frozen)
    if needs_critic:
        critic_params = placement.shard_params(critic_params, critic_model, mesh, rules)
    del sft_params

    # The update and the rollout pass.
    P, settings = config.data.max_prompt_len, sample_settings(config)
    cfg = ppo_update_config(config)
    policy_tx = ppo_optimizer(p.learning_rate, p, frozen_iterations=p.critic_warmup_steps)
    critic_tx = ppo_optimizer(p.critic_learning_rate, p) if needs_critic else None
    state = update_lib.init_ppo_state(policy_params, critic_params, policy_tx, critic_tx, p.kl_coef)
    state = distributed.put_global(state, update_lib.ppo_state_shardings(state, mesh))
    update = update_lib.make_ppo_update(
        scorer_lib.make_policy_apply(model, P),
        scorer_lib.make_critic_apply(critic_model) if needs_critic else None,
        policy_tx, critic_tx, cfg, mesh=mesh, logical_rules=rules,
        policy_logprobs=scorer_lib.make_policy_logprobs(model, P, config.model.get("logits_chunk", 0)))
    # The sampler's log-probs (at the sampling temperature) are the rollout policy's, unless
    # top-k/top-p change the distribution or a low-precision decode differs from the forward.
    recompute = p.recompute_logprobs or settings.top_k > 0 or settings.top_p < 1.0 or dtype != jnp.float32
    scorer = scorer_lib.make_scorer(model, critic_model, rm_model, rm_kind, shaping_settings(config),
                                    prompt_len=P, temperature=settings.temperature,
                                    recompute_logprobs=recompute, mesh=mesh, rules=rules,
                                    logits_chunk=config.model.get("logits_chunk", 0), orm_model=orm_model)

    # Prompts, checkpoint, resume.
    prompts = load_prompts(config)
    data_skipped = sources.skipped_count(prompts)  # unusable records the readers skipped
    evals = sources.eval_problems(config, p.eval_limit)
    prompts_truncated = report_truncated_prompts(config, tokenizer, [*prompts, *evals], "ppo")
    batch_size = placement.round_batch(p.rollout_batch, mesh)
    data_ways = mesh_lib.data_parallel_size(mesh)
    if batch_size % p.minibatches or (batch_size // p.minibatches) % data_ways:
        raise ValueError(f"ppo: rollout batch {batch_size} must split into {p.minibatches} "
                         f"minibatches that divide over {data_ways} data-parallel devices")
    k = p.samples_per_prompt
    while len(prompts) < batch_size // k:
        prompts = prompts + prompts
    loader = batching.make_loader(prompts, batch_size // k, seed=config.seed, shard_index=0, shard_count=1)
    guard = guards.NonFiniteGuard(p.max_consecutive_skips)
    ckpt = loop.make_checkpointer(config, workdir)
    restored = ckpt.restore_latest({"ppo": state_to_tree(state), "rng": k_loop})
    if restored is not None:
        _, tree, extra = restored
        state, k_loop = tree_to_state(tree["ppo"]), placement.place_on_mesh(tree["rng"], mesh)
        loader.set_state(extra["data"])
        guard.load_state_dict(extra["guard"])
        logger.info("ppo: resumed from iteration %d", int(state.step))

    # ============================================================ the loop: rollout -> score -> update
    last: dict = {}  # the latest iteration's rollout and scores, for its metrics line

    def iteration(state, step):
        t0 = time.perf_counter()
        k_sample, k_update = jax.random.split(jax.random.fold_in(k_loop, step))
        problems = [q for q in next(loader) for _ in range(k)]  # k responses per prompt, adjacent
        rollout = rollout_lib.sample(model, state.policy_params, tokenizer, problems, k_sample, settings,
                                     mesh=mesh, rules=rules, chunk_size=config.sampler.batch_size)
        t1 = time.perf_counter()
        host_batch = rollout_lib.sequence_batch(rollout)
        if not shared_tokens:
            host_batch.update(rollout_lib.reward_model_batch(
                rollout, rm_tokenizer, P + settings.max_new_tokens, settings.delimiter, template=rm_template,
                step_positions=rm_steps, layout=rm_layout))
        if orm_path and not orm_shared:
            host_batch.update(rollout_lib.reward_model_batch(
                rollout, orm_tokenizer, P + settings.max_new_tokens, settings.delimiter, prefix="orm_",
                template=orm_template, step_positions=orm_steps))
        local = distributed.process_shard(np.arange(batch_size))  # this process's rows
        batch = placement.shard_batch({k: v[local] for k, v in host_batch.items()}, mesh)
        scored = chunked.score_chunked(  # sampler.batch_size rows per scorer call (default: one call)
            scorer, {"policy": state.policy_params, "ref": ref_params, "critic": state.critic_params,
                     "rm": rm_params, "orm": orm_params}, host_batch, batch, mesh, config.sampler.batch_size)
        scored = jax.block_until_ready(scored)
        t2 = time.perf_counter()
        ppo_batch = {k: batch[k] for k in ("input_ids", "attention_mask", "response_mask",
                                           "old_logprobs", "positions")}
        ppo_batch.update({k: scored[k] for k in ("values", "token_rewards", "ref_logprobs") if k in scored})
        if cfg.advantage == "grpo_process":  # step boundaries on the time axis
            ppo_batch.update(step_mask=batch["step_mask"], step_ends=batch["step_ends"] + P)
        if recompute:
            ppo_batch["old_logprobs"] = scored["old_logprobs"]
        with rules_lib.activation_sharding(mesh, rules):
            state, metrics = update(state, ppo_batch, k_update)
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        t3 = time.perf_counter()
        guard.update(step + 1, metrics["skipped_minibatches"], num_updates=cfg.epochs * cfg.minibatches)
        last.update(rollout=rollout, scored=scored, seconds=(t1 - t0, t2 - t1, t3 - t2, t3 - t0))
        return state, metrics

    def log(step, history, seconds):
        metrics = dict(history[-1])  # the iteration's own values (the rollout is not averaged)
        rollout, (rollout_s, score_s, update_s, step_s) = last["rollout"], last["seconds"]
        host_scored = placement.to_host({k: last["scored"][k] for k in ("step_scores", "outcome_scores")})
        metrics.update(rollout_stats(rollout, host_scored, rm_kind, settings.delimiter))
        tokens = float(rollout.lengths.sum() + rollout.prompt_mask.sum())
        metrics.update(rollout_seconds=rollout_s, score_seconds=score_s, update_seconds=update_s,
                       step_seconds=step_s, tokens_per_second=tokens / max(step_s, 1e-9),
                       skipped_steps_total=guard.total_skipped_steps)
        if "orm_scores" in last["scored"]:  # PRM + ORM: the second model's mean score
            metrics["orm_score"] = float(np.mean(placement.to_host(last["scored"]["orm_scores"])))
        return metrics

    writer = MetricWriter(workdir, prefix="ppo")
    data_skipped += sources.skipped_count(evals)
    hooks = loop.Hooks(
        step=iteration, log=log,
        checkpoint=lambda state: ({"ppo": state_to_tree(state), "rng": k_loop},
                                  {"data": loader.get_state(), "guard": guard.state_dict()}),
        evaluate=lambda state: greedy_eval(model, state.policy_params, tokenizer, evals, config, mesh,
                                           detailed=True, desc="ppo eval"),
        postfix=lambda m: {"acc": f"{m['rollout_accuracy']:.2f}", "kl": f"{m.get('kl', 0):.2f}",
                           "score": f"{m['score']:.2f}"})
    state, step, stopped = loop.train(
        "ppo", state, start_step=int(state.step), total_steps=p.steps, hooks=hooks, checkpointer=ckpt,
        writer=writer, log_every=p.log_every, eval_every=p.eval_every if evals else 0,
        stop_after=stop_after, unit="it", desc=f"ppo {p.scheme}")
    if stopped:
        return loop.stopped_summary(step)
    train_seconds = time.time() - started

    # ============================================================ finish: eval, export, report, summary
    final_eval = greedy_eval(model, state.policy_params, tokenizer, evals, config, mesh,
                             detailed=True, desc="ppo eval")
    if final_eval:
        writer.write(step, final_eval)
    writer.close()
    export_path = workdir_lib.export(workdir, model, state.policy_params, tokenizer) if p.export else ""
    rows = read_metrics(os.path.join(workdir, "metrics.jsonl")) if placement.is_main_process() else []
    summary = {
        "stage": "ppo", "scheme": p.scheme, "advantage": p.advantage, "steps": step, "export": export_path,
        "policy": policy_path, "reward_model": rm_path, "outcome_reward_model": orm_path,
        "critic_init": p.critic_init,
        "kl_coef_final": float(state.kl.coef), "skipped_steps": guard.total_skipped_steps,
        "data_skipped": data_skipped, "prompts_truncated": prompts_truncated,
        "first": report.window_means(rows, report.SUMMARY_KEYS, first=True),
        "last": report.window_means(rows, report.SUMMARY_KEYS, first=False),
        **final_eval, "train_seconds": train_seconds, "seconds": time.time() - started,
    }
    if placement.is_main_process():
        report.write_report(workdir, summary, rows)
    logger.info("ppo: done in %.0f s: eval accuracy %s, last %s", summary["seconds"],
                final_eval.get("eval_accuracy"), summary["last"])
    return workdir_lib.write_summary(workdir, summary)
