"""Presets shared by several experiment files: the main job's CPU and paper presets, the
paper SFT and reward-model recipes, the synthetic PRM recipe, and `preset()` to read the
name after the colon."""
from __future__ import annotations

from collections.abc import Sequence

import ml_collections

from jaxstep.rewards.shaping import reward_model_kind

from jaxstep.config_lib.sections import base_config

# The two reference setups (DESIGN.md), as hub names; a local folder works in their place
# and the plan stage sizes them from jaxstep.models.shapes.HUB_CONFIGS with no download.
# Pan et al. 2023 ("Let's Reinforce Step by Step"): the generator of the `paper` presets
# and its 300M-backbone DeBERTa-v3 reward models.
PAPER_MODEL = "facebook/opt-1.3b"
PAPER_REWARD_MODEL = "microsoft/deberta-v3-large"
# Gao et al. 2024 (the Clip/Delta recipe): a Qwen1.5 policy (configs/ppo_prm_clip_delta_orm.py:paper).
CLIP_DELTA_MODEL = "Qwen/Qwen1.5-1.8B"


def preset(arg: str, presets: Sequence[str], where: str) -> str:
    """The preset named after the colon in `--config=<file>:<preset>`, one of the file's
    `PRESETS` ("cpu" is another name for ""); `where` (the file) is named in the error."""
    name = "" if arg == "cpu" else arg
    if name not in presets:
        raise ValueError(f"{where}: unknown preset {arg!r}; expected one of {tuple(presets)} "
                         "('' is also 'cpu')")
    return name




def bf16_fsdp(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Real scale on accelerators: bfloat16 compute, parameters sharded (FSDP) over all devices."""
    c.model.dtype = "bfloat16"
    c.mesh.data = 1
    c.mesh.fsdp = -1
    return c


def synthetic_cpu_lengths(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Synthetic prompts are <= 45 tokens and solutions <= 40: shorter rows for every stage."""
    c.data.max_prompt_len = 48
    c.data.max_response_len = 64
    return c


def synthetic_prm(c: ml_collections.ConfigDict, steps: int) -> ml_collections.ConfigDict:
    """The CPU PRM recipe on synthetic problems (measured on the 500-step SFT policy).

    A scalar head alone learns which problems look hard (flaw detection on minimal pairs
    ~0.53, best-of-8 below greedy). The likelihood feature lets the head read the
    backbone's own log-likelihood of each step; the joint next-token loss on correct
    steps keeps improving that LM; minimal pairs (each train problem's reference and
    the same solution with a wrong result or operand) put the label on the flawed step
    itself. 600 steps: PRM-min best-of-8 38.0% vs greedy 30.3% (300 problems).
    """
    r = c.rm
    r.likelihood_feature = True
    r.lm_loss_weight = 10.0
    r.references_per_problem = 1.0
    r.corrupted_per_problem = 1.0
    r.contrast_problems = c.data.num_train
    r.corruption_kinds = "arithmetic,operand"
    r.steps = steps
    return c


def sft_paper(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The paper's SFT of PAPER_MODEL on GSM8K + MATH train (configs/sft.py:paper and the
    main job's paper preset)."""
    c.model.hf_path = PAPER_MODEL
    # Chosen with the plan stage (README): per-layer remat in every stage that trains
    # (without it the SFT step, 64 x 1024 tokens, does not fit a v5e chip) and TPU splash
    # attention, which keeps [batch, heads, time, time] scores out of HBM (on GPUs pass
    # --config.model.attention=cudnn).
    c.model.remat = "full"
    c.model.attention = "splash"
    s = c.sft
    s.steps = 700  # ~3 epochs of the 15k GSM8K + MATH train problems
    s.batch_size = 64
    s.learning_rate = 1e-5
    s.end_lr_ratio = 0.0
    s.warmup_steps = 30
    s.weight_decay = 0.0
    s.b2 = 0.95
    s.eval_every = 200
    s.eval_limit = 100
    s.log_every = 10
    return c


def rm_paper(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The paper's reward-model training (configs/train_orm.py and train_prm.py, preset paper):
    samples of an HF generator (rm.generator) on 15k problems of a 1:1 GSM8K/MATH mix;
    held-out AUC and best-of-64 on MATH500."""
    bf16_fsdp(c)
    d = c.data
    d.train_sources = "gsm8k:0.5,math:0.5"
    d.eval_sources = "math500"
    d.num_train = 0
    d.max_prompt_len = 512
    d.max_response_len = 512
    r = c.rm
    r.num_problems = 15000
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


def main_job_cpu(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The main job (stage pipeline) in CPU minutes: the tiny decoder from scratch on
    synthetic problems; the whole chain takes under 10 minutes on a 2-core CPU."""
    synthetic_cpu_lengths(c)
    synthetic_prm(c, steps=200)  # fewer steps than configs/train_prm.py: the main job has 10 minutes
    p = c.ppo
    p.steps = 120
    p.rollout_batch = 64
    p.minibatches = 2
    p.epochs = 1
    # The PPO objective with group advantages (GRPO: each response's reward normalised over
    # the 4 responses to its prompt) and the KL as a k3 loss term. Measured on this
    # miniature (docs/study.md): with the critic's GAE the policy drifted (KL ~1) without
    # getting better (greedy -1.4% to +2.9% vs SFT over the settings tried); the group
    # baseline removes the problem's difficulty from the advantage and RL gains 2-3x more.
    p.advantage = "grpo"
    p.samples_per_prompt = 4
    p.kl_estimator = "k3"
    p.learning_rate = 1e-4  # 2e-4 gained less greedy accuracy; GAE's 3e-4 collapses without a critic
    p.critic_learning_rate = 1e-3  # (ppo.advantage=gae: the critic's)
    p.warmup_steps = 10
    p.critic_zero_head = True  # (ppo.advantage=gae) critic = PRM backbone + a value head starting at 0
    p.eval_limit = 0  # the pipeline evaluates the final policy on pipeline.eval_limit problems
    c.pipeline.eval_limit = 2000
    c.eval.pass_k = 4  # the evals also sample 4 responses per problem at the rollout temperature
    c.checkpoint.every_steps = 40
    return c


def main_job_paper(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The main job at real scale, Pan et al.'s setup: PAPER_MODEL (OPT-1.3B) fine-tuned on
    GSM8K + MATH, PPO on a 1:1 GSM8K/MATH prompt mix, evals on GSM8K test and MATH500. The
    reward model is `ppo.reward_model` (an orm/prm stage export, e.g. a PRM on PRM800K, or
    a public HF reward model); left empty, the chain trains a PAPER_REWARD_MODEL
    (DeBERTa-v3-large) one with Monte-Carlo labels. The critic starts from the SFT policy
    (an encoder reward model cannot initialise a decoder critic).

    Memory settings chosen with the plan stage (README, "Plan before you rent a slice"):
    remat and splash attention (`sft_paper`) and 2 minibatches of 64 responses (8 rows
    per chip on a v5e-8), so that every program fits 16 GiB chips."""
    bf16_fsdp(c)
    sft_paper(c)
    d = c.data
    d.train_sources = "gsm8k,math"
    d.eval_sources = "gsm8k,math500"
    d.num_train = 0
    d.max_prompt_len = 320
    d.max_response_len = 512
    c.sampler.batch_size = 128
    # Reward model used when ppo.reward_model is empty: Math-Shepherd-style labels.
    r = c.rm
    r.backbone = "deberta"
    r.init_from = PAPER_REWARD_MODEL
    r.labels = "montecarlo"
    r.mc_samples = 8
    r.num_problems = 2000
    r.steps = 1000
    r.batch_size = 64
    r.learning_rate = 1e-5
    # PPO (the paper's settings: KL 0.1, clip 0.2, eta 0.8).
    p = c.ppo
    p.train_sources = "gsm8k:0.5,math:0.5"
    p.critic_init = "policy"
    p.steps = 500
    p.rollout_batch = 128
    p.minibatches = 2
    p.epochs = 1
    p.learning_rate = 1e-6
    p.critic_learning_rate = 5e-6
    p.warmup_steps = 10
    p.max_steps = 32
    p.eval_every = 50
    p.eval_limit = 200
    c.eval.sources = "gsm8k,math500"
    c.eval.max_new_tokens = 512
    c.eval.batch_size = 128
    c.pipeline.eval_limit = 0  # whole test sets
    c.pipeline.eval_batch_size = 128
    c.checkpoint.every_steps = 50
    return c


def clip_delta_paper(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The Clip/Delta recipe at real scale (Gao et al. 2024), on top of `main_job_paper`:
    CLIP_DELTA_MODEL (Qwen1.5-1.8B) fine-tuned and trained with PPO on GSM8K; a PRM trained
    with Bradley-Terry and an ORM with BCE (the chain trains both on Monte-Carlo-labelled
    samples of the SFT policy, from its backbone); reward = Clip(-Delta) of the PRM step
    scores + the ORM's score; KL 0.1, PPO clip 0.2, 1024 prompts x 8 samples per
    iteration (8192 responses, sampled and scored in chunks of sampler.batch_size)."""
    main_job_paper(c)
    c.model.hf_path = CLIP_DELTA_MODEL
    c.data.train_sources = "gsm8k"
    c.data.eval_sources = "gsm8k,math500"
    # A 151,936-token vocabulary: log-probs over 128 positions at a time, so the scorer's
    # chunks (64 rows per chip) never hold [rows, time, vocab] float32 logits.
    c.model.logits_chunk = 128
    r = c.rm
    r.backbone = "decoder"
    r.init_from = ""  # the SFT policy
    r.loss = "bt"
    r.microbatch_size = 16  # 16 pairs (32 rows) per accumulation step
    p = c.ppo
    p.train_sources = "gsm8k"
    p.kl_coef = 0.1
    p.clip_eps = 0.2
    p.rollout_batch = 8192
    p.samples_per_prompt = 8
    p.minibatches = 16  # 512 responses per optimizer step
    p.microbatch_size = 64  # gradient accumulation: 8 rows per chip on 8 chips
    p.steps = 100
    # Rollouts and scoring in chunks of 256 responses (32 rows per chip on a v5e-8): with
    # 512 the scorer (policy, reference, critic, PRM, ORM) needs 16.88 GiB per v5e chip.
    c.sampler.batch_size = 256
    return c


def ppo_experiment(scheme: str, arg: str = "") -> ml_collections.ConfigDict:
    """The main job with any reward `scheme` at preset `arg` ("" | "cpu" | "paper"), as the
    configs/ppo_*.py files build it (for tests and scripts that loop over schemes)."""
    name = preset(arg, ("", "paper"), f"ppo_experiment({scheme!r})")
    c = base_config(f"ppo_{scheme}", "pipeline")
    c.ppo.scheme = scheme
    c.rm.kind = reward_model_kind(scheme)
    return main_job_paper(c) if name == "paper" else main_job_cpu(c)
