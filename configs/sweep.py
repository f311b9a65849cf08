"""Several PPO reward schemes on one SFT policy and one PRM (and ORM), compared in one report.

    python -m jaxstep.main --config=configs/sweep.py                       # CPU
    python -m jaxstep.main --config=configs/sweep.py \
        --config.sweep.schemes=orm,prm_avg,prm_prod,prm_min,prm_max,prm_dense,clip,delta,clip_delta
    python -m jaxstep.main --config=configs/sweep.py:hacking --workdir=runs/hacking   # CPU: 12 RL runs
    python -m jaxstep.main --config=configs/sweep.py:paper --config.sweep.prm=/path/to/prm/export

Presets:
  ""       the main job's PPO settings, the 600-step PRM of configs/train_prm.py
  hacking  reward hacking on purpose: raw dense PRM rewards against Clip, Delta and
           Clip-Delta, 3 seeds. Two things a real policy and a real PRM have and the
           default miniature lacks: a policy that sometimes writes a correct but
           unnecessary step (10% of the SFT solutions repeat one of their steps), and a
           PRM that rates such a step as correct (its minimal pairs include repeated
           steps, which exact labels mark correct, as PRM800K's raters mark a correct
           but redundant step). The dense reward then grows with every repeat.
  easy_hard  Pan et al.'s GSM8K/MATH questions in miniature: every scheme on a 1:1 mix of
           easy (synthetic_easy: 2-3 steps, small numbers) and hard (synthetic_hard:
           4-5 steps, larger numbers, all four operations) prompts, PRM-Max also on each
           alone, evaluated on 1000 problems of each set, 3 seeds
  paper    Pan et al.'s setup (jaxstep.config_lib.main_job_paper)
"""
from jaxstep import config_lib

PRESETS = ("", "hacking", "easy_hard", "paper")


def get_config(arg: str = ""):
    c = config_lib.base_config("sweep", "sweep")
    c.sweep.schemes = "orm,prm_max,prm_min,clip_delta"
    name = config_lib.preset(arg, PRESETS, __file__)
    if name == "paper":
        return config_lib.main_job_paper(c)
    config_lib.main_job_cpu(c)  # the PPO settings of configs/ppo_prm_max.py
    c.rm.steps = 600  # the configs/train_prm.py PRM: the sweep has no 10-minute budget
    if name == "hacking":
        c.name = "sweep_hacking"
        c.sweep.schemes = "prm_dense,clip,delta,clip_delta"
        c.sweep.seeds = 3
        c.sft.redundant_fraction = 0.1
        c.rm.corruption_kinds = "arithmetic,operand,repeat"
    if name == "easy_hard":
        c.name = "sweep_easy_hard"
        c.sweep.schemes = "orm,prm_avg,prm_prod,prm_max,prm_min,prm_dense,clip,delta,clip_delta"
        c.sweep.single_sources = "synthetic_easy,synthetic_hard"
        c.sweep.single_source_scheme = "prm_max"
        c.sweep.seeds = 3
        mix = "synthetic_easy:0.5,synthetic_hard:0.5"
        c.data.train_sources = mix  # SFT, the reward models' samples and PPO's prompts
        c.data.eval_sources = "synthetic_easy,synthetic_hard"
        c.eval.sources = "synthetic_easy,synthetic_hard"
        c.pipeline.eval_limit = 1000  # per set
        c.data.max_prompt_len = 72  # hard prompts reach 64 tokens, their solutions 76
        c.data.max_response_len = 96
    return c
