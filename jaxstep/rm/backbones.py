"""Reward-model backbones other than the generator's decoder (`rm.backbone`).

    model, params, tokenizer = deberta_reward_model(config, "prm", key)

`rm.backbone = "deberta"`: a DeBERTa-v2/v3 encoder from `rm.init_from` (a local HF folder
or a hub name, e.g. microsoft/deberta-v3-large) with the ORM or PRM head of
`jaxstep.models.deberta_heads` (fresh, as transformers initialises task heads), and the
folder's own tokenizer (a sentencepiece DeBERTa tokenizer: step ends through character
offsets, `jaxstep.data.step_offsets`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxstep import paths
from jaxstep.data import tokenizer as tokenizer_lib
from jaxstep.data.hub import resolve_path
from jaxstep.models import deberta_hf, deberta_heads

BACKBONES = ("decoder", "deberta")  # rm.backbone


def deberta_reward_model(config, kind: str, key: jax.Array):
    """`(DebertaRewardModel, params, tokenizer)` from `config.rm.init_from`.

    Params are float32 (training master weights); the model computes in
    `config.model.dtype`, rematerialises its layers unless `config.model.remat` is
    "none", and its PRM attention is block-causal over steps (`rm.block_causal`).
    """
    r = config.rm
    if not r.init_from:
        raise ValueError("rm.backbone='deberta' needs rm.init_from: a DeBERTa-v2/v3 HF folder or hub name")
    folder = resolve_path(paths.local_copy(r.init_from))
    encoder, encoder_params = deberta_hf.load(folder, dtype=jnp.dtype(config.model.dtype), param_dtype=jnp.float32)
    if not (tokenizer_lib.has_tokenizer(str(folder)) or (folder / "spm.model").is_file()):
        raise ValueError(f"rm.init_from={r.init_from}: {folder} has no tokenizer files (spm.model or "
                         "tokenizer.json); a DeBERTa reward model reads text with its own tokenizer")
    tokenizer = tokenizer_lib.load_tokenizer(str(folder))
    if len(tokenizer) > encoder.config.vocab_size:
        raise ValueError(f"{folder}: the encoder's vocabulary has {encoder.config.vocab_size} rows but its "
                         f"tokenizer has {len(tokenizer)} tokens")
    remat = (config.model.get("remat", "none") or "none") != "none"
    model, params = deberta_heads.init_from_encoder(encoder, encoder_params, kind, key,
                                                    block_causal=bool(r.get("block_causal", True)), remat=remat)
    return model, params, tokenizer

