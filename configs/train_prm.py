"""Stage prm: a process reward model (one score per reasoning step).

    python -m jaxstep.main --config=configs/train_prm.py --workdir=runs/prm          # CPU, ~4 min
    python -m jaxstep.main --config=configs/train_prm.py:montecarlo --workdir=runs/prm_mc
    python -m jaxstep.main --config=configs/train_prm.py:prm800k --workdir=runs/prm800k \
        --config.rm.prm800k_path=/path/to/prm800k/phase2_train.jsonl
    python -m jaxstep.main --config=configs/train_prm.py:paper --workdir=runs/prm_paper

The generator is `rm.generator`, else the SFT export of a chained run
(`<workdir>/../sft/export`); the backbone starts from it (or `rm.init_from`).

Presets:
  ""          exact labels on synthetic problems: samples of the SFT generator labelled
              step by step by `synthetic.label_steps`, plus minimal pairs (each train
              problem's reference and a copy with one wrong result or operand); per-step
              BCE + the joint next-token loss on correct steps; the head also reads each
              step's log-likelihood under the backbone (`rm.likelihood_feature`). Then
              step AUC, flaw detection and best-of-8 (PRM-min/prod/avg/max vs majority
              vote, random pick and greedy) on 300 held-out problems.
  montecarlo  the same problems labelled Math-Shepherd style (completions from every
              step prefix; hard labels), no exact labels used for training.
  bt          exact labels turned into Bradley-Terry pairs of alternative steps.
  prm800k     human labels from PRM800K (`rm.prm800k_path`), BCE; a Qwen2 backbone.
  paper       Math-Shepherd labels for GSM8K + MATH with an HF generator (rm.generator).

Every field is documented in jaxstep/config_lib.py; only the overrides are here.
"""
from jaxstep import config_lib

PRESETS = ("", "cpu", "montecarlo", "bt", "prm800k", "paper")


def _base(c):
    config_lib.synthetic_cpu_lengths(c)
    c.sampler.batch_size = 128
    c.checkpoint.every_steps = 100
    return c


def _cpu(c):
    # The synthetic PRM recipe of config_lib (likelihood feature, joint LM loss, minimal
    # pairs), 600 steps: ~4 min on a 2-core CPU for sampling, training and evaluation.
    config_lib.synthetic_prm(_base(c), steps=600)
    c.rm.eval_problems = 300
    return c


def get_config(arg: str = ""):
    preset = arg or "cpu"
    c = config_lib.base_config("train_prm", "prm")
    c.rm.kind = "prm"
    if preset == "cpu":
        return _cpu(c)
    if preset == "montecarlo":
        c = _base(c)
        c.name = "train_prm_montecarlo"
        c.rm.labels = "montecarlo"
        c.rm.mc_samples = 4
        c.rm.mc_mode = "hard"
        c.rm.num_problems = 96  # x 2 samples, ~3 prefixes each, 4 completions per prefix
        return c
    if preset == "bt":
        c = _base(c)
        c.name = "train_prm_bt"
        c.rm.loss = "bt"
        c.rm.corrupted_per_problem = 0.5  # corrupted references give pairs that differ in one step
        return c
    if preset == "prm800k":
        c.name = "train_prm800k"
        c.model.hf_path = "Qwen/Qwen2-0.5B"
        c.model.dtype = "bfloat16"
        c.rm.init_from = "Qwen/Qwen2-0.5B"
        c.rm.labels = "prm800k"
        c.rm.prm800k_path = ""  # required: set --config.rm.prm800k_path
        c.rm.eval_problems = 0  # no generator: AUC on held-out PRM800K problems only
        c.data.max_prompt_len = 512
        c.data.max_response_len = 768
        c.mesh.data, c.mesh.fsdp = 1, -1
        c.rm.steps = 3000
        c.rm.batch_size = 64
        c.rm.learning_rate = 1e-5
        c.rm.warmup_steps = 100
        c.rm.weight_decay = 0.0
        c.rm.eval_fraction = 0.02
        c.checkpoint.every_steps = 500
        return c
    if preset == "paper":
        c.name = "train_prm_paper"
        c.model.dtype = "bfloat16"
        c.data.train_sources = "gsm8k:0.5,math:0.5"
        c.data.eval_sources = "math500"
        c.data.num_train = 0
        c.data.max_prompt_len = 512
        c.data.max_response_len = 512
        c.mesh.data, c.mesh.fsdp = 1, -1
        c.rm.labels = "montecarlo"  # Math-Shepherd
        c.rm.mc_samples = 8
        c.rm.mc_mode = "hard"
        c.rm.num_problems = 15000
        c.rm.samples_per_problem = 4
        c.rm.steps = 4000
        c.rm.batch_size = 64
        c.rm.learning_rate = 1e-5
        c.rm.warmup_steps = 100
        c.rm.weight_decay = 0.0
        c.rm.eval_problems = 500
        c.rm.best_of_n = 64
        c.sampler.temperature = 0.7
        c.sampler.batch_size = 256
        c.checkpoint.every_steps = 500
        return c
    raise ValueError(f"configs/train_prm.py: unknown preset {arg!r}; expected one of {PRESETS}")
