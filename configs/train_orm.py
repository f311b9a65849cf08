"""Stage orm: an outcome reward model (one score per solution, at its last token).

    python -m jaxstep.main --config=configs/train_orm.py --workdir=runs/orm          # CPU, ~2 min
    python -m jaxstep.main --config=configs/train_orm.py:gsm8k_examples --workdir=runs/orm_gsm8k \
        --config.rm.solutions_path=/path/to/gsm8k/example_model_solutions.jsonl
    python -m jaxstep.main --config=configs/train_orm.py:prm800k --workdir=runs/orm_prm800k \
        --config.rm.prm800k_path=/path/to/prm800k/phase2_train.jsonl
    python -m jaxstep.main --config=configs/train_orm.py:paper --workdir=runs/orm_paper   # DeBERTa-v3-large ORM
"""
from jaxstep import config_lib

PRESETS = ("", "gsm8k_examples", "prm800k", "paper")


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
    if preset == "prm800k":
        # PRM800K outcome labels: each rated solution (phase 2: the pre-generated one and
        # its answer; phase 1: a labelled path that ends in an answer) labelled by whether
        # its final answer is right; BCE at the last token; a Qwen2 backbone.
        c.name = "train_orm_prm800k"
        config_lib.bf16_fsdp(c)
        c.model.hf_path = r.init_from = "Qwen/Qwen2-0.5B"
        r.orm_labels = "prm800k"
        r.prm800k_path = ""  # required: set --config.rm.prm800k_path
        r.eval_problems = 0  # no generator: outcome AUC on held-out PRM800K problems only
        c.data.max_prompt_len = 512
        c.data.max_response_len = 768
        r.steps = 2000
        r.batch_size = 64
        r.learning_rate = 1e-5
        r.warmup_steps = 100
        r.weight_decay = 0.0
        r.eval_fraction = 0.05
        c.checkpoint.every_steps = 500
        return c
    c.name = "train_orm_paper"
    config_lib.rm_paper(c)
    # A DeBERTa-v3-large encoder as in Pan et al. (a local folder or this hub name;
    # jaxstep.models.deberta_heads); it reads the samples with its own tokenizer.
    r.backbone = "deberta"
    r.init_from = "microsoft/deberta-v3-large"
    r.samples_per_problem = 8
    return c
