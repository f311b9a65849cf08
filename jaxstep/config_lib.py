"""Shared config sections for the experiment files in `configs/`.

Every experiment is one ml_collections file in `configs/` whose `get_config(arg)`
builds on `base_config()` here and overrides what it studies; presets come after a
colon: `--config=configs/ppo_prm_max.py:paper`. The preset with no name ("" or
"cpu") runs on a laptop CPU in minutes on built-in synthetic data; `paper` is the
real-scale experiment. Every field is documented where it is defined.
"""
from __future__ import annotations

import ml_collections

# MaxText-style logical-axis rules: (logical axis name, mesh axis or axes or None).
# Parameters and activations carry logical names; these rules map them to mesh axes.
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("vocab", "tensor"),
)


def model_config() -> ml_collections.ConfigDict:
    """The generator (policy) model: a built-in tiny decoder or an HF checkpoint."""
    m = ml_collections.ConfigDict()
    m.hf_path = ""  # local HF folder or hub name; "" = build the tiny model below from scratch
    m.dtype = "float32"  # compute dtype; keep float32 on CPU, "bfloat16" on TPU/GPU
    m.arch = "qwen2"  # tiny model family when training from scratch: qwen2 | llama | opt
    m.hidden_size = 128
    m.num_layers = 4
    m.num_heads = 4
    m.num_kv_heads = 2
    m.intermediate_size = 344
    m.max_position_embeddings = 512
    m.rope_theta = 10000.0
    m.tie_word_embeddings = True
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
    d.synthetic_max_steps = 4
    d.synthetic_max_value = 20  # largest operand in synthetic problems
    d.tokenizer = ""  # HF tokenizer folder; "" = train a tiny BPE on the synthetic corpus
    d.tokenizer_vocab_size = 256  # size of the tiny BPE tokenizer
    d.max_prompt_len = 64  # prompts are left-padded to this many tokens (truncated left)
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
    return s


def distributed_config() -> ml_collections.ConfigDict:
    """Multi-host: left empty, jax.distributed is initialised from the environment (TPU, SLURM)."""
    d = ml_collections.ConfigDict()
    d.enabled = False  # force jax.distributed.initialize() even with no environment hints
    d.coordinator_address = ""  # host:port of process 0
    d.num_processes = 0
    d.process_id = -1
    return d


def base_config(name: str, stage: str) -> ml_collections.ConfigDict:
    """Fields every stage reads."""
    c = ml_collections.ConfigDict()
    c.name = name  # run name; the default workdir is runs/<name>
    c.stage = stage  # sft | eval | orm | prm | ppo | pipeline | sweep
    c.seed = 0  # every random choice derives from this
    c.workdir = ""  # "" = the --workdir flag, else runs/<name>
    c.model = model_config()
    c.data = data_config()
    c.mesh = mesh_config()
    c.checkpoint = checkpoint_config()
    c.sampler = sampler_config()
    c.distributed = distributed_config()
    return c
