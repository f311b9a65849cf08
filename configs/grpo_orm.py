"""Critic-free RL: GRPO (outcome, group-normalised) on Vanilla ORM rewards, 4 responses per prompt, k3 KL loss."""
from jaxstep import config_lib

PRESETS = ("", "paper")


def get_config(arg: str = ""):
    c = config_lib.base_config("grpo_orm", "pipeline")
    c.ppo.scheme = "orm"
    c.rm.kind = "orm"
    if config_lib.preset(arg, PRESETS, __file__) == "paper":
        config_lib.main_job_paper(c)
    else:
        config_lib.main_job_cpu(c)
    p = c.ppo
    p.advantage = "grpo"  # (r - group mean) / group std per response; no critic
    p.samples_per_prompt = 4
    p.kl_estimator = "k3"
    return c  # CPU: the main job already runs GRPO this way (4 per prompt, k3, learning rate 1e-4)
