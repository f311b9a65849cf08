"""Every config section with its defaults; each field is documented where it is defined.

`base_config(name, stage)` holds them all (the chain stages read each other's sections);
the experiment files in `configs/` start from it and override what they study.
"""
from __future__ import annotations

import ml_collections

from jaxstep.parallel.rules import DEFAULT_RULES


def model_config() -> ml_collections.ConfigDict:
    """The generator (policy) model: a built-in tiny decoder or an HF checkpoint."""
    m = ml_collections.ConfigDict()
    m.hf_path = ""  # local HF folder or hub name; "" = build the tiny model below from scratch
    m.dtype = "float32"  # compute dtype; keep float32 on CPU, "bfloat16" on TPU/GPU
    m.arch = "llama"  # tiny model family: llama | qwen2 | opt (AutoTokenizer misreads the tiny tokenizer of a qwen2 export)
    m.hidden_size = 128
    m.num_layers = 4
    m.num_heads = 4
    m.num_kv_heads = 2
    m.intermediate_size = 344
    m.max_position_embeddings = 512
    m.rope_theta = 10000.0
    m.tie_word_embeddings = True
    # Memory knobs of every stage that trains (SFT, reward model, PPO policy and critic).
    m.remat = "none"  # per-layer rematerialisation: none | full | dots | dots_no_batch | offload (jaxstep.models.decoder.remat_policy)
    m.attention = "einsum"  # attention kernel: einsum (explicit scores) | xla | cudnn (jax.nn.dot_product_attention; cudnn = flash on GPU) | splash (TPU Pallas flash kernel; training and scoring, sampling runs einsum) (jaxstep.models.attention)
    m.logits_chunk = 0  # >0: SFT loss and PPO log-probs run the LM head over this many positions at a time, never building [batch, time, vocab] logits (0 = off)
    return m


def data_config() -> ml_collections.ConfigDict:
    """Datasets, tokenizer and sequence lengths."""
    d = ml_collections.ConfigDict()
    d.train_sources = "synthetic"  # comma list "source[:weight]", e.g. "gsm8k:0.5,math:0.5"
    d.eval_sources = "synthetic"  # comma list of eval sets: synthetic | gsm8k | math | math500
    d.data_dir = ""  # folder with gsm8k/ and math/ (the real files); "" = $JAXSTEP_DATA_DIR
    d.num_train = 4000  # synthetic train problems (0 = all available for real sets)
    d.num_eval = 400  # eval problems per set (0 = the whole split)
    d.synthetic_min_steps = 2  # synthetic problem difficulty: steps per solution
    d.synthetic_max_steps = 3
    d.synthetic_max_value = 10  # largest operand in synthetic problems
    d.synthetic_max_factor = 5  # largest multiplier / divisor in synthetic problems
    d.synthetic_max_result = 100  # largest intermediate value in synthetic problems
    d.synthetic_ops = "+-*/"  # operations synthetic problems may use
    d.tokenizer = ""  # HF tokenizer folder; "" = train a tiny BPE on the synthetic corpus
    d.tokenizer_vocab_size = 256  # size of the tiny BPE tokenizer
    d.max_prompt_len = 64  # prompts are left-padded to this many tokens (truncated left)
    # "plain": "Question: ...\nAnswer:\n"; "chat": the tokenizer's chat template (one user turn)
    d.prompt_template = "plain"
    d.max_response_len = 96  # solutions/rollouts are cut at this many tokens
    d.step_delimiter = "\n"  # text that ends one reasoning step
    d.skip_bad_records = False  # skip (and count) malformed records instead of failing
    return d


def mesh_config() -> ml_collections.ConfigDict:
    """Device mesh (data, fsdp, tensor); -1 takes all remaining devices."""
    m = ml_collections.ConfigDict()
    m.data = -1
    m.fsdp = 1
    m.tensor = 1
    m.rules = DEFAULT_RULES  # logical axis -> mesh axes
    return m


def checkpoint_config() -> ml_collections.ConfigDict:
    """Orbax checkpointing of every stage's state."""
    c = ml_collections.ConfigDict()
    c.every_steps = 50  # save every N training steps (and on SIGTERM and at the end)
    c.keep = 2  # checkpoints kept
    return c


def sampler_config() -> ml_collections.ConfigDict:
    """Decoding for rollouts, Monte-Carlo labels and sampled evaluation."""
    s = ml_collections.ConfigDict()
    s.temperature = 1.0
    s.top_k = 0  # 0 = off
    s.top_p = 1.0  # 1.0 = off
    s.batch_size = 64  # prompts decoded at once
    s.decode_block = 128  # new tokens per decode segment (jaxstep.models.sampler.decode_segments); 0 = one loop over the whole cache
    return s


def distributed_config() -> ml_collections.ConfigDict:
    """Multi-host: left empty, jax.distributed is initialised from the environment (TPU, SLURM)."""
    d = ml_collections.ConfigDict()
    d.enabled = False  # force jax.distributed.initialize() even with no environment hints
    d.coordinator_address = ""  # host:port of process 0
    d.num_processes = 0
    d.process_id = -1
    return d


def sft_config() -> ml_collections.ConfigDict:
    """Stage sft: next-token loss on reference solutions (loss on the solution only)."""
    s = ml_collections.ConfigDict()
    s.init_from = ""  # HF folder/hub name to fine-tune; "" = model.hf_path, else the tiny model from scratch
    s.steps = 500  # optimizer steps
    s.batch_size = 32  # global batch (sequences per step, split over the mesh's data axes)
    s.microbatch_size = 0  # >0: accumulate gradients over microbatches of this many sequences (must divide batch_size; one optimizer step); 0 = none
    s.learning_rate = 5e-3  # peak AdamW learning rate
    s.end_lr_ratio = 0.1  # cosine decay ends at learning_rate * end_lr_ratio
    s.warmup_steps = 30  # linear warmup from 0 to learning_rate
    s.weight_decay = 0.01  # AdamW decoupled weight decay (not on norms and biases)
    s.b1 = 0.9  # AdamW beta1
    s.b2 = 0.98  # AdamW beta2
    s.grad_clip = 1.0  # global gradient-norm clip (0 = off)
    s.max_len = 0  # tokens per training sequence; 0 = data.max_prompt_len + data.max_response_len
    s.redundant_fraction = 0.0  # share of train solutions written with one step repeated (a correct but unnecessary step: jaxstep.data.step_checks.with_redundant_solutions)
    s.eval_every = 250  # greedy accuracy on a slice of the eval set every N steps (0 = only at the end)
    s.eval_limit = 100  # problems in that periodic eval (0 = no eval at all)
    s.log_every = 25  # metrics line every N steps
    s.export = True  # write <workdir>/export (HF folder + tokenizer) at the end
    return s


def eval_config() -> ml_collections.ConfigDict:
    """Stage eval: greedy (and optional sampled pass@k) accuracy on the eval sets."""
    e = ml_collections.ConfigDict()
    e.model = ""  # HF folder (or hub name) of the policy to evaluate ("" = <workdir>/../sft/export)
    e.label = ""  # name of the evaluated model in the report ("" = the folder name)
    e.sources = "synthetic"  # comma list: synthetic | gsm8k | math | math500 | a local file
    e.split = "test"  # split of every source (MATH500 only has test)
    e.limit = 400  # problems per set (0 = all)
    e.max_new_tokens = 96  # generation budget per solution
    e.pass_k = 0  # >0: also sample k solutions per problem (sampler.temperature/top_k/top_p) and report pass@k
    e.batch_size = 128  # prompts decoded at once (rounded up to a multiple of the data-parallel size)
    e.plots = True  # write PNG plots next to report.md
    return e


def rm_config() -> ml_collections.ConfigDict:
    """Stages orm/prm: reward models on a decoder backbone with a scalar head."""
    r = ml_collections.ConfigDict()
    r.kind = "prm"  # used when config.stage is neither orm nor prm (the stage name wins): orm | prm
    r.generator = ""  # HF folder of the generator that samples solutions ("" = <workdir>/../sft/export if present)
    r.init_from = ""  # backbone init: HF folder ("" = the generator; neither: config.model from scratch); backbone=deberta: a DeBERTa-v2/v3 HF folder or hub name (required)
    r.backbone = "decoder"  # decoder (the generator's decoder + scalar head) | deberta (DeBERTa encoder ORM/PRM heads, own tokenizer; jaxstep.models.deberta_heads)
    r.block_causal = True  # backbone=deberta, prm: block-causal attention over steps (a step's score sees only the question and steps up to it)
    r.likelihood_feature = False  # prm (ignored by orm): add weight * (step log-likelihood under the backbone's LM head) to the head's logit
    r.lm_loss_weight = 0.0  # prm with likelihood_feature: + weight * next-token loss on correct steps (joint objective)
    # Training data.
    r.labels = "exact"  # prm labels: exact (synthetic) | prm800k | montecarlo
    r.loss = "bce"  # prm loss: bce (per step) | bt (Bradley-Terry between alternatives of one step)
    r.label_rule = "reference"  # exact labels: reference (right arithmetic, a computation of the reference solution) | valid (right arithmetic on known numbers)
    r.corrupted_per_problem = 0.0  # exact/orm on synthetic: share of training problems that also get a corrupted reference
    r.references_per_problem = 0.0  # ... and the reference solution itself (contrast pairs for the same problem)
    r.corruption_kinds = ""  # comma list of synthetic corruption kinds for those (arithmetic,operand,skip,repeat); "" = all
    r.contrast_problems = 0  # how many train problems get those (0 = the sampled ones); they cost no sampling
    r.min_class_fraction = 0.2  # exact/orm on synthetic: add corrupted (or reference) solutions until each class has this share
    r.orm_labels = "samples"  # orm labels: samples (the generator's, graded; or rm.solutions_path) | prm800k (PRM800K solutions graded by final answer)
    r.prm800k_path = ""  # PRM800K jsonl file or folder for labels=prm800k or orm_labels=prm800k
    r.neutral_is_positive = True  # PRM800K rating 0 counts as a correct step
    r.solutions_path = ""  # orm: pre-labelled solutions (e.g. GSM8K example_model_solutions.jsonl) instead of sampling
    r.eval_fraction = 0.2  # prm800k / solutions_path: share of problems held out for the step/outcome AUC
    r.samples_per_problem = 2  # generator samples per training problem
    r.num_problems = 1024  # training problems to sample from (records to read for solutions_path; 0 = all)
    r.mc_samples = 4  # montecarlo: completions per step prefix
    r.mc_mode = "hard"  # montecarlo label: hard (any completion correct) | soft (fraction correct)
    r.mc_chunk = 16  # montecarlo: solutions labelled per batched sampler call (and per cache append)
    r.pairs_per_problem = 16  # bt with exact/montecarlo labels: at most this many step pairs per problem
    # Optimisation (AdamW, linear warmup then cosine decay).
    r.steps = 150  # optimizer steps (CPU default: ~1 min on 2 cores)
    r.batch_size = 32  # global batch: solutions (bce) or step pairs (bt) per step
    r.microbatch_size = 0  # >0: accumulate gradients over microbatches of this many rows (must divide batch_size); 0 = none
    r.learning_rate = 1e-3  # peak learning rate
    r.end_lr_ratio = 0.1  # cosine decay ends at learning_rate * end_lr_ratio
    r.warmup_steps = 15  # linear warmup steps
    r.weight_decay = 0.01  # AdamW decoupled weight decay (matrices only)
    r.b1 = 0.9  # AdamW beta1
    r.b2 = 0.98  # AdamW beta2
    r.grad_clip = 1.0  # global gradient-norm clip (0 = off)
    r.max_len = 0  # tokens per training sequence; 0 = data.max_prompt_len + data.max_response_len
    r.log_every = 25  # metrics line every N steps
    r.export = True  # write <workdir>/export (HF backbone + score.safetensors + reward_model.json)
    # Evaluation (report.md).
    r.eval_problems = 96  # held-out problems (data.eval_sources, test split) for AUC and best-of-N (0 = off)
    r.best_of_n = 8  # generator samples per held-out problem
    r.eval_temperature = 0.7  # sampling temperature of those samples (0 = sampler.temperature)
    r.eval_batch_size = 128  # sequences scored at once
    r.compare_with = ""  # comma list of other reward-model folders to rerank with in the same report
    return r


def ppo_config() -> ml_collections.ConfigDict:
    """Stage ppo: PPO on reward-model rewards (defaults from the paper: KL 0.1,
    clip 0.2, eta 0.8). Reward of a response: `alpha * scheme(RM scores) + success_coef *
    success - kl_coef * KL`, token-level (see jaxstep/rewards/shaping.py)."""
    p = ml_collections.ConfigDict()
    # Inputs.
    p.policy = ""  # HF folder of the SFT policy (also the frozen reference); "" = <workdir>/../sft/export
    p.reward_model = ""  # reward-model folder (train/reward_models.py export, or a public HF reward model: *ForSequenceClassification ORM, *ForTokenClassification PRM, Math-Shepherd *ForCausalLM PRM); "" = <workdir>/../<orm|prm>/export
    p.outcome_reward_model = ""  # second reward model, an ORM, added to a PRM scheme's reward when outcome_coef > 0; "" = <workdir>/../orm/export
    p.outcome_coef = 0.0  # weight of that ORM's score at the last token (0 = one reward model; the Clip/Delta recipe: 1)
    p.rm_step_tag = "ки"  # Math-Shepherd reward model (a *ForCausalLM folder): tag token written after each step, read there
    p.rm_good_token = "+"  # ... its "good step" token (step score = p(good) / (p(good) + p(bad)) at the tag)
    p.rm_bad_token = "-"  # ... its "bad step" token
    p.train_sources = ""  # prompt mix "source[:weight],..." (e.g. "gsm8k:0.5,math:0.5"); "" = data.train_sources
    p.num_prompts = 0  # prompts in the mix (0 = all the sources hold; synthetic: data.num_train)
    # Reward.
    p.scheme = "prm_max"  # orm | prm_avg | prm_prod | prm_min | prm_max | prm_dense | clip | delta | clip_delta
    p.alpha = 1.0  # weight on the reward-model (process or outcome) part
    p.eta = 0.8  # Clip threshold: r_k <- min(r_k - eta, 0)
    p.success_coef = 1.0  # weight of the 0/1 final-answer success reward at the last token (0 = off)
    p.max_steps = 16  # step slots per response (steps past it get no score and no reward)
    # KL to the reference (SFT) policy.
    p.kl_coef = 0.1  # beta (initial value when adaptive)
    p.kl_estimator = "k1"  # k1: -beta * (logp - logp_ref) in the token rewards | k3: beta * k3 as a loss term
    p.adaptive_kl = False  # adapt beta towards target_kl (Ziegler et al.; k1 only)
    p.target_kl = 6.0  # adaptive target: mean per-sequence summed KL
    p.kl_horizon = 10000  # adaptive horizon in samples
    # PPO losses.
    p.clip_eps = 0.2  # policy ratio clip
    p.value_clip = 0.2  # value clip around the rollout values (0 = unclipped value loss)
    p.entropy_coef = 0.0  # entropy bonus weight
    p.gamma = 1.0  # GAE discount
    p.lam = 0.95  # GAE lambda
    p.advantage = "gae"  # advantage estimator (jaxstep/rl/advantages.py): gae (the critic's GAE) | grpo | rloo | dr_grpo | reinforce_pp | grpo_process; all but gae are critic-free (no critic is built); grpo, rloo, dr_grpo, grpo_process need samples_per_prompt >= 2
    p.loss_aggregation = ""  # policy-loss reduction: token_mean | seq_mean_token_mean | seq_mean_token_sum_norm; "" = the estimator's paper's (advantages.ESTIMATORS; gae: token_mean)
    p.whiten_advantages = True  # normalise advantages over the batch's response tokens
    p.normalize_rewards = False  # divide token rewards by the std of the per-sequence reward sums
    # Optimisation.
    p.steps = 40  # PPO iterations (rollout + update)
    p.rollout_batch = 64  # responses per iteration, global
    p.samples_per_prompt = 1  # responses sampled per prompt (rollout_batch / samples_per_prompt prompts)
    p.epochs = 1  # passes over each rollout batch
    p.minibatches = 2  # minibatches per epoch (must divide rollout_batch)
    p.microbatch_size = 0  # >0: accumulate each minibatch's policy/critic gradients over microbatches of this many rows (must divide rollout_batch / minibatches; one optimizer step per minibatch); 0 = none
    p.learning_rate = 1e-5  # policy Adam learning rate (constant after warmup)
    p.critic_learning_rate = 1e-4  # critic Adam learning rate
    p.warmup_steps = 0  # linear learning-rate warmup (iterations)
    p.end_lr_ratio = 1.0  # after the warmup the policy's and critic's rates decay linearly to rate * this at the last iteration (1.0 = constant)
    p.critic_warmup_steps = 0  # first iterations train the critic only (policy learning rate 0)
    p.b1 = 0.9  # Adam beta1
    p.b2 = 0.95  # Adam beta2
    p.grad_clip = 1.0  # global gradient-norm clip, per model (0 = off)
    p.critic_init = "reward_model"  # critic initialisation: reward_model | policy (the SFT backbone, fresh head)
    p.critic_zero_head = False  # start the critic's value head at 0 (values 0) instead of the source model's head
    p.temperature = 0.0  # rollout sampling temperature (0 = sampler.temperature); logprobs, KL and ratios use logits / temperature
    p.recompute_logprobs = False  # recompute rollout logprobs with a full forward (forced for top-k/top-p/non-f32)
    p.max_consecutive_skips = 10  # stop when this many iterations in a row had non-finite losses (0 = never)
    # Evaluation, logging, export.
    p.eval_every = 0  # greedy accuracy on eval_limit problems every N iterations (0 = only at the end)
    p.eval_limit = 200  # problems in that eval (data.eval_sources, test split; 0 = no eval in the stage)
    p.log_every = 1  # metrics line every N iterations (hacking statistics included)
    p.export = True  # write <workdir>/export (HF folder of the final policy)
    return p


def pipeline_config() -> ml_collections.ConfigDict:
    """Stage pipeline (the main job): sft -> reward model -> ppo -> eval of both -> report.

    Every stage runs in `<workdir>/<name>` with this config (stage set); a stage whose
    summary.json exists is reused when its recorded run_config.json matches (`jaxstep.workdir`).
    A given `ppo.policy` / `ppo.reward_model` skips the stage that would produce it.
    """
    p = ml_collections.ConfigDict()
    p.eval_limit = 1000  # test problems per eval set in the final evals (0 = whole split)
    p.eval_batch_size = 250  # prompts decoded at once in the final evals
    p.seeds = 1  # PPO runs with seeds seed, seed+1, ... on the same SFT/RM (uncertainty over seeds)
    return p


def sweep_config() -> ml_collections.ConfigDict:
    """Stage sweep: several reward schemes on one SFT policy and one PRM (and ORM)."""
    s = ml_collections.ConfigDict()
    s.schemes = "orm,prm_max,prm_min,clip_delta"  # comma list of ppo.scheme values
    s.seeds = 1  # PPO runs per scheme (seed, seed+1, ...)
    s.estimators = ""  # comma list of ppo.advantage values: every scheme runs with each (folders ppo_<scheme> for gae, ppo_<scheme>_<estimator> else); "" = ppo.advantage, the experiment's own
    s.single_sources = ""  # comma list of prompt sources: sweep.single_source_scheme also runs on each one's prompts alone (ppo_<scheme>_on_<source>), e.g. "synthetic_easy,synthetic_hard"
    s.single_source_scheme = "prm_max"  # the scheme of those runs
    s.prm = ""  # PRM folder for the PRM schemes; "" = train it in <workdir>/prm
    s.orm = ""  # ORM folder for the orm scheme; "" = train it in <workdir>/orm (same SFT policy)
    return s


def plan_config() -> ml_collections.ConfigDict:
    """Stage plan: compile the experiment's programs ahead of time for a TPU slice, NVIDIA
    GPUs (or cpu-N) from abstract shapes and report per-chip memory, fits-in-HBM and FLOPs."""
    p = ml_collections.ConfigDict()
    p.topology = "v5e-8"  # accelerator type (v4-8, v5e-8, v5p-8, v6e-8, v5e:2x4, ...), h100-N / h200-N GPUs, or cpu-N
    p.gpu_target_config = ""  # GPUs: a GpuTargetConfigProto text file describing them ("" = jaxstep.parallel.gpu_targets.GPUS)
    p.programs = "sft,rm,sampler,scorer,update"  # comma list of programs to compile
    p.rm_steps = 32  # step slots per reward-model training row (prm; orm uses 1)
    p.fail_on_oom = True  # exit non-zero when a program does not fit
    return p


def base_config(name: str, stage: str) -> ml_collections.ConfigDict:
    """Fields every stage reads, plus every stage's section (the chain runs them all)."""
    c = ml_collections.ConfigDict()
    c.name = name  # run name; the default workdir is runs/<name>
    c.stage = stage  # sft | eval | orm | prm | ppo | pipeline | sweep | plan
    c.seed = 0  # every random choice derives from this
    c.overwrite = False  # a run folder holding another config's work is moved aside (<folder>.old-<n>, never deleted) and the stage runs afresh; False = stop with an error (jaxstep.workdir)
    c.workdir = ""  # "" = the --workdir flag, else runs/<name>
    c.model = model_config()
    c.data = data_config()
    c.mesh = mesh_config()
    c.checkpoint = checkpoint_config()
    c.sampler = sampler_config()
    c.distributed = distributed_config()
    c.sft = sft_config()
    c.eval = eval_config()
    c.rm = rm_config()
    c.ppo = ppo_config()
    c.pipeline = pipeline_config()
    c.sweep = sweep_config()
    c.plan = plan_config()
    return c
