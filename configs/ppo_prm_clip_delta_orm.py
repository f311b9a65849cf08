"""PPO with two reward models at once (the Clip/Delta recipe's reward, Gao et al. 2024):
Clip-Delta of the PRM step scores at each step end + the ORM's score at the last token
(`ppo.outcome_coef`), + the success reward - KL. The main job trains both reward models
(`<workdir>/prm`, `<workdir>/orm`) on samples of its SFT policy.

    python -m jaxstep.main --config=configs/ppo_prm_clip_delta_orm.py                # CPU
    python -m jaxstep.main --config=configs/ppo_prm_clip_delta_orm.py:paper           # the recipe at scale

The `paper` preset is the recipe's setup (`jaxstep.config_lib.clip_delta_paper`): a
Qwen1.5-1.8B policy on GSM8K, a Bradley-Terry PRM and a BCE ORM, KL 0.1, clip 0.2,
1024 prompts x 8 samples per PPO iteration. `--config.ppo.reward_model=<PRM export>
--config.ppo.outcome_reward_model=<ORM export>` use reward models trained elsewhere.

Either reward model may be a public HF folder (see the README's reward-model table).
`--config.ppo.scheme=clip` gives the recipe without Delta: sum_k min(r_k - eta, 0) + ORM.
"""
from jaxstep import config_lib

PRESETS = ("", "paper")


def get_config(arg: str = ""):
    c = config_lib.base_config("ppo_clip_delta_orm", "pipeline")
    c.ppo.scheme = "clip_delta"
    c.ppo.outcome_coef = 1.0  # reward = alpha * clip_delta(PRM) + 1.0 * ORM + success - KL
    c.rm.kind = "prm"
    if config_lib.preset(arg, PRESETS, __file__) == "paper":
        return config_lib.clip_delta_paper(c)
    return config_lib.main_job_cpu(c)
