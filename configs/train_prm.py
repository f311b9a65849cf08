"""Stage prm: a process reward model (one score per reasoning step).

    python -m jaxstep.main --config=configs/train_prm.py --workdir=runs/prm          # CPU, ~4 min
    python -m jaxstep.main --config=configs/train_prm.py:montecarlo --workdir=runs/prm_mc
    python -m jaxstep.main --config=configs/train_prm.py:prm800k --workdir=runs/prm800k \
        --config.rm.prm800k_path=/path/to/prm800k/phase2_train.jsonl
    python -m jaxstep.main --config=configs/train_prm.py:paper --workdir=runs/prm_paper   # DeBERTa-v3-large PRM
"""
from jaxstep import config_lib

PRESETS = ("", "montecarlo", "bt", "prm800k", "paper")


def _synthetic(c):
    config_lib.synthetic_cpu_lengths(c)
    c.sampler.batch_size = 128
    c.checkpoint.every_steps = 100
    return c


def get_config(arg: str = ""):
    preset = config_lib.preset(arg, PRESETS, __file__)
    c = config_lib.base_config("train_prm", "prm")
    c.rm.kind = "prm"
    r = c.rm
    if preset == "":
        # Exact step labels of SFT samples on synthetic problems, plus minimal pairs, with
        # the likelihood feature and the joint LM loss (config_lib.synthetic_prm); step AUC,
        # flaw detection and best-of-8 on 300 held-out problems. ~4 min on a 2-core CPU.
        config_lib.synthetic_prm(_synthetic(c), steps=600)
        r.eval_problems = 300
        return c
    if preset == "montecarlo":
        # The same problems labelled Math-Shepherd style (completions from every step
        # prefix; hard labels); no exact labels used for training.
        _synthetic(c)
        c.name = "train_prm_montecarlo"
        r.labels = "montecarlo"
        r.mc_samples = 4
        r.mc_mode = "hard"
        r.num_problems = 96  # x 2 samples, ~3 prefixes each, 4 completions per prefix
        return c
    if preset == "bt":
        # Exact labels turned into Bradley-Terry pairs of alternative steps.
        _synthetic(c)
        c.name = "train_prm_bt"
        r.loss = "bt"
        r.corrupted_per_problem = 0.5  # corrupted references give pairs that differ in one step
        return c
    if preset == "prm800k":
        # Human labels from PRM800K, BCE; a Qwen2 backbone.
        c.name = "train_prm800k"
        config_lib.bf16_fsdp(c)
        c.model.hf_path = r.init_from = "Qwen/Qwen2-0.5B"
        r.labels = "prm800k"
        r.prm800k_path = ""  # required: set --config.rm.prm800k_path
        r.eval_problems = 0  # no generator: AUC on held-out PRM800K problems only
        c.data.max_prompt_len = 512
        c.data.max_response_len = 768
        r.steps = 3000
        r.batch_size = 64
        r.learning_rate = 1e-5
        r.warmup_steps = 100
        r.weight_decay = 0.0
        r.eval_fraction = 0.02
        c.checkpoint.every_steps = 500
        return c
    # paper: Math-Shepherd labels for GSM8K + MATH samples of an HF generator (rm.generator).
    c.name = "train_prm_paper"
    config_lib.rm_paper(c)
    # A DeBERTa-v3-large encoder as in Pan et al. (a local folder or this hub name;
    # jaxstep.models.deberta_heads); it reads the samples with its own tokenizer.
    r.backbone = "deberta"
    r.init_from = "microsoft/deberta-v3-large"
    r.labels = "montecarlo"
    r.mc_samples = 8
    r.mc_mode = "hard"
    r.samples_per_problem = 4
    return c
