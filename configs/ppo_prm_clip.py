"""PPO with Clip rewards: min(score - eta, 0) at each step's last token (eta = ppo.eta = 0.8): every
process reward is <= 0, so extra steps cannot earn reward.

Reward of a response: ppo.alpha * (that process part) + ppo.success_coef * (0/1 final
answer correct) - ppo.kl_coef * KL(policy || SFT policy), token-level (see
jaxstep/rewards/shaping.py and jaxstep/rl/update.py).

    python -m jaxstep.main --config=configs/ppo_prm_clip.py                # CPU, < 10 min
    python -m jaxstep.main --config=configs/ppo_prm_clip.py:paper \
        --config.ppo.reward_model=/path/to/prm/export                    # real scale

Stage `pipeline` (jaxstep/train/pipeline.py): SFT in <workdir>/sft, the PRM in
<workdir>/prm, PPO in <workdir>/ppo, greedy evals of both policies in
<workdir>/eval_sft and <workdir>/eval_ppo, and <workdir>/report.md; finished stages
(summary.json) are reused. `--config.stage=ppo` runs the PPO stage alone (then set
ppo.policy and ppo.reward_model).

Presets: "" (CPU minutes, synthetic problems, tiny decoder from scratch) and "paper"
(Qwen2-1.5B on GSM8K + MATH); see `jaxstep.config_lib.ppo_experiment`. Defaults from the
seeds: KL coefficient 0.1, PPO clip 0.2, Clip threshold eta 0.8. Every field is
documented in jaxstep/config_lib.py.
"""
from jaxstep import config_lib


def get_config(arg: str = ""):
    return config_lib.ppo_experiment("clip", arg)
