"""Stage sft: supervised fine-tuning of the generator on reference solutions.

    python -m jaxstep.main --config=configs/sft.py --workdir=runs/sft         # CPU, ~2-3 min
    python -m jaxstep.main --config=configs/sft.py:paper --workdir=runs/sft   # Qwen2-1.5B, GSM8K + MATH

Presets:
  ""     the tiny Llama-style decoder (0.76M params) from scratch on synthetic
         arithmetic problems (operands <= 10, 2-3 steps): 500 steps of 32 sequences,
         about 210 CPU-seconds (~2-2.5 min on an idle 2-core CPU). Greedy accuracy on
         the 400 synthetic test problems: 25.0% (30% on 2-step, 21% on 3-step
         problems), so RL has room.
  paper  fine-tunes an HF checkpoint (`model.hf_path`, a local folder or hub name) on
         GSM8K + MATH train, evaluated on a MATH500 slice.

Every field is documented in jaxstep/config_lib.py; only the overrides are here.
"""
from jaxstep import config_lib


def get_config(arg: str = ""):
    preset = arg or "cpu"
    c = config_lib.base_config("sft", "sft")
    if preset == "cpu":
        return c
    if preset == "paper":
        c.model.hf_path = "Qwen/Qwen2-1.5B"
        c.model.dtype = "bfloat16"
        c.data.train_sources = "gsm8k,math"
        c.data.eval_sources = "math500"
        c.data.num_train = 0
        c.data.max_prompt_len = 512
        c.data.max_response_len = 512
        c.mesh.data = 1
        c.mesh.fsdp = -1
        c.sft.steps = 700  # ~3 epochs of the 15k GSM8K + MATH train problems
        c.sft.batch_size = 64
        c.sft.learning_rate = 1e-5
        c.sft.end_lr_ratio = 0.0
        c.sft.warmup_steps = 30
        c.sft.weight_decay = 0.0
        c.sft.b2 = 0.95
        c.sft.eval_every = 200
        c.sft.eval_limit = 100
        c.sft.log_every = 10
        c.checkpoint.every_steps = 100
        c.sampler.batch_size = 64
        return c
    raise ValueError(f"configs/sft.py: unknown preset {arg!r}; expected '' (cpu) or 'paper'")
