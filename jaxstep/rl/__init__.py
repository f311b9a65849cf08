"""jaxstep.rl: the PPO math, all float32 over `[batch, time]` token arrays.

- `logprobs`: aligned per-token logprobs/entropies/values (index t refers to token t).
- `gae`: masked GAE as a reverse `lax.scan`, masked mean/var, whitening.
- `advantages`: critic-free estimators (grpo, rloo, dr_grpo, reinforce_pp, grpo_process),
  the `ESTIMATORS` registry and `token_advantages` from shaped token rewards.
- `losses`: clipped policy and value losses, entropy bonus, k1/k3 KL estimators, the
  k1 reward penalty, policy-loss aggregation (token mean, sequence mean, token sum).
- `kl`: fixed or adaptive (target, horizon) KL coefficient as a checkpointable state.
- `update`: `make_ppo_update(...)`, one jitted (optionally mesh-sharded) PPO update of
  a policy and a separate critic; `init_ppo_state`, `PPOConfig`, `compute_advantages`.
"""
