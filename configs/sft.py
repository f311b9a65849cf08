"""Stage sft: supervised fine-tuning of the generator on reference solutions.

    python -m jaxstep.main --config=configs/sft.py --workdir=runs/sft         # CPU, ~2-3 min
    python -m jaxstep.main --config=configs/sft.py:paper --workdir=runs/sft   # OPT-1.3B (Pan et al.), GSM8K + MATH
"""
from jaxstep import config_lib

PRESETS = ("", "paper")


def get_config(arg: str = ""):
    c = config_lib.base_config("sft", "sft")
    if config_lib.preset(arg, PRESETS, __file__) == "":
        # The tiny Llama-style decoder (0.76M params) from scratch on synthetic problems
        # (operands <= 10, 2-3 steps): 500 steps of 32 sequences, ~210 CPU-seconds. Greedy
        # accuracy on the 400 synthetic test problems: 25.0%, so RL has room.
        return c
    config_lib.sft_paper(config_lib.bf16_fsdp(c))  # config_lib.PAPER_MODEL
    c.data.train_sources = "gsm8k,math"
    c.data.eval_sources = "math500"
    c.data.num_train = 0
    c.data.max_prompt_len = 512
    c.data.max_response_len = 512
    c.checkpoint.every_steps = 100
    c.sampler.batch_size = 64
    return c
