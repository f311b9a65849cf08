"""Critic-free RL: process-supervised GRPO (grpo_process) on Clip-Delta step rewards, 4 responses per prompt, k3 KL loss."""
from jaxstep import config_lib

PRESETS = ("", "paper")


def get_config(arg: str = ""):
    c = config_lib.base_config("grpo_prm_clip_delta", "pipeline")
    c.ppo.scheme = "clip_delta"
    c.rm.kind = "prm"
    if config_lib.preset(arg, PRESETS, __file__) == "paper":
        config_lib.main_job_paper(c)
    else:
        config_lib.main_job_cpu(c)
    p = c.ppo
    p.advantage = "grpo_process"  # step rewards normalised over the prompt's group; no critic
    p.samples_per_prompt = 4  # rollout_batch / 4 prompts per iteration
    p.kl_estimator = "k3"  # GRPO's KL: beta * k3 as a loss term, not in the rewards
    return c
