"""PPO with two reward models at once (the Clip/Delta recipe's reward, Gao et al. 2024):
Clip-Delta of the PRM step scores at each step end + the ORM's score at the last token
(`ppo.outcome_coef`), + the success reward - KL. The main job trains both reward models
(`<workdir>/prm`, `<workdir>/orm`) on samples of its SFT policy.

    python -m jaxstep.main --config=configs/ppo_prm_clip_delta_orm.py                # CPU
    python -m jaxstep.main --config=configs/ppo_prm_clip_delta_orm.py:paper \
        --config.ppo.reward_model=/path/to/prm/export --config.ppo.outcome_reward_model=/path/to/orm/export

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
        return config_lib.main_job_paper(c)
    return config_lib.main_job_cpu(c)
