"""Stage `ppo`: PPO of the SFT policy on ORM/PRM rewards.

    python -m jaxstep.main --config=configs/ppo_prm_max.py --config.stage=ppo \\
        --config.ppo.policy=runs/x/sft/export --config.ppo.reward_model=runs/x/prm/export \\
        --workdir=runs/x/ppo

(`configs/ppo_*.py` run the whole chain, `jaxstep.train.pipeline`, which calls this
stage in `<workdir>/ppo` with the SFT and PRM it trained next to it.)

One iteration:
  prompts (a weighted mix of sources, `ppo.train_sources`, read by a resumable loader)
  -> rollout with the KV-cache sampler (the current policy)
  -> response text, final-answer grading, step boundaries in the generated tokens
  -> one jitted pass (`jaxstep.train.rollout.make_scorer`): reference logprobs (frozen
     SFT params), critic values, reward-model scores, shaped token rewards
     (`ppo.scheme`, alpha, eta, success reward)
  -> the jitted, sharded PPO update (`jaxstep.rl.update`: KL to the reference, GAE,
     policy + critic steps over epochs x minibatches, KL controller)
  -> metrics: PPO losses, reward, KL, timings and reward-hacking statistics
     (`jaxstep.train.hacking`) every `ppo.log_every` iterations.

The critic is a separate scalar model initialised from the reward model
(`ppo.critic_init = "reward_model"`) or from the SFT backbone with a fresh head
("policy"). Orbax checkpoints hold the whole PPO state (policy and critic params and
optimizer states, KL controller, step), the RNG key and the prompt loader's position,
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
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxstep import checkpoint as checkpoint_lib
from jaxstep import models
from jaxstep.data import batching
from jaxstep.metrics import MetricWriter, read_metrics
from jaxstep.parallel import distributed
from jaxstep.parallel import rules as rules_lib
from jaxstep.rl import update as update_lib
from jaxstep.rl.kl import KLState
from jaxstep.train import common, guards, hacking
from jaxstep.train import rollout as rollout_lib

logger = logging.getLogger(__name__)

PRM_SCHEMES = ("prm_avg", "prm_prod", "prm_min", "prm_max", "prm_dense", "clip", "delta", "clip_delta")
SCHEMES = ("orm",) + PRM_SCHEMES
CRITIC_INITS = ("reward_model", "policy")
# Metrics averaged over the first / last iterations for the summary and the report.
SUMMARY_KEYS = ("score", "reward", "kl", "kl_coef", "rollout_accuracy", "rm_score", "num_steps",
                "response_length", "repeated_step_fraction", "empty_step_fraction",
                "finished_fraction", "entropy", "value_loss", "clip_fraction")
CURVES = (("reward", "score", "kl", "rollout_accuracy"),
          ("rm_score", "num_steps", "response_length", "repeated_step_fraction"))


def reward_model_kind(scheme: str) -> str:
    """The reward model a scheme needs: "orm" for `orm`, else "prm"."""
    if scheme not in SCHEMES:
        raise ValueError(f"ppo.scheme must be one of {SCHEMES}, got {scheme!r}")
    return "orm" if scheme == "orm" else "prm"


def input_paths(config, workdir: str) -> tuple[str, str]:
    """(policy folder, reward-model folder): `ppo.policy` / `ppo.reward_model`, else the
    exports of the sibling stages `<workdir>/../sft` and `<workdir>/../<orm|prm>`."""
    p = config.ppo
    policy = p.policy or common.default_input(workdir, "sft")
    reward_model = p.reward_model or common.default_input(workdir, reward_model_kind(p.scheme))
    return policy, reward_model


def learning_rate_schedule(learning_rate: float, p, *, frozen_iterations: int = 0) -> optax.Schedule:
    """Per optimizer update: 0 for `frozen_iterations` PPO iterations, then a linear warmup
    over `ppo.warmup_steps` iterations to `learning_rate`, then constant. (An iteration
    is `ppo.epochs * ppo.minibatches` updates.)"""
    per_iteration = p.epochs * p.minibatches
    frozen, warmup = frozen_iterations * per_iteration, p.warmup_steps * per_iteration

    def schedule(count):
        ramp = jnp.minimum(1.0, (count - frozen + 1) / warmup) if warmup > 0 else 1.0
        return jnp.where(count < frozen, 0.0, learning_rate * ramp)
    return schedule


def make_optimizer(learning_rate: float, p, *, frozen_iterations: int = 0) -> optax.GradientTransformation:
    """Adam (b1, b2 of `ppo`) on `learning_rate_schedule`, after global-norm clipping."""
    parts = [optax.clip_by_global_norm(p.grad_clip)] if p.grad_clip > 0 else []
    parts.append(optax.adam(learning_rate_schedule(learning_rate, p, frozen_iterations=frozen_iterations),
                            b1=p.b1, b2=p.b2))
    return optax.chain(*parts)


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
        temperature=rollout_temperature(config))


def rollout_temperature(config) -> float:
    """`ppo.temperature`, else `sampler.temperature`."""
    return config.ppo.temperature or config.sampler.temperature


def sample_settings(config) -> rollout_lib.SampleSettings:
    s, d = config.sampler, config.data
    return rollout_lib.SampleSettings(
        max_prompt_len=d.max_prompt_len, max_new_tokens=d.max_response_len,
        max_steps=config.ppo.max_steps, temperature=rollout_temperature(config), top_k=s.top_k, top_p=s.top_p,
        delimiter=d.step_delimiter)


def shaping_settings(config) -> rollout_lib.ShapingSettings:
    p = config.ppo
    return rollout_lib.ShapingSettings(scheme=p.scheme, alpha=p.alpha, eta=p.eta,
                                       success_coef=p.success_coef)


# ----------------------------------------------------------------------------- state I/O

def state_to_tree(state: update_lib.PPOState) -> dict:
    """PPOState -> plain dict (the checkpoint layout)."""
    return {"policy_params": state.policy_params, "policy_opt_state": state.policy_opt_state,
            "critic_params": state.critic_params, "critic_opt_state": state.critic_opt_state,
            "kl_coef": state.kl.coef, "step": state.step}


def tree_to_state(tree: dict) -> update_lib.PPOState:
    return update_lib.PPOState(
        policy_params=tree["policy_params"], policy_opt_state=tree["policy_opt_state"],
        critic_params=tree["critic_params"], critic_opt_state=tree["critic_opt_state"],
        kl=KLState(coef=tree["kl_coef"]), step=tree["step"])


def _copy(tree):
    """New buffers (the update donates the state; the reference must not alias it)."""
    return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)


# ----------------------------------------------------------------------------- pieces

def load_prompts(config) -> list:
    """The PPO prompt mix (`ppo.train_sources`, else `data.train_sources`), train split."""
    p = config.ppo
    sources = p.train_sources or config.data.train_sources
    return common.load_problems(config, sources, "train", limit=p.num_prompts or None,
                                key=jax.random.fold_in(jax.random.key(config.seed), 211))


def eval_problems(config) -> list:
    if config.ppo.eval_limit <= 0:
        return []
    source = common.parse_sources(config.data.eval_sources)[0][0]
    return common.load_source_problems(config, source, "test", config.ppo.eval_limit)


def evaluate_policy(model, params, tokenizer, problems, config, mesh) -> dict[str, float]:
    """Greedy accuracy (and hacking statistics) of the policy on `problems`."""
    if not problems:
        return {}
    results = common.decode_problems(
        model, params, tokenizer, problems, max_prompt_len=config.data.max_prompt_len,
        max_new_tokens=config.data.max_response_len, batch_size=config.sampler.batch_size,
        mesh=mesh, rules=config.mesh.rules, greedy=True, progress=False, desc="ppo eval")
    stats = hacking.hacking_stats([r.text for r in results], correct=[r.correct for r in results],
                                  num_tokens=[r.num_tokens for r in results],
                                  finished=[r.finished for r in results],
                                  has_answer=[r.answer is not None for r in results],
                                  delimiter=config.data.step_delimiter)
    out = {"eval_accuracy": stats.pop("accuracy"), "eval_problems": len(results)}
    out.update({f"eval_{k}": v for k, v in stats.items()})
    return out


def rollout_stats(rollout: rollout_lib.Rollout, scored: dict, rm_kind: str, delimiter: str) -> dict:
    """Reward-hacking statistics of one rollout batch (host)."""
    kw = {}
    if rm_kind == "prm":
        kw.update(step_scores=np.asarray(scored["step_scores"]), step_mask=rollout.step_mask)
    else:
        kw.update(outcome_scores=np.asarray(scored["outcome_scores"]))
    stats = hacking.hacking_stats(rollout.texts, correct=rollout.correct, num_tokens=rollout.lengths,
                                  finished=rollout.finished, has_answer=rollout.has_answer,
                                  delimiter=delimiter, **kw)
    stats["rollout_accuracy"] = stats.pop("accuracy")
    stats["truncated_steps_fraction"] = float(np.mean(rollout.num_steps > rollout.step_mask.shape[1]))
    return stats


# ----------------------------------------------------------------------------- stage

def run(config, workdir: str, *, stop_after: int | None = None) -> dict:
    """Runs (or resumes, or reuses) PPO in `workdir`; returns the summary.

    Args:
      stop_after: stop after this iteration as if preempted (checkpoint saved, no
        summary); the next call resumes. For drills and tests.
    """
    if common.is_done(workdir):
        logger.info("ppo: %s is done; reusing it.", workdir)
        return common.read_summary(workdir)
    common.quiet_library_logs()
    from jaxstep.train import reward_models  # noqa: PLC0415 - heavy module

    started = time.time()
    p = config.ppo
    rm_kind = reward_model_kind(p.scheme)
    if p.critic_init not in CRITIC_INITS:
        raise ValueError(f"ppo.critic_init must be one of {CRITIC_INITS}, got {p.critic_init!r}")
    policy_path, rm_path = input_paths(config, workdir)
    policy_is_hub_name = bool(p.policy) and not os.path.exists(p.policy)
    for what, path, field, stage, ok in (
            ("SFT policy", policy_path, "ppo.policy", "sft", policy_is_hub_name or os.path.isdir(policy_path)),
            ("reward model", rm_path, "ppo.reward_model", rm_kind, os.path.isdir(rm_path))):
        if not ok:
            raise FileNotFoundError(f"ppo: the {what} folder {path} does not exist; set {field} or run "
                                    f"the {stage} stage first (configs/ppo_*.py run the whole chain)")

    # Models: policy (and frozen reference), reward model, critic.
    tokenizer = common.get_tokenizer(config, policy_path)
    model, sft_params = common.build_model(config, tokenizer, policy_path)
    dtype = jnp.dtype(config.model.dtype)
    rm_model, rm_params, rm_tokenizer, kind = reward_models.load_reward_model(rm_path, dtype=dtype)
    if kind != rm_kind:
        raise ValueError(f"ppo: scheme {p.scheme!r} needs an {rm_kind.upper()}, but {rm_path} holds "
                         f"an {kind.upper()}")
    shared_tokens = rollout_lib.same_tokenizer(tokenizer, rm_tokenizer)
    mesh = common.make_mesh(config)
    rules = config.mesh.rules
    root = jax.random.key(config.seed)
    k_critic, k_loop = jax.random.fold_in(root, 301), common.place_on_mesh(jax.random.fold_in(root, 302), mesh)
    if p.critic_init == "reward_model":
        if not shared_tokens:
            raise ValueError(f"ppo.critic_init='reward_model' needs the reward model ({rm_path}) to "
                             f"share the policy's tokenizer; use critic_init='policy'")
        # The critic is the reward model's backbone and scalar head (no likelihood feature).
        critic_model = models.ScalarModel(rm_model.config)
        critic_params = _copy(models.without_likelihood(rm_params))
    else:
        critic_model = models.ScalarModel(model.config)
        critic_params = models.scalar_params_from_decoder(sft_params, k_critic, model.config)
    if p.critic_zero_head:
        critic_params["score"] = jax.tree.map(jnp.zeros_like, critic_params["score"])
    logger.info("ppo: policy %s (%.2fM params), %s %s, critic from %s, scheme %s", policy_path,
                common.count_params(sft_params) / 1e6, kind.upper(), rm_path, p.critic_init, p.scheme)

    policy_params = common.shard_params(sft_params, model, mesh, rules)
    ref_params = _copy(policy_params)
    rm_params = common.shard_params(rm_params, rm_model, mesh, rules)
    critic_params = common.shard_params(critic_params, critic_model, mesh, rules)
    del sft_params

    # The update and the rollout pass.
    P, settings = config.data.max_prompt_len, sample_settings(config)
    cfg = ppo_update_config(config)
    policy_tx = make_optimizer(p.learning_rate, p, frozen_iterations=p.critic_warmup_steps)
    critic_tx = make_optimizer(p.critic_learning_rate, p)
    state = update_lib.init_ppo_state(policy_params, critic_params, policy_tx, critic_tx, p.kl_coef)
    state = distributed.put_global(state, update_lib.ppo_state_shardings(state, mesh))
    update = update_lib.make_ppo_update(
        rollout_lib.make_policy_apply(model, P), rollout_lib.make_critic_apply(critic_model),
        policy_tx, critic_tx, cfg, mesh=mesh, logical_rules=rules,
        policy_logprobs=rollout_lib.make_policy_logprobs(model, P))
    # The sampler's log-probs (at the sampling temperature) are the rollout policy's, unless
    # top-k/top-p change the distribution or a low-precision decode differs from the forward.
    recompute = p.recompute_logprobs or settings.top_k > 0 or settings.top_p < 1.0 or dtype != jnp.float32
    scorer = rollout_lib.make_scorer(model, critic_model, rm_model, rm_kind, shaping_settings(config),
                                     prompt_len=P, temperature=settings.temperature,
                                     recompute_logprobs=recompute, mesh=mesh, rules=rules)

    # Prompts, checkpoint, resume.
    prompts = load_prompts(config)
    batch_size = common.round_batch(p.rollout_batch, mesh)
    if batch_size % p.minibatches or (batch_size // p.minibatches) % _data_ways(mesh):
        raise ValueError(f"ppo: rollout batch {batch_size} must split into {p.minibatches} "
                         f"minibatches that divide over {_data_ways(mesh)} data-parallel devices")
    k = p.samples_per_prompt
    if k < 1 or batch_size % k:
        raise ValueError(f"ppo.samples_per_prompt={k} must be >= 1 and divide the rollout batch {batch_size}")
    while len(prompts) < batch_size // k:
        prompts = prompts + prompts
    loader = batching.make_loader(prompts, batch_size // k, seed=config.seed, shard_index=0, shard_count=1)
    guard = guards.NonFiniteGuard(p.max_consecutive_skips)
    ckpt = checkpoint_lib.Checkpointer(
        os.path.join(workdir, common.CHECKPOINT_DIR), max_to_keep=config.checkpoint.keep,
        save_interval_steps=config.checkpoint.every_steps)
    restored = ckpt.restore_latest({"ppo": state_to_tree(state), "rng": k_loop})
    if restored is not None:
        _, tree, extra = restored
        state, k_loop = tree_to_state(tree["ppo"]), common.place_on_mesh(tree["rng"], mesh)
        loader.set_state(extra["data"])
        guard.load_state_dict(extra["guard"])
        logger.info("ppo: resumed from iteration %d", int(state.step))
    step = int(state.step)

    def save(force=False):
        ckpt.save(step, {"ppo": state_to_tree(state), "rng": k_loop},
                  extra={"data": loader.get_state(), "guard": guard.state_dict()}, force=force)

    writer = MetricWriter(workdir, prefix="ppo")
    evals = eval_problems(config)
    bar = tqdm(total=p.steps, initial=step, desc=f"ppo {p.scheme}", unit="it", dynamic_ncols=True,
               disable=not common.is_main_process())
    stopped = False
    while step < p.steps:
        t0 = time.perf_counter()
        k_sample, k_update = jax.random.split(jax.random.fold_in(k_loop, step))
        problems = [q for q in next(loader) for _ in range(k)]  # k responses per prompt, adjacent
        rollout = rollout_lib.sample(model, state.policy_params, tokenizer, problems, k_sample, settings,
                                     mesh=mesh, rules=rules)
        t1 = time.perf_counter()
        host_batch = rollout_lib.sequence_batch(rollout)
        if not shared_tokens:
            host_batch.update(rollout_lib.reward_model_batch(
                rollout, rm_tokenizer, P + settings.max_new_tokens, settings.delimiter))
        local = distributed.process_shard(np.arange(batch_size))  # this process's rows
        batch = common.shard_batch({k: v[local] for k, v in host_batch.items()}, mesh)
        scored = scorer({"policy": state.policy_params, "ref": ref_params,
                         "critic": state.critic_params, "rm": rm_params}, batch)
        scored = jax.block_until_ready(scored)
        t2 = time.perf_counter()
        ppo_batch = {k: batch[k] for k in ("input_ids", "attention_mask", "response_mask",
                                           "old_logprobs", "positions")}
        ppo_batch.update({k: scored[k] for k in ("values", "token_rewards", "ref_logprobs")})
        if recompute:
            ppo_batch["old_logprobs"] = scored["old_logprobs"]
        with rules_lib.activation_sharding(mesh, rules):
            state, metrics = update(state, ppo_batch, k_update)
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        t3 = time.perf_counter()
        step += 1
        guard.update(step, metrics["skipped_minibatches"], num_updates=cfg.epochs * cfg.minibatches)
        if step % p.log_every == 0 or step == p.steps:
            host_scored = common.to_host({k: scored[k] for k in ("step_scores", "outcome_scores")})
            metrics.update(rollout_stats(rollout, host_scored, rm_kind, settings.delimiter))
            tokens = float(rollout.lengths.sum() + rollout.prompt_mask.sum())
            metrics.update(rollout_seconds=t1 - t0, score_seconds=t2 - t1, update_seconds=t3 - t2,
                           step_seconds=t3 - t0, tokens_per_second=tokens / max(t3 - t0, 1e-9),
                           skipped_steps_total=guard.total_skipped_steps)
            writer.write(step, metrics)
            bar.set_postfix({"acc": f"{metrics['rollout_accuracy']:.2f}", "kl": f"{metrics.get('kl', 0):.2f}",
                             "score": f"{metrics['score']:.2f}"}, refresh=False)
        if evals and p.eval_every and step % p.eval_every == 0 and step < p.steps:
            writer.write(step, evaluate_policy(model, state.policy_params, tokenizer, evals, config, mesh))
        save()
        bar.update(1)
        if ckpt.should_stop(step) or (stop_after is not None and step >= stop_after):
            save(force=True)
            stopped = step < p.steps
            break
    bar.close()
    if step >= p.steps:
        save(force=True)
    ckpt.close()
    if stopped:
        writer.close()
        logger.info("ppo: stopped at iteration %d; run again to resume.", step)
        return {"stopped_at": step, "done": False}
    train_seconds = time.time() - started

    final_eval = evaluate_policy(model, state.policy_params, tokenizer, evals, config, mesh)
    if final_eval:
        writer.write(step, final_eval)
    writer.close()
    export_path = common.export(workdir, model, state.policy_params, tokenizer) if p.export else ""
    rows = read_metrics(os.path.join(workdir, "metrics.jsonl")) if common.is_main_process() else []
    summary = {
        "stage": "ppo", "scheme": p.scheme, "steps": step, "export": export_path,
        "policy": policy_path, "reward_model": rm_path, "critic_init": p.critic_init,
        "kl_coef_final": float(state.kl.coef), "skipped_steps": guard.total_skipped_steps,
        "first": window_means(rows, SUMMARY_KEYS, first=True),
        "last": window_means(rows, SUMMARY_KEYS, first=False),
        **final_eval, "train_seconds": train_seconds, "seconds": time.time() - started,
    }
    if common.is_main_process():
        write_report(workdir, summary, rows)
    logger.info("ppo: done in %.0f s: eval accuracy %s, last %s", summary["seconds"],
                final_eval.get("eval_accuracy"), summary["last"])
    return common.write_summary(workdir, summary)


def _data_ways(mesh) -> int:
    from jaxstep.parallel import mesh as mesh_lib  # noqa: PLC0415
    return mesh_lib.data_parallel_size(mesh)


# ----------------------------------------------------------------------------- report

def training_rows(rows) -> list[dict]:
    """The per-iteration lines of a PPO metrics.jsonl (not the eval lines), one per step:
    a run resumed from an older checkpoint logs some steps again; the last line wins."""
    by_step = {r["step"]: r for r in rows if "score" in r}
    return [by_step[s] for s in sorted(by_step)]


def window_means(rows, keys, *, first: bool, fraction: float = 0.1) -> dict[str, float]:
    """Mean of each metric over the first (or last) `fraction` of the logged iterations
    (at least one)."""
    rows = training_rows(rows)
    if not rows:
        return {}
    n = max(1, int(round(len(rows) * fraction)))
    window = rows[:n] if first else rows[-n:]
    out = {}
    for key in keys:
        values = [r[key] for r in window if isinstance(r.get(key), (int, float))]
        if values:
            out[key] = float(np.mean(values))
    return out


def hacking_table(columns: dict[str, dict[str, float]]) -> str:
    """Markdown table: one row per hacking statistic, one column per run/window."""
    from jaxstep.train import report  # noqa: PLC0415
    keys = ["rollout_accuracy", "rm_score", "num_steps", "response_length", "repeated_step_fraction",
            "empty_step_fraction", "finished_fraction", "kl"]
    names = dict(hacking.STAT_NAMES, rollout_accuracy="accuracy of these responses", kl="KL to the SFT policy")
    # Eval columns (hacking.hacking_stats of greedy responses) call their accuracy "accuracy".
    columns = {name: dict(c, rollout_accuracy=c.get("rollout_accuracy", c.get("accuracy")))
               for name, c in columns.items()}
    rows = []
    for key in keys:
        if any(c.get(key) is not None for c in columns.values()):
            rows.append([names.get(key, key)] + [_fmt(c.get(key)) for c in columns.values()])
    return report.markdown_table(["statistic", *columns], rows)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"


def write_report(workdir: str, summary: dict, rows: list) -> str:
    """`<workdir>/report.md`: curves (PNG) and hacking statistics, first vs last iterations."""
    from jaxstep.train import report  # noqa: PLC0415
    path = os.path.join(workdir, "report.md")
    sections = [f"# PPO, scheme {summary['scheme']}",
                f"{summary['steps']} iterations; policy `{summary['policy']}`, reward model "
                f"`{summary['reward_model']}`; final KL coefficient {summary['kl_coef_final']:.4f}; "
                f"{summary['skipped_steps']} skipped iterations; {summary['train_seconds']:.0f} s."]
    if "eval_accuracy" in summary:
        sections.append(f"Greedy accuracy on {summary['eval_problems']} eval problems: "
                        f"{report.format_accuracy(summary['eval_accuracy'])}.")
    sections.append("## Reward-hacking statistics (rollouts)\n\n" + hacking_table(
        {"first 10% of iterations": summary["first"], "last 10%": summary["last"]}))
    train_rows = training_rows(rows)
    for i, keys in enumerate(CURVES):
        png = report.plot_metric_curves({summary["scheme"]: train_rows}, list(keys),
                                        os.path.join(workdir, f"curves_{i}.png"))
        if png:
            sections.append(report.image_link(png, workdir, alt=", ".join(keys)))
    return report.write_markdown(path, *sections)
