"""PPO with Clip-Delta rewards: Clip, then Delta, of the step scores at each step end.

    python -m jaxstep.main --config=configs/ppo_prm_clip_delta.py                # CPU, < 10 min
    python -m jaxstep.main --config=configs/ppo_prm_clip_delta.py:paper \
        --config.ppo.reward_model=/path/to/prm/export
"""
from jaxstep import config_lib

PRESETS = ("", "paper")


def get_config(arg: str = ""):
    c = config_lib.base_config("ppo_clip_delta", "pipeline")
    c.ppo.scheme = "clip_delta"
    c.rm.kind = "prm"
    if config_lib.preset(arg, PRESETS, __file__) == "paper":
        return config_lib.main_job_paper(c)
    return config_lib.main_job_cpu(c)
