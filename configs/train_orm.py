"""Stage orm: an outcome reward model (one score per solution, at its last token).

    python -m jaxstep.main --config=configs/train_orm.py --workdir=runs/orm          # CPU, ~2 min
    python -m jaxstep.main --config=configs/train_orm.py:gsm8k_examples --workdir=runs/orm_gsm8k \
        --config.rm.solutions_path=/path/to/gsm8k/example_model_solutions.jsonl
    python -m jaxstep.main --config=configs/train_orm.py:paper --workdir=runs/orm_paper
"""
from jaxstep import config_lib

PRESETS = ("", "gsm8k_examples", "paper")


def get_config(arg: str = ""):
    preset = config_lib.preset(arg, PRESETS, __file__)
    c = config_lib.base_config("train_orm", "orm")
    c.rm.kind = "orm"
    r = c.rm
    if preset == "":
        # Samples of the SFT generator on synthetic problems labelled by final-answer
        # correctness (plus corrupted references / references when a class is rare), BCE
        # at the last token; best-of-8 by ORM score.
        c.sampler.batch_size = 128
        c.checkpoint.every_steps = 50
        return c
    if preset == "gsm8k_examples":
        # The 4 x 1319 pre-labelled GSM8K solutions; outcome AUC on held-out questions
        # (best-of-N when a generator exists).
        c.name = "train_orm_gsm8k_examples"
        r.solutions_path = ""  # required: set --config.rm.solutions_path
        r.num_problems = 0  # all 1319 questions
        r.eval_fraction = 0.2
        r.eval_problems = 0
        r.steps = 600
        c.data.tokenizer = ""  # a real HF tokenizer folder is advised for GSM8K text
        c.data.max_prompt_len = 256
        c.data.max_response_len = 256
        return c
    c.name = "train_orm_paper"
    config_lib.rm_paper(c)
    r.samples_per_problem = 8
    return c
