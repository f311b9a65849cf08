"""Several PPO reward schemes on one SFT policy and one PRM (and ORM), compared in one report.

    python -m jaxstep.main --config=configs/sweep.py                       # CPU
    python -m jaxstep.main --config=configs/sweep.py \
        --config.sweep.schemes=orm,prm_avg,prm_prod,prm_min,prm_max,prm_dense,clip,delta,clip_delta
    python -m jaxstep.main --config=configs/sweep.py:paper --config.sweep.prm=/path/to/prm/export
"""
from jaxstep import config_lib

PRESETS = ("", "paper")


def get_config(arg: str = ""):
    c = config_lib.base_config("sweep", "sweep")
    c.sweep.schemes = "orm,prm_max,prm_min,clip_delta"
    if config_lib.preset(arg, PRESETS, __file__) == "paper":
        return config_lib.main_job_paper(c)
    config_lib.main_job_cpu(c)  # the PPO settings of configs/ppo_prm_max.py
    c.rm.steps = 600  # the configs/train_prm.py PRM: the sweep has no 10-minute budget
    return c
