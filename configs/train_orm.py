"""Stage orm: an outcome reward model (one score per solution, at its last token).

    python -m jaxstep.main --config=configs/train_orm.py --workdir=runs/orm          # CPU, ~2 min
    python -m jaxstep.main --config=configs/train_orm.py:gsm8k_examples --workdir=runs/orm_gsm8k \
        --config.rm.solutions_path=/path/to/gsm8k/example_model_solutions.jsonl
    python -m jaxstep.main --config=configs/train_orm.py:paper --workdir=runs/orm_paper

The generator is `rm.generator`, else the SFT export of a chained run
(`<workdir>/../sft/export`); the backbone starts from it (or `rm.init_from`).

Presets:
  ""              samples of the SFT generator on synthetic problems labelled by
                  final-answer correctness (plus corrupted references / references
                  when a class is rare), BCE at the last token; best-of-8 by ORM score.
  gsm8k_examples  the 4 x 1319 pre-labelled GSM8K solutions (`rm.solutions_path`);
                  outcome AUC on held-out questions (best-of-N when a generator exists).
  paper           GSM8K + MATH samples of an HF generator (rm.generator).

Every field is documented in jaxstep/config_lib.py; only the overrides are here.
"""
from jaxstep import config_lib

PRESETS = ("", "cpu", "gsm8k_examples", "paper")


def get_config(arg: str = ""):
    preset = arg or "cpu"
    c = config_lib.base_config("train_orm", "orm")
    c.rm.kind = "orm"
    r = c.rm
    if preset == "cpu":  # the rm defaults in config_lib (as in the default chain)
        c.sampler.batch_size = 128
        c.checkpoint.every_steps = 50
        return c
    if preset == "gsm8k_examples":
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
    if preset == "paper":
        c.name = "train_orm_paper"
        c.model.dtype = "bfloat16"
        c.data.train_sources = "gsm8k:0.5,math:0.5"
        c.data.eval_sources = "math500"
        c.data.num_train = 0
        c.data.max_prompt_len = 512
        c.data.max_response_len = 512
        c.mesh.data, c.mesh.fsdp = 1, -1
        r.num_problems = 15000
        r.samples_per_problem = 8
        r.steps = 4000
        r.batch_size = 64
        r.learning_rate = 1e-5
        r.warmup_steps = 100
        r.weight_decay = 0.0
        r.eval_problems = 500
        r.best_of_n = 64
        c.sampler.temperature = 0.7
        c.sampler.batch_size = 256
        c.checkpoint.every_steps = 500
        return c
    raise ValueError(f"configs/train_orm.py: unknown preset {arg!r}; expected one of {PRESETS}")
