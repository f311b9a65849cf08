"""Sweep of PPO reward schemes on one SFT policy and one PRM (and ORM): the paper's
experiment in miniature, one comparison table.

    python -m jaxstep.main --config=configs/sweep.py                       # CPU
    python -m jaxstep.main --config=configs/sweep.py \
        --config.sweep.schemes=orm,prm_avg,prm_prod,prm_min,prm_max,prm_dense,clip,delta,clip_delta
    python -m jaxstep.main --config=configs/sweep.py:paper --config.sweep.prm=/path/to/prm/export

Stage `sweep` (jaxstep/train/sweep.py): SFT in <workdir>/sft, the PRM (and, for the
`orm` scheme, an ORM trained on samples of the same SFT policy) once, then one PPO run
and one greedy eval per scheme (`sweep.seeds` runs each), and <workdir>/report.md with
accuracy +- standard error, the paired difference to SFT, reward, KL and the
reward-hacking statistics per scheme. Finished stages are reused, so adding a scheme
to the list only runs that scheme.

Presets: "" (CPU, synthetic; the PPO settings of configs/ppo_prm_max.py) and "paper"
(Qwen2-1.5B on GSM8K + MATH; see `jaxstep.config_lib.ppo_experiment`). The default
schemes are ORM, PRM-Max, PRM-Min and Clip-Delta.
"""
from jaxstep import config_lib


def get_config(arg: str = ""):
    c = config_lib.ppo_experiment("prm_max", arg)
    c.name = "sweep"
    c.stage = "sweep"
    c.sweep.schemes = "orm,prm_max,prm_min,clip_delta"
    if arg in ("", "cpu"):
        config_lib.synthetic_prm(c, steps=600)  # the configs/train_prm.py PRM: the sweep has no 10-minute budget
    return c
