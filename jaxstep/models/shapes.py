"""Model shapes as data: the architecture of a run's models without their weights.

    cfg = model_config(config, path)    # a local config.json, a HUB_CONFIGS name, or the tiny model
    n = count_params(jaxstep.models.abstract_params(cfg))

`HUB_CONFIGS` holds the config.json fields of the hub models the presets name
(`jaxstep.config_lib.presets.PAPER_MODEL`), as published on the Hugging Face hub, so
the plan stage sizes them with no download; a local folder's config.json always wins.
"""
from __future__ import annotations

import json
import os

import jax

from jaxstep.models.config import ModelConfig, tiny

_QWEN2 = dict(model_type="qwen2", vocab_size=151936, max_position_embeddings=131072, rope_theta=1e6,
              rms_norm_eps=1e-6, tie_word_embeddings=True, hidden_act="silu", bos_token_id=151643,
              eos_token_id=151643)


HUB_CONFIGS = {
    "Qwen/Qwen2-0.5B": dict(_QWEN2, hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                            num_key_value_heads=2, intermediate_size=4864),
    "Qwen/Qwen2-1.5B": dict(_QWEN2, hidden_size=1536, num_hidden_layers=28, num_attention_heads=12,
                            num_key_value_heads=2, intermediate_size=8960),
    "Qwen/Qwen2.5-1.5B": dict(_QWEN2, hidden_size=1536, num_hidden_layers=28, num_attention_heads=12,
                              num_key_value_heads=2, intermediate_size=8960),
}


def model_config(config, path: str) -> ModelConfig:
    """The architecture at `path` (local folder with config.json, or a `HUB_CONFIGS` name;
    "" = the tiny decoder of `config.model`), computing in `config.model.dtype`."""
    m = config.model
    if not path:
        cfg = tiny(vocab_size=config.data.tokenizer_vocab_size, model_type=m.arch,
                          hidden_size=m.hidden_size, num_layers=m.num_layers, num_heads=m.num_heads,
                          num_kv_heads=m.num_kv_heads, intermediate_size=m.intermediate_size,
                          max_position_embeddings=m.max_position_embeddings,
                          tie_word_embeddings=m.tie_word_embeddings, rope_theta=m.rope_theta)
    elif os.path.isfile(os.path.join(path, "config.json")):
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            cfg = ModelConfig.from_hf_dict(json.load(f), os.path.join(path, "config.json"))
    elif path in HUB_CONFIGS:
        cfg = ModelConfig.from_hf_dict(HUB_CONFIGS[path], f"jaxstep.models.shapes.HUB_CONFIGS[{path!r}]")
    else:
        raise ValueError(f"plan: no shapes for {path!r}: give a local folder with config.json or one "
                         f"of {sorted(HUB_CONFIGS)}")
    return cfg.replace(dtype=m.dtype, param_dtype="float32")


def model_paths(config) -> dict[str, str]:
    """Where each model's shapes come from: policy (SFT init / PPO policy), reward model."""
    policy = config.sft.init_from or config.model.hf_path
    ppo_policy = config.ppo.policy or policy
    rm = config.ppo.reward_model or config.rm.init_from or config.rm.generator or policy
    return {"policy": ppo_policy if config.ppo.policy else policy, "rm": rm}


def count_params(abstract) -> int:
    return int(sum(x.size for x in jax.tree.leaves(abstract)))
