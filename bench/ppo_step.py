"""Seconds per whole PPO step on a fixed shape, split into rollout, scoring/forwards and update.

    python bench/ppo_step.py              # the issue's setting (one CPU device, float32)
    python bench/ppo_step.py --quick      # a smaller smoke run
    python bench/ppo_step.py --advantage=grpo_process   # critic-free: no critic forward/step
    python bench/ppo_step.py --peer tunix  # then Tunix 0.1.7's PPO step on the same shape

Shape: the random Qwen2 of bench/sampler.py (hidden 256, 4 layers, 4 heads,
2 KV heads, intermediate 688, vocab 32000; tied embeddings, about 11M parameters) as the
policy, the frozen reference and the critic (plus a reward model of the critic's shape);
batch 32, prompts of 48-64 tokens left-padded to 64, 128 new tokens (no EOS: every row
generates all 128), Adam, one epoch, one minibatch, one device.

One step is what `jaxstep.stages.ppo` does per iteration, with the same functions:
  rollout  `jaxstep.models.sampler.generate` (KV cache, plain sampling) -> host arrays
  scoring  `jaxstep.rl.scorer.make_scorer`: reference logprobs, critic values, PRM
           scores at 8 step ends per response, PRM-Max shaping + success reward
  update   `jaxstep.rl.update.make_ppo_update`: KL penalty, GAE, whitening, a policy
           and a critic Adam step (LM head on the response-predicting positions only)
Text decoding and grading are left out (random weights produce no text worth grading).

`--advantage` other than gae (`jaxstep.rl.advantages`): no critic is built, scored
with or updated (group size `--group`, adjacent rows); the update's compiled memory
(XLA's memory analysis) and the state's bytes are printed for comparing with gae.

Printed: the median seconds per step and per phase over `--steps` steps after one
warm-up (compile) step, tokens/s, and the update's model FLOP utilisation: analytic
matmul FLOPs of the update (policy and critic, forward + backward = 3x forward; the
attention scores counted over the full key length as computed) divided by its time,
against the best f32 matmul rate measured in the same run. XLA's own count of the
compiled update's FLOPs is printed beside it.

Our side runs as `python -m jaxstep.main` runs a stage: the script re-executes itself
once with glibc's huge-page malloc tunable (`jaxstep.host_memory`;
`JAXSTEP_MALLOC_HUGEPAGES=0` to leave it out); the peer runs in the environment as it
was before, as it runs by default.

`--peer tunix` then runs Tunix's PPO learner (bench/peers/tunix_ppo.py, in its own
virtualenv made once under `--peer-cache`, see bench/peer.py; or `--peer-python`) on
random Qwen2 weights of the same shape for the same number of steps, timed the same
way (warm-up excluded, medians), and prints both sides, the phases and
`ratio vs Tunix: N.NNx` (our steps per second over theirs). GAE only (Tunix's PPO has a
critic); one sample per prompt, one epoch, one minibatch on both sides.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench/peer.py, also when imported
import peer as peer_lib  # noqa: E402
from jaxstep import host_memory, models  # noqa: E402
from jaxstep.rl import rollout as rollout_lib  # noqa: E402
from jaxstep.rl import scorer as scorer_lib  # noqa: E402
from jaxstep.rl import update as update_lib  # noqa: E402
from jaxstep.rl.advantages import ESTIMATORS  # noqa: E402


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """Best f32 GFLOP/s of an n x n x n matmul (XLA:CPU, all cores)."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    jax.block_until_ready(f(a, b))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(f(a, b))
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def forward_flops(cfg, tokens: int, time_len: int, lm_positions: int) -> float:
    """Matmul FLOPs of one forward over `tokens` tokens of sequences of `time_len`, the LM
    head applied at `lm_positions` positions (0 for a scalar model)."""
    d, h, k, hd, f = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_size, cfg.intermediate_size
    per_layer = d * h * hd + 2 * d * k * hd + h * hd * d + 3 * d * f  # q, k, v, o, gate/up/down
    attention = 2 * h * hd * time_len  # scores and weighted sum, per query token, full key length
    layers = cfg.num_layers * 2 * (per_layer + attention) * tokens
    return layers + 2 * d * cfg.vocab_size * lm_positions


HEADS, KV_HEADS = 4, 2  # the bench's Qwen2 (bench/sampler.py's)


def parse_args(argv=None) -> argparse.Namespace:
    """The bench's flags (`--quick` applied); `--peer` only with the gae estimator."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=688)
    parser.add_argument("--untied", action="store_true", help="untied LM head (19M params)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps after the warm-up step")
    parser.add_argument("--quick", action="store_true", help="batch 8, 32 new tokens, 2 steps")
    parser.add_argument("--advantage", default="gae", choices=tuple(ESTIMATORS),
                        help="advantage estimator (all but gae are critic-free)")
    parser.add_argument("--group", type=int, default=4, help="responses per prompt (group estimators)")
    parser.add_argument("--peer", choices=tuple(peer_lib.PEERS), help="also time this library's PPO step")
    parser.add_argument("--peer-python", help="an interpreter that imports the peer (skips making its venv)")
    parser.add_argument("--peer-cache", help="folder for the peer's venv (default $JAXSTEP_PEER_CACHE "
                        "or ~/.cache/jaxstep/peers)")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.new, args.steps = 8, 32, 2
    if args.peer and args.advantage != "gae":
        parser.error(f"--peer {args.peer} runs PPO with a critic and GAE: use --advantage gae")
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    return args


def peer_shape(args) -> dict:
    """The shape a peer script gets (its flags): the bench's model, batch, lengths and steps;
    one sample per prompt, one epoch, one minibatch (as `main` runs ours)."""
    return {"batch": args.batch, "prompt": args.prompt, "new": args.new, "vocab": args.vocab,
            "hidden": args.hidden, "layers": args.layers, "heads": HEADS, "kv_heads": KV_HEADS,
            "intermediate": args.intermediate, "untied": args.untied, "steps": args.steps, "epochs": 1,
            "minibatches": 1, "samples_per_prompt": 1}


def main(argv=None):
    args = parse_args(argv)
    peer, peer_python = peer_lib.PEERS.get(args.peer), None
    if peer:  # before our run: a venv that cannot be made should not cost our minutes first
        try:
            peer_python = peer_lib.ensure_python(peer, args.peer_cache, args.peer_python)
        except peer_lib.PeerError as e:
            sys.exit(f"--peer {args.peer}: {e}")
    B, P, R = args.batch, args.prompt, args.new
    T = P + R
    cfg = models.tiny(vocab_size=args.vocab, model_type="qwen2", hidden_size=args.hidden,
                      num_layers=args.layers, num_heads=HEADS, num_kv_heads=KV_HEADS,
                      intermediate_size=args.intermediate, max_position_embeddings=1024,
                      tie_word_embeddings=not args.untied, bos_token_id=None, eos_token_id=None,
                      pad_token_id=0)
    policy = models.Decoder(cfg)
    needs_critic = ESTIMATORS[args.advantage].needs_critic
    critic = models.ScalarModel(cfg) if needs_critic else None
    params = models.init_params(policy, jax.random.key(0))
    ref_params = jax.tree.map(jnp.copy, params)
    critic_params = models.scalar_params_from_decoder(params, jax.random.key(1), cfg) if needs_critic else None
    rm_params = models.scalar_params_from_decoder(params, jax.random.key(2), cfg, std=1.0)
    n_params = sum(x.size for x in jax.tree.leaves(params))
    print(f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r} (jaxstep.host_memory)")
    print(f"devices: {jax.devices()}  cpus: {os.cpu_count()}")
    print(f"Qwen2 hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}, "
          f"{'untied' if args.untied else 'tied'} ({n_params / 1e6:.1f}M params); batch {B}, prompt {P}, "
          f"{R} new tokens; float32; Adam, 1 epoch, 1 minibatch; advantage {args.advantage}"
          + ("" if needs_critic else f" (no critic, groups of {args.group})"))
    peak = matmul_peak()
    print(f"matmul peak (f32 2048^3, best of 5): {peak:.0f} GFLOP/s; load average {os.getloadavg()[0]:.1f}")

    rng = np.random.default_rng(0)
    lengths = rng.integers(P - 16, P + 1, B)
    prompt_mask = np.arange(P)[None] >= P - lengths[:, None]
    prompt_ids = np.where(prompt_mask, rng.integers(1, args.vocab, (B, P)), 0).astype(np.int32)
    S = 8
    step_ends = np.tile((np.arange(S) + 1) * (R // S) - 1, (B, 1)).astype(np.int32)

    tx = optax.adam(1e-5)
    cfg_ppo = update_lib.PPOConfig(epochs=1, minibatches=1, advantage=args.advantage, group_size=args.group,
                                   loss_aggregation=ESTIMATORS[args.advantage].loss_aggregation, norm_length=R)
    update = update_lib.make_ppo_update(scorer_lib.make_policy_apply(policy, P),
                                        scorer_lib.make_critic_apply(critic) if needs_critic else None, tx,
                                        tx if needs_critic else None, cfg_ppo,
                                        policy_logprobs=scorer_lib.make_policy_logprobs(policy, P))
    scorer = scorer_lib.make_scorer(policy, critic, models.ScalarModel(cfg), "prm",
                                     scorer_lib.ShapingSettings(scheme="prm_max"), prompt_len=P)
    state = update_lib.init_ppo_state(params, critic_params, tx, tx, kl_coef=0.1)

    times = {"rollout": [], "scoring": [], "update": [], "step": []}
    update_flops_xla = None
    for step in range(args.steps + 1):
        t0 = time.perf_counter()
        out = models.generate(policy, state.policy_params, prompt_ids, prompt_mask.astype(np.int32),
                              jax.random.key(100 + step), max_new_tokens=R, eos_id=None, pad_id=0)
        tokens, logprobs, gen_lengths = jax.device_get((out.tokens, out.logprobs, out.lengths))
        t1 = time.perf_counter()
        rollout = rollout_lib.Rollout(
            problems=[None] * B, prompt_ids=prompt_ids, prompt_mask=prompt_mask, tokens=tokens,
            logprobs=logprobs, lengths=gen_lengths, texts=[""] * B, correct=rng.random(B) < 0.5,
            has_answer=np.ones(B, bool), finished=np.zeros(B, bool), step_ends=step_ends,
            step_mask=np.ones((B, S), bool), num_steps=np.full(B, S))
        batch = rollout_lib.sequence_batch(rollout)
        scored = jax.block_until_ready(scorer(
            {"policy": state.policy_params, "ref": ref_params, "critic": state.critic_params,
             "rm": rm_params}, batch))
        t2 = time.perf_counter()
        ppo_batch = {k: batch[k] for k in ("input_ids", "attention_mask", "response_mask", "old_logprobs",
                                           "positions")}
        ppo_batch.update({k: scored[k] for k in ("values", "token_rewards", "ref_logprobs") if k in scored})
        if args.advantage == "grpo_process":
            ppo_batch.update(step_mask=batch["step_mask"], step_ends=batch["step_ends"] + P)
        if update_flops_xla is None:
            compiled = update.lower(state, ppo_batch, jax.random.key(step)).compile()
            cost = compiled.cost_analysis()
            cost = cost[0] if isinstance(cost, (list, tuple)) else cost
            update_flops_xla = float(cost.get("flops", float("nan"))) if cost else float("nan")
            memory = compiled.memory_analysis()
            state_mb = sum(x.nbytes for x in jax.tree.leaves(state)) / 2 ** 20
            if memory is not None:
                print(f"update memory (XLA): arguments {memory.argument_size_in_bytes / 2 ** 20:.1f} MiB, "
                      f"outputs {memory.output_size_in_bytes / 2 ** 20:.1f} MiB, temporaries "
                      f"{memory.temp_size_in_bytes / 2 ** 20:.1f} MiB; PPO state {state_mb:.1f} MiB")
        t2 = time.perf_counter()
        state, metrics = update(state, ppo_batch, jax.random.key(step))
        metrics = jax.device_get(metrics)
        t3 = time.perf_counter()
        if step == 0:
            print(f"warm-up step (compiles): {t3 - t0:.1f} s")
            continue
        for name, value in (("rollout", t1 - t0), ("scoring", t2 - t1), ("update", t3 - t2), ("step", t3 - t0)):
            times[name].append(value)
        print(f"step {step}: {t3 - t0:.2f} s (rollout {t1 - t0:.2f}, scoring {t2 - t1:.2f}, "
              f"update {t3 - t2:.2f}); kl {float(metrics['kl']):.3f}", flush=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    tokens_step = B * T
    scalar_models = 2 if needs_critic else 1  # the critic (if any) and the reward model
    update_flops = 3 * (forward_flops(cfg, B * T, T, B * R) + (scalar_models - 1) * forward_flops(cfg, B * T, T, 0))
    scoring_flops = scalar_models * forward_flops(cfg, B * T, T, 0) + forward_flops(cfg, B * T, T, B * R)
    rollout_flops = forward_flops(cfg, B * P, P, B) + sum(forward_flops(cfg, B, P + t, B) for t in range(R))
    print(f"\nmedian of {args.steps} steps: {med['step']:.2f} s/step = rollout {med['rollout']:.2f} + "
          f"scoring/forwards {med['scoring']:.2f} + update {med['update']:.2f}")
    print(f"tokens/s: {B * R / med['step']:.0f} generated, {tokens_step / med['step']:.0f} "
          f"prompt+response through the whole step")
    for name, flops in (("rollout", rollout_flops), ("scoring", scoring_flops), ("update", update_flops)):
        print(f"{name:8s} {flops / 1e9:7.1f} GFLOP  {flops / med[name] / 1e9:6.0f} GFLOP/s  "
              f"{100 * flops / med[name] / 1e9 / peak:5.1f}% of peak")
    total = rollout_flops + scoring_flops + update_flops
    print(f"update MFU: {100 * update_flops / med['update'] / 1e9 / peak:.1f}% "
          f"(XLA counts {update_flops_xla / 1e9:.1f} GFLOP for the compiled update); "
          f"FLOP limit of a step at the measured peak: {total / 1e9 / peak:.2f} s")
    if peer:
        run_peer(peer, peer_python, args, med, peak)


PEAK_DRIFT = 1.25  # matmul peaks before ours / after theirs further apart than this: the machine changed


def run_peer(peer, python, args, ours: dict, peak_before: float):
    """Runs the peer on our shape after our side is done (not beside it) and prints both; then
    re-measures the matmul peak and warns when the machine's speed moved between the sides."""
    print(f"\n{peer.title} ({peer.requirement}, {python}): same shape, {args.steps} steps after a warm-up; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    try:
        theirs = peer_lib.run(peer, python, peer_shape(args), platform=jax.default_backend())
    except peer_lib.PeerError as e:
        sys.exit(f"--peer {args.peer}: {e}")
    expected = args.batch * args.new
    if any(n != expected for n in theirs["new_tokens_per_step"]):
        print(f"WARNING: {peer.title} generated {theirs['new_tokens_per_step']} new tokens per step, "
              f"ours {expected}")
    if theirs.get("actor_params_changed") is False:
        print(f"WARNING: not every {peer.title} policy parameter tensor changed: its update may not have run")
    print(f"{peer.title} warm-up step (compiles): {theirs['warmup_s']:.1f} s; steps: "
          + ", ".join(f"{t:.2f}" for t in theirs["steps_s"]) + " s")
    peak_after = matmul_peak()
    drift = max(peak_before, peak_after) / min(peak_before, peak_after)
    print(f"matmul peak before ours {peak_before:.0f}, after {peer.title} {peak_after:.0f} GFLOP/s; "
          f"load average {os.getloadavg()[0]:.1f}")
    if drift > PEAK_DRIFT:
        print(f"WARNING: the machine's speed moved {drift:.2f}x between the sides: the ratio is unreliable "
              "(measure on a quiet machine)")
    print("\n".join(peer_lib.comparison_lines(peer, ours, theirs)))


if __name__ == "__main__":
    host_memory.reexec_with_huge_pages()  # as `python -m jaxstep.main` does; the peer runs without it
    main()
