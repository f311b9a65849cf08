"""PPO with PRM-Min rewards: the smallest of the PRM's step scores at the last token.

    python -m jaxstep.main --config=configs/ppo_prm_min.py                # CPU, < 10 min
    python -m jaxstep.main --config=configs/ppo_prm_min.py:paper \
        --config.ppo.reward_model=/path/to/prm/export
"""
from jaxstep import config_lib

PRESETS = ("", "paper")


def get_config(arg: str = ""):
    c = config_lib.base_config("ppo_prm_min", "pipeline")
    c.ppo.scheme = "prm_min"
    c.rm.kind = "prm"
    if config_lib.preset(arg, PRESETS, __file__) == "paper":
        return config_lib.main_job_paper(c)
    return config_lib.main_job_cpu(c)
