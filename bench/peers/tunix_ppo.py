"""Seconds per whole PPO step of Tunix (google-tunix 0.1.7), on the shape of bench/ppo_step.py.

Runs inside the peer's own virtualenv (bench/peer.py makes it; Tunix pins a transformers
that conflicts with ours), so it imports nothing from jaxstep. bench/ppo_step.py
--peer tunix starts it and reads the JSON it writes to --json-out.

What is built, with Tunix's own API (`tunix.rl.rl_cluster.RLCluster` +
`tunix.rl.ppo.ppo_learner.PpoLearner`, the vanilla rollout engine, one device):
  actor      `tunix.models.qwen2.model.Qwen2` of the bench's shape (tied embeddings unless
             --untied), float32, random weights initialised as ours (N(0, 0.02) matrices,
             norms 1, biases 0)
  reference  a copy of the actor (frozen)
  critic     `tunix.rl.utils.create_critic_model` of an untied Qwen2 of the same shape:
             the LM head replaced by a Linear(hidden, 1), as Tunix's PPO tests do
  reward     a second model of the critic's shape, its scores rounded to integers (see
             below); Tunix scores the last completion token, like our PRM-Max at the
             last step end
  optimisers Adam 1e-5 for actor and critic; 1 epoch (`num_iterations`), 1 minibatch
             (`mini_batch_size` = batch); KL coefficient (`beta`) 0.1, clip 0.2
Integer rewards: Tunix 0.1.7's PpoLearner builds its token rewards with
`jnp.zeros_like(completion_ids)` (int32) and adds the scores into it, so a float score
is truncated to an int. The reward model here therefore returns `round(score)`: the
learner is fed integer-valued rewards and computes what it would with them; the
forward pass (the cost being timed) is the same as a plain reward model's.
Fixed length: the prompts are token ids (a tokenizer that reads space-separated ids);
its EOS id is the vocabulary size, a token the model can never sample, so every row
generates exactly --new tokens (checked and reported), as ours does with no EOS. (Tunix
masks a sampled id 0, the pad id, as padding: about one token in 32000, no effect on time.)
Sampling is plain (temperature 1, top_p 1, no top-k), which Tunix runs as one
`jax.random.categorical` per step without sorting. The KV cache holds prompt + new.

Timing: `--steps` + 1 global steps through `PpoLearner.train`; the first (compiles) is
left out. A step is one call of the learner's `_run_global_step` (data, rollout,
scoring, update), closed by blocking on the actor's and critic's parameters. Phases:
  rollout  `RLCluster.generate` (prefill + decode loop, host tokens and text)
  scoring  the rest of `_generate_and_compute_advantage`: reference and old-policy
           log-probs (Tunix recomputes the old log-probs with a forward pass), critic
           values, reward-model scores, KL penalty, GAE, Tunix's metric logging
  update   `update_actor` + `update_critic` (Tunix's trainers, one Adam step each)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--prompt", type=int, required=True)
    parser.add_argument("--new", type=int, required=True)
    parser.add_argument("--vocab", type=int, required=True)
    parser.add_argument("--hidden", type=int, required=True)
    parser.add_argument("--layers", type=int, required=True)
    parser.add_argument("--heads", type=int, required=True)
    parser.add_argument("--kv-heads", type=int, required=True)
    parser.add_argument("--intermediate", type=int, required=True)
    parser.add_argument("--untied", action="store_true")
    parser.add_argument("--steps", type=int, required=True, help="timed steps after one warm-up step")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--minibatches", type=int, default=1)
    parser.add_argument("--samples-per-prompt", type=int, default=1)
    parser.add_argument("--kl-coef", type=float, default=0.1)
    parser.add_argument("--json-out", required=True, help="where the result JSON is written")
    args = parser.parse_args(argv)
    if args.minibatches != 1 or args.samples_per_prompt != 1:
        # Tunix's learner rolls out once per minibatch (not once per batch) and PPO
        # takes one sample per prompt: other settings would not be the same step.
        parser.error("only --minibatches 1 and --samples-per-prompt 1 are comparable with ours")
    return args


def prompts(batch: int, prompt_len: int, vocab: int):
    """The prompts of bench/ppo_step.py (same generator, same seed), as id strings: [batch]."""
    import numpy as np
    rng = np.random.default_rng(0)
    lengths = rng.integers(prompt_len - 16, prompt_len + 1, batch)
    mask = np.arange(prompt_len)[None] >= prompt_len - lengths[:, None]
    ids = np.where(mask, rng.integers(1, vocab, (batch, prompt_len)), 0)
    return np.array([" ".join(str(int(t)) for t in row[m]) for row, m in zip(ids, mask)])


class IdTokenizer:
    """Text is space-separated token ids. No BOS; pad 0; EOS = vocab (never sampled)."""

    def __init__(self, vocab: int):
        self.vocab = vocab

    def encode(self, text, **kwargs):
        return [int(t) for t in str(text).split()]

    def decode(self, ids, **kwargs):
        return " ".join(str(int(t)) for t in ids)

    def bos_id(self):
        return None

    def eos_id(self):
        return self.vocab

    def pad_id(self):
        return 0


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from importlib import metadata

    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx
    from tunix.models.qwen2 import model as qwen2
    from tunix.rl import rl_cluster as rl_cluster_lib
    from tunix.rl import utils as rl_utils
    from tunix.rl.ppo import ppo_learner
    from tunix.rl.rollout import base_rollout

    class IntegerScore(nnx.Module):
        """A scalar model whose per-token scores are rounded: [B, T, 1] integer-valued floats."""

        def __init__(self, model):
            self.model = model

        def __call__(self, *a, **kw):
            out = self.model(*a, **kw)
            return jnp.round(out[0] if isinstance(out, tuple) else out)

    B, P, R, V = args.batch, args.prompt, args.new, args.vocab

    def config(tied: bool):
        return qwen2.ModelConfig(
            num_layers=args.layers, vocab_size=V, embed_dim=args.hidden, hidden_dim=args.intermediate,
            num_heads=args.heads, head_dim=args.hidden // args.heads, num_kv_heads=args.kv_heads,
            rope_theta=1_000_000, norm_eps=1e-6, use_tied_embedding=tied,
            dtype=jnp.float32, param_dtype=jnp.float32)

    def qwen2_model(tied: bool, seed: int):
        """Qwen2 with our bench's init: matrices N(0, 0.02), norms 1, biases 0. (Tunix's own
        init draws the embedding from N(0, 1): logits of std ~16, a one-hot softmax whose
        log-prob gradients underflow, so its update would not move the policy.)"""
        graph, params, rest = nnx.split(qwen2.Qwen2(config(tied), rngs=nnx.Rngs(seed)), nnx.Param, ...)
        leaves, tree = jax.tree.flatten(params)
        keys = jax.random.split(jax.random.key(seed), len(leaves))
        leaves = [0.02 * jax.random.normal(k, x.shape, x.dtype) if x.ndim >= 2 else x
                  for k, x in zip(keys, leaves)]
        return nnx.merge(graph, jax.tree.unflatten(tree, leaves), rest)

    actor = qwen2_model(not args.untied, 0)
    graph, state = nnx.split(actor)
    reference = nnx.merge(graph, jax.tree.map(jnp.copy, state))
    critic = rl_utils.create_critic_model(qwen2_model(False, 1), seed=1)
    reward = IntegerScore(rl_utils.create_critic_model(qwen2_model(False, 2), seed=2))
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(actor, nnx.Param)))

    # Auto axes: Tunix's models index their embedding without an out_sharding, which
    # explicit-sharding meshes reject.
    mesh = jax.make_mesh((1, 1), ("fsdp", "tp"), devices=jax.devices()[:1],
                         axis_types=(jax.sharding.AxisType.Auto,) * 2)
    roles = rl_cluster_lib.Role
    rollout_config = base_rollout.RolloutConfig(
        max_tokens_to_generate=R, max_prompt_length=P, kv_cache_size=P + R,
        temperature=1.0, top_p=1.0, top_k=None)
    steps = args.steps + 1
    cluster = rl_cluster_lib.RLCluster(
        actor=actor, critic=critic, reference=reference, reward=reward, tokenizer=IdTokenizer(V),
        cluster_config=rl_cluster_lib.ClusterConfig(
            role_to_mesh={r: mesh for r in (roles.ACTOR, roles.CRITIC, roles.REFERENCE, roles.ROLLOUT,
                                              roles.REWARD)},
            rollout_engine="vanilla", offload_to_cpu=False,
            training_config=rl_cluster_lib.RLTrainingConfig(
                actor_optimizer=optax.adam(1e-5), critic_optimizer=optax.adam(1e-5),
                eval_every_n_steps=10 ** 9, max_steps=steps, mini_batch_size=B // args.minibatches,
                pbar_description=None),
            rollout_config=rollout_config))
    learner = ppo_learner.PpoLearner(
        rl_cluster=cluster, ppo_config=ppo_learner.PpoConfig(
            num_iterations=args.epochs, beta=args.kl_coef, epsilon=0.2))

    # Phase timers: wrap the learner's and the cluster's own methods (instance attributes
    # shadow the class's), blocking on each phase's outputs so async dispatch can't hide work.
    marks = {"rollout": [], "scoring": [], "update": [], "step": []}
    new_tokens = []
    current = {}

    def timed_generate(fn):
        def wrapper(*a, **kw):
            start = time.perf_counter()
            out = fn(*a, **kw)
            current["rollout"] = time.perf_counter() - start
            new_tokens.append(int(sum(len(t) for t in out.tokens)))
            return out
        return wrapper

    def timed_advantage(fn):
        def wrapper(*a, **kw):
            start = time.perf_counter()
            out = jax.block_until_ready(fn(*a, **kw))
            current["scoring"] = time.perf_counter() - start - current.get("rollout", 0.0)
            return out
        return wrapper

    def timed_update(fn, last: bool):
        def wrapper(*a, **kw):
            start = time.perf_counter()
            out = fn(*a, **kw)
            if last:
                jax.block_until_ready((nnx.state(cluster.actor_trainer.model),
                                       nnx.state(cluster.critic_trainer.model)))
            current["update"] = current.get("update", 0.0) + time.perf_counter() - start
            return out
        return wrapper

    def timed_step(fn):
        def wrapper(*a, **kw):
            current.clear()
            start = time.perf_counter()
            out = fn(*a, **kw)
            jax.block_until_ready((nnx.state(cluster.actor_trainer.model),
                                   nnx.state(cluster.critic_trainer.model)))
            current["step"] = time.perf_counter() - start
            for name, times in marks.items():
                times.append(current.get(name, float("nan")))
            i = len(marks["step"]) - 1
            print(f"tunix step {i}{' (warm-up, compiles)' if i == 0 else ''}: {current['step']:.2f} s "
                  f"(rollout {current.get('rollout', 0):.2f}, scoring {current.get('scoring', 0):.2f}, "
                  f"update {current.get('update', 0):.2f})", file=sys.stderr, flush=True)
            return out
        return wrapper

    cluster.generate = timed_generate(cluster.generate)
    learner._generate_and_compute_advantage = timed_advantage(learner._generate_and_compute_advantage)
    cluster.update_actor = timed_update(cluster.update_actor, last=False)
    cluster.update_critic = timed_update(cluster.update_critic, last=True)
    learner._run_global_step = timed_step(learner._run_global_step)

    batch = prompts(B, P, V)
    train_ds = [{"prompts": batch} for _ in range(steps)]
    before = jax.tree.map(jnp.copy, nnx.state(cluster.actor_trainer.model, nnx.Param))
    start = time.perf_counter()
    learner.train(train_ds)
    total = time.perf_counter() - start
    after = nnx.state(cluster.actor_trainer.model, nnx.Param)
    # The steps must have trained: Adam moves every parameter tensor on its first step
    # (unless its gradient underflows, see qwen2_model).
    changed = bool(all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.any(a != b)), before, after))))

    timed = {k: v[1:] for k, v in marks.items()}
    if len(timed["step"]) != args.steps:
        raise RuntimeError(f"expected {steps} Tunix steps, ran {len(marks['step'])}")
    result = {
        "peer": "tunix",
        "version": metadata.version("google-tunix"),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "devices": [str(d) for d in jax.devices()],
        "params": int(n_params),
        "shape": {k: getattr(args, k) for k in ("batch", "prompt", "new", "vocab", "hidden", "layers", "heads",
                                                "kv_heads", "intermediate", "untied", "epochs", "minibatches",
                                                "samples_per_prompt", "steps")},
        "warmup_s": marks["step"][0],
        "steps_s": timed["step"],
        "phases_s": {k: timed[k] for k in ("rollout", "scoring", "update")},
        "median_s": {k: statistics.median(v) for k, v in timed.items()},
        "new_tokens_per_step": new_tokens,
        "actor_params_changed": changed,
        "total_s": total,
        "notes": [("rewards: reward-model scores rounded to integers (Tunix 0.1.7 truncates float "
                   "rewards to int32)"),
                  ("phases timed around RLCluster.generate, PpoLearner._generate_and_compute_advantage "
                   "and update_actor/update_critic"),
                  "scoring includes Tunix's extra old-policy log-prob forward and its metric logging"],
    }
    with open(args.json_out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"tunix: median {result['median_s']['step']:.2f} s/step over {args.steps} steps", file=sys.stderr)


if __name__ == "__main__":
    main()
