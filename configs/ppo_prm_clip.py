"""PPO with Clip rewards: min(score - ppo.eta, 0) at each step's last token, so every one is <= 0.

    python -m jaxstep.main --config=configs/ppo_prm_clip.py                # CPU, < 10 min
    python -m jaxstep.main --config=configs/ppo_prm_clip.py:paper \
        --config.ppo.reward_model=/path/to/prm/export
"""
from jaxstep import config_lib

PRESETS = ("", "paper")


def get_config(arg: str = ""):
    c = config_lib.base_config("ppo_clip", "pipeline")
    c.ppo.scheme = "clip"
    c.rm.kind = "prm"
    if config_lib.preset(arg, PRESETS, __file__) == "paper":
        return config_lib.main_job_paper(c)
    return config_lib.main_job_cpu(c)
