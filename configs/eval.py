"""Stage eval: greedy (and optional sampled pass@k) accuracy of a policy; report.md in the workdir.

    python -m jaxstep.main --config=configs/eval.py --workdir=runs/eval \
        --config.eval.model=runs/sft/export
    python -m jaxstep.main --config=configs/eval.py:paper --workdir=runs/eval_paper \
        --config.eval.model=runs/sft_paper/export
"""
from jaxstep import config_lib

PRESETS = ("", "paper")


def get_config(arg: str = ""):
    c = config_lib.base_config("eval", "eval")
    if config_lib.preset(arg, PRESETS, __file__) == "":
        return c  # the first 400 synthetic test problems (CPU, well under a minute)
    # GSM8K test, MATH test and MATH500, whole sets, 512-token prompts and solutions.
    config_lib.bf16_fsdp(c)
    c.data.max_prompt_len = 512
    c.eval.sources = "gsm8k,math,math500"
    c.eval.limit = 0
    c.eval.max_new_tokens = 512
    c.eval.batch_size = 64
    return c
