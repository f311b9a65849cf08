"""jaxstep.rewards: reward-model scores -> float32 token rewards (pure jnp).

- `scoring`: read PRM step-end / ORM last-token scores from a reward model.
- `aggregate.aggregate(step_scores, step_mask, how)`: avg | prod | min | max | last
  (PRM-Avg/Prod/Min/Max rewards and best-of-N reranking).
- `shaping.shape_rewards(scheme, ...)`: `[batch, time]` token rewards for the schemes in
  `shaping.SCHEMES` (orm, prm_avg, prm_prod, prm_min, prm_max, prm_dense, clip, delta,
  clip_delta), plus the success reward and the weight alpha.
"""
