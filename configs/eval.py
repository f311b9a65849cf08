"""Stage eval: greedy (and optional sampled pass@k) accuracy of a policy.

    python -m jaxstep.main --config=configs/eval.py --workdir=runs/eval \
        --config.eval.model=runs/sft/export
    python -m jaxstep.main --config=configs/eval.py:paper --workdir=runs/eval_paper \
        --config.eval.model=runs/sft_paper/export

Presets:
  ""     the first 400 synthetic test problems (CPU, well under a minute).
  paper  GSM8K test, MATH test and MATH500, whole sets, 512-token prompts and solutions.

Writes report.md, samples.jsonl and PNG plots in the workdir. Every field is documented
in jaxstep/config_lib.py; only the overrides are here.
"""
from jaxstep import config_lib


def get_config(arg: str = ""):
    preset = arg or "cpu"
    c = config_lib.base_config("eval", "eval")
    if preset == "cpu":
        return c
    if preset == "paper":
        c.model.dtype = "bfloat16"
        c.data.max_prompt_len = 512
        c.mesh.data = 1
        c.mesh.fsdp = -1
        c.eval.sources = "gsm8k,math,math500"
        c.eval.limit = 0
        c.eval.max_new_tokens = 512
        c.eval.batch_size = 64
        return c
    raise ValueError(f"configs/eval.py: unknown preset {arg!r}; expected '' (cpu) or 'paper'")
