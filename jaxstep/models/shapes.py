"""Model shapes as data: the architecture of a run's models without their weights.

    cfg = model_config(config, path)    # a local config.json, a HUB_CONFIGS name, or the tiny model
    n = count_params(jaxstep.models.abstract_params(cfg))   # a DebertaConfig: of DebertaEncoder(cfg)

`HUB_CONFIGS` holds the config.json fields of the hub models the presets name
(`jaxstep.config_lib.presets.PAPER_MODEL`, the reference setups' OPT-1.3B and
Qwen1.5-1.8B policies, the DeBERTa-v3 reward-model encoders), as published on the Hugging
Face hub, so the plan stage sizes them with no download; a local folder's config.json
always wins. A DeBERTa-v2/v3 config (model_type deberta-v2) comes back as a
`jaxstep.models.deberta.DebertaConfig`; `deberta_reward_model` builds the ORM/PRM module
on it (`jaxstep.models.deberta_heads`).
"""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp

from jaxstep import paths
from jaxstep.models import deberta_heads
from jaxstep.models.config import ModelConfig, tiny
from jaxstep.models.deberta import MODEL_TYPE as DEBERTA_TYPE
from jaxstep.models.deberta import DebertaConfig

_QWEN2 = dict(model_type="qwen2", vocab_size=151936, max_position_embeddings=131072, rope_theta=1e6,
              rms_norm_eps=1e-6, tie_word_embeddings=True, hidden_act="silu", bos_token_id=151643,
              eos_token_id=151643)
_DEBERTA_V3 = dict(model_type="deberta-v2", vocab_size=128100, max_position_embeddings=512,
                   relative_attention=True, position_buckets=256, norm_rel_ebd="layer_norm", share_att_key=True,
                   pos_att_type=["p2c", "c2p"], layer_norm_eps=1e-7, max_relative_positions=-1,
                   position_biased_input=False, hidden_act="gelu", type_vocab_size=0, pad_token_id=0)


HUB_CONFIGS = {
    "Qwen/Qwen2-0.5B": dict(_QWEN2, hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                            num_key_value_heads=2, intermediate_size=4864),
    "Qwen/Qwen2-1.5B": dict(_QWEN2, hidden_size=1536, num_hidden_layers=28, num_attention_heads=12,
                            num_key_value_heads=2, intermediate_size=8960),
    "Qwen/Qwen2.5-1.5B": dict(_QWEN2, hidden_size=1536, num_hidden_layers=28, num_attention_heads=12,
                              num_key_value_heads=2, intermediate_size=8960),
    # Pan et al.'s generator and the Clip/Delta recipe's policy.
    "facebook/opt-1.3b": dict(model_type="opt", hidden_size=2048, ffn_dim=8192, num_attention_heads=32,
                              num_hidden_layers=24, vocab_size=50272, max_position_embeddings=2048,
                              word_embed_proj_dim=2048, do_layer_norm_before=True, activation_function="relu",
                              enable_bias=True, layer_norm_elementwise_affine=True, tie_word_embeddings=True,
                              bos_token_id=2, eos_token_id=2, pad_token_id=1),
    "Qwen/Qwen1.5-1.8B": dict(_QWEN2, hidden_size=2048, intermediate_size=5504, num_attention_heads=16,
                              num_key_value_heads=16, num_hidden_layers=24, max_position_embeddings=32768,
                              tie_word_embeddings=False),
    # A 7B policy for the plan (README).
    "Qwen/Qwen2-7B": dict(_QWEN2, hidden_size=3584, intermediate_size=18944, num_attention_heads=28,
                          num_key_value_heads=4, num_hidden_layers=28, vocab_size=152064,
                          tie_word_embeddings=False),
    # DeBERTa-v3 encoders of the reward models (`rm.backbone="deberta"`).
    "microsoft/deberta-v3-large": dict(_DEBERTA_V3, hidden_size=1024, num_hidden_layers=24,
                                       num_attention_heads=16, intermediate_size=4096),
    "microsoft/deberta-v3-base": dict(_DEBERTA_V3, hidden_size=768, num_hidden_layers=12,
                                      num_attention_heads=12, intermediate_size=3072),
}


def hf_config(path: str) -> tuple[dict, str]:
    """`(config.json dict, its source)` of `path`: a local folder's config.json (always
    wins), else the `HUB_CONFIGS` entry. Raises ValueError naming both for anything else."""
    file = paths.join(path, "config.json")
    if paths.isfile(file):  # a local folder or a bucket (gs://...)
        return json.loads(paths.read_text(file)), file
    if path in HUB_CONFIGS:
        return dict(HUB_CONFIGS[path]), f"jaxstep.models.shapes.HUB_CONFIGS[{path!r}]"
    raise ValueError(f"plan: no shapes for {path!r}: give a local folder with config.json or one "
                     f"of {sorted(HUB_CONFIGS)}")


def model_config(config, path: str) -> ModelConfig | DebertaConfig:
    """The architecture at `path` (local folder with config.json, or a `HUB_CONFIGS` name;
    "" = the tiny decoder of `config.model`), computing in `config.model.dtype`: a
    `DebertaConfig` for a DeBERTa-v2/v3 encoder (model_type deberta-v2), else a decoder's
    `ModelConfig`."""
    if path:
        return _from_hf_dict(config, *hf_config(path))
    m = config.model
    cfg = tiny(vocab_size=config.data.tokenizer_vocab_size, model_type=m.arch,
               hidden_size=m.hidden_size, num_layers=m.num_layers, num_heads=m.num_heads,
               num_kv_heads=m.num_kv_heads, intermediate_size=m.intermediate_size,
               max_position_embeddings=m.max_position_embeddings,
               tie_word_embeddings=m.tie_word_embeddings, rope_theta=m.rope_theta)
    return cfg.replace(dtype=jnp.dtype(m.dtype).name, param_dtype="float32")


def _from_hf_dict(config, d: dict, source: str) -> ModelConfig | DebertaConfig:
    """`model_config` of a config.json dict read from `source`."""
    cls = DebertaConfig if d.get("model_type") == DEBERTA_TYPE else ModelConfig
    return cls.from_hf_dict(d, source).replace(dtype=jnp.dtype(config.model.dtype).name, param_dtype="float32")


def is_deberta(cfg) -> bool:
    """Whether a `model_config` result is a DeBERTa encoder (a reward model with its own tokenizer)."""
    return isinstance(cfg, DebertaConfig)


def deberta_reward_model(config, path: str, kind: str, *, block_causal: bool = True, remat: bool = False,
                         fresh_head: bool = False) -> deberta_heads.DebertaRewardModel:
    """The DeBERTa ORM/PRM module (no weights) at `path`, as the stages build it.

    A folder with a task head (`DebertaV2ForSequenceClassification` / `...ForTokenClassification`:
    our reward-model exports and public folders, as `deberta_heads.load_hf` reads them)
    keeps its own kind, labels, pooler and block-causal flag; an encoder alone, or any
    folder with `fresh_head` (what the rm stage trains from `rm.init_from`,
    `jaxstep.rm.backbones`), gets a fresh `kind` head with `block_causal`.
    """
    d, source = hf_config(path)  # read once: its architecture and the encoder's shapes
    cfg = _from_hf_dict(config, d, source)
    if not is_deberta(cfg):
        raise ValueError(f"{source}: model_type {d.get('model_type')!r} is not a DeBERTa encoder "
                         f"({DEBERTA_TYPE})")
    if not fresh_head and (d.get("architectures") or [""])[0] in deberta_heads.ARCHITECTURES.values():
        return deberta_heads.module_from_hf_dict(cfg, d, source)
    return deberta_heads.DebertaRewardModel(cfg, kind=kind, block_causal=block_causal, remat=remat)


def model_paths(config) -> dict[str, str]:
    """Where each model's shapes come from: policy (SFT init / PPO policy), reward model
    (the PPO reward model, else what the rm stage trains from), rm_train (the rm stage's
    backbone: `rm.init_from` for a DeBERTa backbone) and orm (the second reward model of
    PRM + ORM: `ppo.outcome_reward_model`, else the rm stage's backbone)."""
    policy = config.sft.init_from or config.model.hf_path
    ppo_policy = config.ppo.policy or policy
    deberta = config.rm.get("backbone", "decoder") == "deberta"
    trained = config.rm.init_from if deberta else (config.rm.init_from or config.rm.generator or policy)
    rm = config.ppo.reward_model or trained
    return {"policy": ppo_policy if config.ppo.policy else policy, "rm": rm,
            "rm_train": trained if deberta else rm,  # (the decoder's rm program as before)
            "orm": config.ppo.outcome_reward_model or trained}


def count_params(abstract) -> int:
    return int(sum(x.size for x in jax.tree.leaves(abstract)))
