"""PPO with Vanilla ORM rewards: the ORM's score of the whole response at its last token.

    python -m jaxstep.main --config=configs/ppo_orm.py                # CPU, < 10 min
    python -m jaxstep.main --config=configs/ppo_orm.py:paper \
        --config.ppo.reward_model=/path/to/orm/export
"""
from jaxstep import config_lib

PRESETS = ("", "paper")


def get_config(arg: str = ""):
    c = config_lib.base_config("ppo_orm", "pipeline")
    c.ppo.scheme = "orm"
    c.rm.kind = "orm"
    if config_lib.preset(arg, PRESETS, __file__) == "paper":
        return config_lib.main_job_paper(c)
    return config_lib.main_job_cpu(c)
