"""Hugging Face I/O for the DeBERTa-v2/v3 encoder (`model_type` "deberta-v2").

    model, params = jaxstep.models.deberta_hf.load(path)          # or jaxstep.models.hf.load
    jaxstep.models.deberta_hf.save(path, model, params, tokenizer=None)

`load` reads a local folder (config.json + `model.safetensors`, a sharded index, or
`pytorch_model.bin` when torch is installed). Tensor names may be those of
`DebertaV2Model` (`embeddings.*`, `encoder.*`) or carry the `deberta.` prefix of the
task models (e.g. `DebertaV2ForSequenceClassification`); head tensors (pooler,
classifier, LM heads) are ignored. `save` writes a folder that
`transformers.DebertaV2Model.from_pretrained` loads with equal outputs, plus the
tokenizer files when a tokenizer is given. Sentencepiece tokenizer folders (`spm.model`)
load with `jaxstep.data.tokenizer.load_tokenizer` / `transformers.AutoTokenizer`
(needs the `sentencepiece` and `protobuf` packages).
"""
from __future__ import annotations

import json
import logging
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from jaxstep.models import keymaps
from jaxstep.models.deberta import MODEL_TYPE, DebertaConfig, DebertaEncoder
from jaxstep.data.hub import resolve_path
from jaxstep.models.hf_files import SAFE_INDEX, SAFE_SINGLE, get_path, read_config_json, save_tokenizer, set_path, tensor_reader
from jaxstep.models.params import abstract_params

log = logging.getLogger(__name__)

Entry = tuple[str, tuple[str, ...], object]
PREFIX = "deberta."
# Tensors of task heads and buffers that the encoder does not use.
IGNORED_PREFIXES = ("pooler.", "classifier.", "lm_predictions.", "mask_predictions.", "cls.",
                    "qa_outputs.", "embeddings.position_ids")


def key_map(cfg: DebertaConfig) -> list[Entry]:
    """Every `(hf_key, our_path, kind)` of `DebertaV2Model` (kinds as in `keymaps`)."""
    lin1, lin2, vec, copy = ("linear", 1), ("linear", 2), "bias", "copy"
    p = lambda s: tuple(s.split("/"))  # noqa: E731

    def norm(hf: str, ours: str) -> list[Entry]:
        return [(f"{hf}.weight", p(f"{ours}/scale"), vec), (f"{hf}.bias", p(f"{ours}/bias"), vec)]

    e = "embeddings"
    entries: list[Entry] = [(f"{e}.word_embeddings.weight", p("embed/embedding"), copy)]
    if cfg.position_biased_input:
        entries.append((f"{e}.position_embeddings.weight", p("pos_embed"), copy))
    if cfg.type_vocab_size > 0:
        entries.append((f"{e}.token_type_embeddings.weight", p("type_embed"), copy))
    if cfg.embedding_size != cfg.hidden_size:
        entries.append((f"{e}.embed_proj.weight", p("embed_proj/kernel"), lin1))
    entries += norm(f"{e}.LayerNorm", "embed_norm")
    if cfg.relative_attention:
        entries.append(("encoder.rel_embeddings.weight", p("rel_embed"), copy))
        if cfg.rel_norm:
            entries += norm("encoder.LayerNorm", "rel_norm")
    if cfg.conv_kernel_size > 0:
        entries += [("encoder.conv.conv.weight", p("conv/kernel"), copy),
                    ("encoder.conv.conv.bias", p("conv/bias"), vec)]
        entries += norm("encoder.conv.LayerNorm", "conv/norm")
    projections = [("query_proj", "q_proj"), ("key_proj", "k_proj"), ("value_proj", "v_proj")]
    if cfg.relative_attention and not cfg.share_att_key:
        if cfg.c2p:
            projections.append(("pos_key_proj", "pos_k_proj"))
        if cfg.p2c:
            projections.append(("pos_query_proj", "pos_q_proj"))
    for i in range(cfg.num_layers):
        hf, ours = f"encoder.layer.{i}", f"layers_{i}"
        for hf_name, name in projections:
            entries += [(f"{hf}.attention.self.{hf_name}.weight", p(f"{ours}/attn/{name}/kernel"), lin1),
                        (f"{hf}.attention.self.{hf_name}.bias", p(f"{ours}/attn/{name}/bias"), vec)]
        entries += [(f"{hf}.attention.output.dense.weight", p(f"{ours}/attn/o_proj/kernel"), lin2),
                    (f"{hf}.attention.output.dense.bias", p(f"{ours}/attn/o_proj/bias"), vec)]
        entries += norm(f"{hf}.attention.output.LayerNorm", f"{ours}/attn_norm")
        for hf_name, name in (("intermediate.dense", "up_proj"), ("output.dense", "down_proj")):
            entries += [(f"{hf}.{hf_name}.weight", p(f"{ours}/{name}/kernel"), lin1),
                        (f"{hf}.{hf_name}.bias", p(f"{ours}/{name}/bias"), vec)]
        entries += norm(f"{hf}.output.LayerNorm", f"{ours}/mlp_norm")
    return entries


def canonical_key(key: str) -> str:
    """Drops the `deberta.` prefix; old LayerNorm names `gamma`/`beta` -> `weight`/`bias`."""
    key = key.removeprefix(PREFIX)
    if key.endswith(".gamma"):
        key = key[:-len(".gamma")] + ".weight"
    elif key.endswith(".beta"):
        key = key[:-len(".beta")] + ".bias"
    return key


def load_config(path: str | os.PathLike, dtype=jnp.float32, param_dtype=None) -> DebertaConfig:
    """`DebertaConfig` from `<path>/config.json` with compute `dtype` and `param_dtype`."""
    config_file = pathlib.Path(path) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file}: not found (expected an HF model folder).")
    config = DebertaConfig.from_hf_dict(read_config_json(config_file), source=str(config_file))
    return config.replace(dtype=jnp.dtype(dtype).name,
                          param_dtype=jnp.dtype(param_dtype or dtype).name)


def params_from_tensors(config: DebertaConfig, keys, get, source: str = "checkpoint") -> dict:
    """Our params from HF tensors: `keys` (HF names, with or without `deberta.`) and
    `get(key) -> np.ndarray`. Errors name `source` and the offending key."""
    shapes = abstract_params(DebertaEncoder(config))
    available: dict[str, str] = {}
    for key in keys:
        canonical = canonical_key(key)
        # A DebertaV2Model key wins over a prefixed one (a checkpoint should not have both).
        if canonical not in available or not key.startswith(PREFIX):
            available[canonical] = key
    np_dtype = np.dtype(config.params_dtype)
    params: dict = {}
    used = set()
    for hf_key, our_path, kind in key_map(config):
        if hf_key not in available:
            raise KeyError(f"{source}: tensor {hf_key!r} (or {PREFIX + hf_key!r}) missing from "
                           f"the checkpoint (model_type={MODEL_TYPE}).")
        raw = np.asarray(get(available[hf_key]))
        try:
            value = keymaps.to_ours(raw, kind, get_path(shapes, our_path).shape)
        except ValueError as e:
            raise ValueError(f"{source}: tensor {available[hf_key]!r}: {e}") from None
        set_path(params, our_path, jnp.asarray(value.astype(np_dtype)))
        used.add(hf_key)
    unused = [available[k] for k in available if k not in used
              and not k.startswith(IGNORED_PREFIXES)
              and not (k == "embeddings.position_embeddings.weight"  # transformers ignores it too
                       and not config.position_biased_input)
              and not (k.startswith("encoder.LayerNorm.") and not config.relative_attention)]
    if unused:
        log.warning("%s: %d checkpoint tensors not used, e.g. %s", source, len(unused), unused[:5])
    return params


def load(path: str | os.PathLike, dtype=jnp.float32, param_dtype=None) -> tuple[DebertaEncoder, dict]:
    """Loads a local HF DeBERTa-v2/v3 folder as `(DebertaEncoder, params)`.

    Args:
      path: folder with config.json (model_type deberta-v2) and the weights.
      dtype: compute dtype of the returned model.
      param_dtype: dtype the params are stored in (default: `dtype`).
    """
    folder = resolve_path(path)
    config = load_config(folder, dtype, param_dtype)
    keys, get = tensor_reader(folder)
    return DebertaEncoder(config), params_from_tensors(config, keys, get, source=str(folder))


def save(path: str | os.PathLike, model: DebertaEncoder | DebertaConfig, params: dict,
         tokenizer=None, *, prefix: str = "", extra_tensors: dict | None = None,
         extra_config: dict | None = None) -> pathlib.Path:
    """Writes config.json + model.safetensors (`DebertaV2Model` names) into `path`.

    Args:
      path: output folder (created).
      model: the `DebertaEncoder` (or its `DebertaConfig`).
      params: its params (written in `config.param_dtype`; gathered to host).
      tokenizer: a transformers tokenizer (e.g. `DebertaV2Tokenizer`) or a
        `tokenizers.Tokenizer`, saved alongside.
      prefix: prepended to every encoder tensor name (`"deberta."` for a task model).
      extra_tensors: more HF tensors (a task head, e.g. `classifier.weight`), written as given.
      extra_config: config.json fields that override or extend the encoder's
        (`architectures`, `num_labels`, ...).

    Returns the folder.
    """
    from safetensors.numpy import save_file

    config = model if isinstance(model, DebertaConfig) else model.config
    folder = pathlib.Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    np_dtype = np.dtype(config.params_dtype)
    tensors: dict[str, np.ndarray] = {}
    for hf_key, our_path, kind in key_map(config):
        value = np.asarray(jax.device_get(get_path(params, our_path))).astype(np_dtype)
        tensors[prefix + hf_key] = keymaps.to_hf(value, kind)
    if config.rel_norm and not config.relative_attention:
        # transformers creates this (unused) LayerNorm anyway; write its identity values.
        tensors[prefix + "encoder.LayerNorm.weight"] = np.ones(config.hidden_size, np_dtype)
        tensors[prefix + "encoder.LayerNorm.bias"] = np.zeros(config.hidden_size, np_dtype)
    tensors.update({k: np.ascontiguousarray(v) for k, v in (extra_tensors or {}).items()})
    with open(folder / "config.json", "w", encoding="utf-8") as f:
        json.dump({**config.to_hf_dict(), **(extra_config or {})}, f, indent=2)
    (folder / SAFE_INDEX).unlink(missing_ok=True)
    save_file(tensors, str(folder / SAFE_SINGLE), metadata={"format": "pt"})
    if tokenizer is not None:
        save_tokenizer(folder, tokenizer)
    return folder
