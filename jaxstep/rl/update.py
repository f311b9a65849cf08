"""One jitted, mesh-sharded PPO update for a policy and a separate critic.

`update(state, batch, key) -> (state, metrics)` runs, as one XLA program:

  token rewards (- kl_coef * k1 KL to the reference) -> GAE (reverse scan)
  -> advantage whitening -> epochs x minibatches (nested lax.scan, shuffled by key),
  each a policy step (clipped surrogate [- entropy bonus] [+ k3 KL loss]) and a critic
  step (clipped value loss) -> adaptive KL coefficient update.

A minibatch step whose losses or gradients are not all finite changes nothing (params
and optimizer states are kept bit for bit) and counts in `metrics["skipped"]`.

Critic-free estimators (`PPOConfig.advantage` other than "gae", see
`jaxstep.rl.advantages`): the same token rewards (KL folded in with `kl_in_reward`, or
the k3 loss term with `kl_loss_coef`) -> `advantages.token_advantages` (final: never
whitened) -> epochs x minibatches of policy steps only. The state holds no critic
(`critic_params` and `critic_opt_state` are None), the batch needs no `values`, and
there is no value loss; `grpo_process` also needs the rollout's step boundaries.

Batch: a dict of `[batch, time]` arrays aligned with `input_ids` (prompt + response;
index t refers to token t; see `jaxstep.rl.logprobs` for how to compute the aligned
logprobs and values of a rollout):

  input_ids       int32   prompt (left-padded) + response (right-padded)
  attention_mask  int32   1 on real tokens
  response_mask   float32 / bool  1 on generated response tokens (trained on)
  old_logprobs    float32 log pi_old(token t), from the rollout policy
  values          float32 V_old(state before token t), from the rollout critic
  token_rewards   float32 shaped rewards (`jaxstep.rewards.shaping.shape_rewards`), without KL
  ref_logprobs    float32 (optional) log pi_ref(token t); needed for the KL terms
                  (without it no KL is added: pass token_rewards that already hold it)
  positions       int32   (optional) position ids; default `default_positions(mask)`
  step_mask       bool    `[batch, steps]` (advantage "grpo_process" only) valid steps
  step_ends       int32   `[batch, steps]` (advantage "grpo_process" only) each step's
                  last token, on the time axis of input_ids

Metrics (float32 scalars): rollout-level `score` (mean summed token_rewards), `reward`
(after normalisation and KL), `kl` (mean per-sequence summed k1 KL; with ref_logprobs),
`kl_coef` (used for this batch), `advantage_mean`, `return_mean`, `value_mean` (before
whitening), `response_length`; averaged over the minibatch steps: `loss`,
`policy_loss`, `clip_frac`, `approx_kl`, `entropy` (compute_entropy), `kl_loss` (k3),
`value_loss`, `value_clip_frac`, `policy_grad_norm`, `critic_grad_norm`; and `skipped`
(1 if any minibatch step was skipped) and `skipped_minibatches` (their count).
Without a critic `return_mean`, `value_mean`, `value_loss`, `value_clip_frac` and
`critic_grad_norm` are absent.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxstep.parallel.rules import activation_sharding
from jaxstep.rl import accumulate
from jaxstep.rl import advantages as advantages_lib
from jaxstep.rl import losses
# The update's first stage (re-exported: `jaxstep.rl.update.compute_advantages`).
from jaxstep.rl.batch_advantages import (compute_advantages, critic_free_advantages,  # noqa: F401
                                         shaped_token_rewards)
from jaxstep.rl.kl import KLState, init_kl_state, update_kl_state
from jaxstep.rl.logprobs import default_positions, shift_values, token_logprobs

REQUIRED_KEYS = ("input_ids", "attention_mask", "response_mask", "old_logprobs", "values",
                 "token_rewards")


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """Hyper-parameters of the update (static under jit).

    clip_eps: policy ratio clip epsilon.
    value_clip_eps: value clip around the rollout values (None: unclipped loss).
    gamma, lam: GAE discount and lambda.
    epochs: passes over the rollout batch.
    minibatches: minibatches per epoch (must divide the batch size).
    ent_coef: weight of the entropy bonus (0: off).
    kl_in_reward: add `-kl_coef * (old_logp - ref_logp)` to the token rewards (needs ref_logprobs).
    kl_loss_coef: weight of the k3 KL-to-reference loss term (0: off; needs ref_logprobs).
    kl_target: adaptive KL controller target (summed KL per sequence); None: fixed coefficient.
    kl_horizon: adaptive KL controller horizon (in samples).
    whiten_advantages: normalise advantages over the batch's valid tokens.
    normalize_rewards: divide token rewards by the std over the batch of the per-sequence
      reward sums (scale only, the sign is kept; skipped when the std is ~0), before
      the KL penalty.
    temperature: sampling temperature of the rollouts (logits are divided by it).
    compute_entropy: compute the policy entropy (a metric; required when ent_coef > 0).
    advantage: the advantage estimator, a key of `jaxstep.rl.advantages.ESTIMATORS`;
      "gae" uses the critic, every other one is critic-free (no critic in the state).
    group_size: responses per prompt, adjacent rows (grpo, rloo, dr_grpo, grpo_process).
    loss_aggregation: how the per-token policy loss becomes a scalar, a
      `jaxstep.rl.losses.LOSS_AGGREGATIONS` name.
    norm_length: L of "seq_mean_token_sum_norm" (the generation budget); None: time.
    microbatch_size: > 0 accumulates each minibatch's policy and critic gradients over
      microbatches of this many rows (`jaxstep.rl.accumulate`: the minibatch gradient,
      one optimizer step); 0 (or >= the minibatch) runs the minibatch at once.
    """
    clip_eps: float = 0.2
    value_clip_eps: float | None = 0.2
    gamma: float = 1.0
    lam: float = 0.95
    epochs: int = 1
    minibatches: int = 1
    ent_coef: float = 0.0
    kl_in_reward: bool = True
    kl_loss_coef: float = 0.0
    kl_target: float | None = None
    kl_horizon: float = 10000.0
    whiten_advantages: bool = True
    normalize_rewards: bool = False
    temperature: float = 1.0
    compute_entropy: bool = True
    advantage: str = "gae"
    group_size: int = 1
    loss_aggregation: str = "token_mean"
    norm_length: int | None = None
    microbatch_size: int = 0

    @property
    def needs_critic(self) -> bool:
        return advantages_lib.needs_critic(self.advantage)


@flax.struct.dataclass
class PPOState:
    """Everything the update changes; a pytree of arrays (checkpointable as is).
    `critic_params` and `critic_opt_state` are None for a critic-free estimator."""
    policy_params: Any
    policy_opt_state: Any
    critic_params: Any
    critic_opt_state: Any
    kl: KLState
    step: jnp.ndarray  # int32 [], number of updates done


def init_ppo_state(policy_params, critic_params, policy_tx: optax.GradientTransformation,
                   critic_tx: optax.GradientTransformation | None, kl_coef: float) -> PPOState:
    """A fresh state that owns its buffers (`critic_params` None: no critic, for the
    critic-free estimators; `critic_tx` is then unused).

    The params are copied (keeping their shardings): the update donates the state, so
    arrays shared with the caller (a reference policy built from the same SFT params, or
    a critic made by `scalar_params_from_decoder`, which shares the decoder's arrays)
    would otherwise be deleted or donated twice. Optimizer states are built by jitted
    inits, so they follow the params' sharding.
    """
    policy_params = _copy_tree(policy_params)
    critic_opt_state = None
    if critic_params is not None:
        critic_params = _copy_tree(critic_params)
        critic_opt_state = jax.jit(critic_tx.init)(critic_params)
    return PPOState(policy_params=policy_params,
                    policy_opt_state=jax.jit(policy_tx.init)(policy_params),
                    critic_params=critic_params, critic_opt_state=critic_opt_state,
                    kl=init_kl_state(kl_coef), step=jnp.zeros((), jnp.int32))


@jax.jit
def _copy_tree(tree):
    return jax.tree_util.tree_map(jnp.copy, tree)


def ppo_state_shardings(state: PPOState, mesh: jax.sharding.Mesh) -> PPOState:
    """The shardings of a state's leaves on `mesh`: NamedShardings on `mesh` are kept,
    anything else (single-device scalars such as optimizer counts) becomes replicated.
    `jax.device_put(state, ppo_state_shardings(state, mesh))` places a state for the update."""
    replicated = NamedSharding(mesh, P())

    def one(x):
        sharding = getattr(x, "sharding", None)
        if isinstance(sharding, NamedSharding) and sharding.mesh == mesh:
            return sharding
        return replicated
    return jax.tree_util.tree_map(one, state)


def _all_finite(tree) -> jnp.ndarray:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]
    return jnp.stack(leaves).all() if leaves else jnp.array(True)


def _select(ok, new, old):
    return jax.tree_util.tree_map(lambda n, o: jnp.where(ok, n, o), new, old)


def make_ppo_update(policy_apply: Callable, critic_apply: Callable | None,
                    policy_tx: optax.GradientTransformation,
                    critic_tx: optax.GradientTransformation | None,
                    cfg: PPOConfig = PPOConfig(), *, mesh: jax.sharding.Mesh | None = None,
                    state_shardings=None, batch_axes: tuple[str, ...] = ("data", "fsdp"),
                    logical_rules=None, donate: bool = True,
                    policy_logprobs: Callable | None = None) -> Callable:
    """Builds the jitted `update(state, batch, key) -> (state, metrics)`.

    Args:
      policy_apply: `(params, input_ids, attention_mask, positions) -> logits [batch, time, vocab]`.
      critic_apply: `(params, input_ids, attention_mask, positions) -> values [batch, time]`
        (the value after reading position t; aligned internally with `shift_values`);
        None (and critic_tx None) with a critic-free `cfg.advantage`.
      policy_tx, critic_tx: optax optimizers (put gradient clipping in them).
      cfg: `PPOConfig`.
      mesh: a device mesh with Auto axis types, or None for plain jit.
      state_shardings: a `PPOState` of shardings; None derives them from the state
        passed in with `ppo_state_shardings` (params keep their NamedShardings, other
        leaves are replicated).
      batch_axes: mesh axes the batch dimension is split over (those absent from the
        mesh are ignored). The batch and each minibatch must divide evenly over them.
      logical_rules: logical-axis rules (`config.mesh.rules`) under which the models'
        activation constraints are traced (`jaxstep.parallel.rules.activation_sharding`);
        None uses the default rules. Only used with a mesh.
      donate: donate the input state's buffers.
      policy_logprobs: optional `(params, input_ids, attention_mask, positions, *,
        temperature, with_entropy) -> logprobs [batch, time]` (or `(logprobs, entropy)`
        with `with_entropy`), aligned as `token_logprobs`; replaces `policy_apply` +
        `token_logprobs` (e.g. to run the LM head on the response positions only, without
        a `[batch, time, vocab]` logits array).

    Returns:
      `update(state: PPOState, batch: dict, key) -> (PPOState, metrics: dict of float32 [])`.
    """
    if cfg.ent_coef > 0 and not cfg.compute_entropy:
        raise ValueError("PPOConfig: ent_coef > 0 needs compute_entropy=True.")

    batch_spec = None
    if mesh is not None:
        axes = tuple(a for a in batch_axes if a in mesh.axis_names)
        batch_spec = P(axes if axes else None)

    def constrain(tree, leading=()):
        """Shards the batch dimension (after `leading` unsharded dims) over the batch axes."""
        if mesh is None:
            return tree
        spec = P(*([None] * len(leading)), *batch_spec)
        return jax.tree_util.tree_map(
            lambda x: jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec)), tree)

    def policy_objective(params, mb):
        mask = mb["response_mask"]
        if policy_logprobs is not None:
            out = policy_logprobs(params, mb["input_ids"], mb["attention_mask"], mb["positions"],
                                  temperature=cfg.temperature, with_entropy=cfg.compute_entropy)
            logp, entropy = out if cfg.compute_entropy else (out, None)
        elif cfg.compute_entropy:
            logits = policy_apply(params, mb["input_ids"], mb["attention_mask"], mb["positions"])
            logp, entropy = token_logprobs(logits, mb["input_ids"], temperature=cfg.temperature,
                                           with_entropy=True)
        else:
            logits = policy_apply(params, mb["input_ids"], mb["attention_mask"], mb["positions"])
            logp = token_logprobs(logits, mb["input_ids"], temperature=cfg.temperature)
        pg_loss, metrics = losses.policy_loss(logp, mb["old_logprobs"], mb["advantages"], mask,
                                              clip_eps=cfg.clip_eps, aggregation=cfg.loss_aggregation,
                                              norm_length=cfg.norm_length)
        loss = pg_loss
        metrics = dict(metrics, policy_loss=pg_loss)
        if cfg.compute_entropy:
            ent = losses.entropy_bonus(entropy, mask)
            metrics["entropy"] = ent
            if cfg.ent_coef > 0:
                loss = loss - cfg.ent_coef * ent
        if cfg.kl_loss_coef > 0:
            kl3 = losses.kl_loss(logp, mb["ref_logprobs"], mask)
            metrics["kl_loss"] = kl3
            loss = loss + cfg.kl_loss_coef * kl3
        return loss, metrics

    def critic_objective(params, mb):
        out = critic_apply(params, mb["input_ids"], mb["attention_mask"], mb["positions"])
        values = shift_values(out)
        loss, metrics = losses.value_loss(values, mb["values"], mb["returns"], mb["response_mask"],
                                          clip_eps=cfg.value_clip_eps)
        return loss, dict(metrics, value_loss=loss)

    def accumulates(mb) -> bool:
        return 0 < cfg.microbatch_size < mb["response_mask"].shape[0]

    def policy_grads(pp, mb):
        """`((loss, metrics), grads)` of the minibatch (accumulated over microbatches)."""
        if not accumulates(mb):
            return jax.value_and_grad(policy_objective, has_aux=True)(pp, mb)
        weighted = functools.partial(accumulate.policy_weighted_loss, aggregation=cfg.loss_aggregation,
                                     ent_coef=cfg.ent_coef, kl_loss_coef=cfg.kl_loss_coef)
        return accumulate.value_and_grad(
            policy_objective, weighted, pp, mb, cfg.microbatch_size,
            metric_kinds=accumulate.policy_metric_kinds(cfg.loss_aggregation),
            constrain=lambda t: constrain(t, leading=(0,)))

    def critic_grads(cp, mb):
        if not accumulates(mb):
            return jax.value_and_grad(critic_objective, has_aux=True)(cp, mb)
        return accumulate.value_and_grad(
            critic_objective, lambda m, w: w["token"] * m["value_loss"], cp, mb, cfg.microbatch_size,
            constrain=lambda t: constrain(t, leading=(0,)))

    def minibatch_step(carry, mb):
        pp, popt, cp, copt = carry
        mb = constrain(mb)
        (p_loss, p_metrics), p_grads = policy_grads(pp, mb)
        (v_loss, v_metrics), v_grads = critic_grads(cp, mb)
        ok = (jnp.isfinite(p_loss) & jnp.isfinite(v_loss) & _all_finite(p_grads)
              & _all_finite(v_grads))
        p_updates, new_popt = policy_tx.update(p_grads, popt, pp)
        v_updates, new_copt = critic_tx.update(v_grads, copt, cp)
        new = (optax.apply_updates(pp, p_updates), new_popt, optax.apply_updates(cp, v_updates),
               new_copt)
        carry = _select(ok, new, carry)
        metrics = dict(p_metrics, **v_metrics, loss=p_loss, policy_grad_norm=optax.global_norm(p_grads),
                       critic_grad_norm=optax.global_norm(v_grads),
                       skipped=1.0 - ok.astype(jnp.float32))
        return carry, metrics

    def policy_step(carry, mb):
        """`minibatch_step` without a critic: carry (policy params, optimizer state)."""
        pp, popt = carry
        mb = constrain(mb)
        (p_loss, p_metrics), p_grads = policy_grads(pp, mb)
        ok = jnp.isfinite(p_loss) & _all_finite(p_grads)
        p_updates, new_popt = policy_tx.update(p_grads, popt, pp)
        carry = _select(ok, (optax.apply_updates(pp, p_updates), new_popt), carry)
        metrics = dict(p_metrics, loss=p_loss, policy_grad_norm=optax.global_norm(p_grads),
                       skipped=1.0 - ok.astype(jnp.float32))
        return carry, metrics

    critic = cfg.needs_critic
    required = REQUIRED_KEYS if critic else tuple(k for k in REQUIRED_KEYS if k != "values")
    if cfg.advantage == "grpo_process":
        required = required + ("step_mask", "step_ends")

    def update(state: PPOState, batch: dict, key: jax.Array):
        missing = [k for k in required if k not in batch]
        if missing:
            raise KeyError(f"ppo update: batch lacks {missing}; it has {sorted(batch)}.")
        if cfg.kl_loss_coef > 0 and "ref_logprobs" not in batch:
            raise KeyError("ppo update: kl_loss_coef > 0 needs batch['ref_logprobs'].")
        batch = constrain(dict(batch))
        mask = batch["response_mask"].astype(jnp.float32)
        batch_size = mask.shape[0]
        if batch_size % cfg.minibatches:
            raise ValueError(f"ppo update: batch size {batch_size} is not divisible by "
                             f"minibatches={cfg.minibatches}.")
        positions = batch.get("positions")
        if positions is None:
            positions = default_positions(batch["attention_mask"])

        if critic:
            advantages, returns, seq_kl, metrics = compute_advantages(batch, state.kl.coef, cfg)
        else:
            advantages, seq_kl, metrics = critic_free_advantages(batch, state.kl.coef, cfg)
        has_ref = "ref_logprobs" in batch

        data = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
                "positions": positions, "response_mask": mask,
                "old_logprobs": batch["old_logprobs"].astype(jnp.float32), "advantages": advantages}
        if critic:
            data.update(values=batch["values"].astype(jnp.float32), returns=returns)
        if cfg.kl_loss_coef > 0:
            data["ref_logprobs"] = batch["ref_logprobs"].astype(jnp.float32)
        mb_size = batch_size // cfg.minibatches

        def epoch(carry, epoch_key):
            if cfg.minibatches > 1:
                perm = jax.random.permutation(epoch_key, batch_size)
                shuffled = jax.tree_util.tree_map(lambda x: x[perm], data)
            else:
                shuffled = data
            stacked = jax.tree_util.tree_map(
                lambda x: x.reshape(cfg.minibatches, mb_size, *x.shape[1:]), shuffled)
            return jax.lax.scan(minibatch_step if critic else policy_step, carry,
                                constrain(stacked, leading=(0,)))

        carry = (state.policy_params, state.policy_opt_state)
        if critic:
            carry = carry + (state.critic_params, state.critic_opt_state)
        carry, mb_metrics = jax.lax.scan(epoch, carry, jax.random.split(key, cfg.epochs))
        skipped_count = mb_metrics["skipped"].sum()
        mb_metrics = jax.tree_util.tree_map(jnp.mean, mb_metrics)
        metrics.update(mb_metrics, skipped=(skipped_count > 0).astype(jnp.float32),
                       skipped_minibatches=skipped_count)

        kl_state = state.kl
        if has_ref:
            kl_state = update_kl_state(kl_state, seq_kl.mean(), batch_size, target=cfg.kl_target,
                                       horizon=cfg.kl_horizon)
        critic_params, critic_opt_state = carry[2:] if critic else (None, None)
        new_state = PPOState(policy_params=carry[0], policy_opt_state=carry[1],
                             critic_params=critic_params, critic_opt_state=critic_opt_state,
                             kl=kl_state, step=state.step + 1)
        metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
        return new_state, metrics

    donate_argnums = (0,) if donate else ()
    if mesh is None:
        return jax.jit(update, donate_argnums=donate_argnums)

    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, batch_spec)
    compiled = {}

    def sharded_update(state, batch, key):
        shardings = state_shardings
        if shardings is None:
            shardings = ppo_state_shardings(state, mesh)
        leaves, treedef = jax.tree_util.tree_flatten(shardings)
        cache_key = (treedef, tuple(leaves))
        fn = compiled.get(cache_key)
        if fn is None:
            fn = jax.jit(update, in_shardings=(shardings, batch_sharding, replicated),
                         out_shardings=(shardings, replicated), donate_argnums=donate_argnums)
            compiled[cache_key] = fn
        # Placing first keeps the traced input types identical from call to call (a
        # single-device scalar and its replicated copy trace differently: a recompile).
        state = jax.device_put(state, shardings)
        batch = jax.device_put(dict(batch), batch_sharding)
        with activation_sharding(mesh, logical_rules):
            return fn(state, batch, jax.device_put(key, replicated))

    sharded_update.update = update  # the unjitted function (ahead-of-time compilation, stage plan)
    sharded_update.batch_sharding = batch_sharding
    return sharded_update
