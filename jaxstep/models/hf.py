"""Hugging Face checkpoint import/export (config.json + safetensors).

    model, params = jaxstep.models.hf.load(path, dtype=jnp.float32)
    jaxstep.models.hf.save(path, model, params, tokenizer=None)

`load` reads a local folder (`model.safetensors`, or a sharded
`model.safetensors.index.json`; `pytorch_model.bin` only when torch is installed). A
path that does not exist is treated as a hub name and fetched with
`huggingface_hub.snapshot_download` (the only network access in this package).
`save` writes a folder that `transformers.AutoModelForCausalLM.from_pretrained` loads
with the same logits, plus the tokenizer files when a tokenizer is given.
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
from jaxstep.models.config import ModelConfig
from jaxstep.models.decoder import Decoder
from jaxstep.data.hub import resolve_path
from jaxstep.models import deberta_hf
from jaxstep.models.hf_files import (SAFE_INDEX, SAFE_SINGLE, get_path, read_config_json,
                                     save_tokenizer, set_path, tensor_reader)
from jaxstep.models.params import abstract_params

log = logging.getLogger(__name__)


def load_config(path: str | os.PathLike, dtype=jnp.float32, param_dtype=None) -> ModelConfig:
    """`ModelConfig` from `<path>/config.json` with compute `dtype` and `param_dtype`."""
    folder = resolve_path(path)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file}: not found (expected an HF model folder).")
    config = ModelConfig.from_hf_dict(read_config_json(config_file), source=str(config_file))
    return config.replace(dtype=jnp.dtype(dtype).name,
                          param_dtype=jnp.dtype(param_dtype or dtype).name)


def load(path: str | os.PathLike, dtype=jnp.float32, param_dtype=None) -> tuple[Decoder, dict]:
    """Loads an HF causal LM folder (or hub name) as `(Decoder, params)`.

    Args:
      path: folder with config.json and safetensors weights; a hub name if no such path.
      dtype: compute dtype of the returned model.
      param_dtype: dtype the params are stored in (default: `dtype`).

    Raises:
      UnsupportedModelError: model_type not implemented (the message lists the
        supported ones).
      KeyError / ValueError: a missing or misshapen tensor (names the file and key).
    """
    folder = resolve_path(path)
    if (folder / "config.json").is_file() and read_config_json(
            folder / "config.json")["model_type"] == "deberta-v2":
        return deberta_hf.load(folder, dtype, param_dtype)
    config = load_config(folder, dtype, param_dtype)
    keys, get = tensor_reader(folder)
    return Decoder(config), params_from_tensors(config, keys, get, source=str(folder))


def params_from_tensors(config: ModelConfig, keys, get, source: str = "checkpoint") -> dict:
    """Our params from HF tensors: `keys` (HF names) and `get(key) -> np.ndarray`.

    `params_from_tensors(cfg, sd.keys(), lambda k: sd[k].numpy())` converts a PyTorch
    state dict. Errors name `source` and the offending key.
    """
    shapes = abstract_params(config)
    available = {keymaps.canonical_hf_key(k, config): k for k in keys}
    np_dtype = np.dtype(config.params_dtype)
    params: dict = {}
    used = set()
    for hf_key, our_path, kind in keymaps.key_map(config):
        if hf_key not in available:
            raise KeyError(f"{source}: tensor {hf_key!r} missing from the checkpoint "
                           f"(model_type={config.model_type}).")
        raw = np.asarray(get(available[hf_key]))
        try:
            value = keymaps.to_ours(raw, kind, get_path(shapes, our_path).shape)
        except ValueError as e:
            raise ValueError(f"{source}: tensor {hf_key!r}: {e}") from None
        set_path(params, our_path, jnp.asarray(value.astype(np_dtype)))
        used.add(hf_key)
    unused = [k for k in available if k not in used
              and not k.endswith(keymaps.IGNORED_SUFFIXES) and k != "lm_head.weight"]
    if unused:
        log.warning("%s: %d checkpoint tensors not used, e.g. %s", source, len(unused), unused[:5])
    return params


def save(path: str | os.PathLike, model: Decoder | ModelConfig, params: dict, tokenizer=None,
         max_shard_bytes: int | None = None) -> pathlib.Path:
    """Writes `params` as an HF folder that transformers loads with equal logits.

    Args:
      path: output folder (created).
      model: the `Decoder` (or its `ModelConfig`).
      params: its params (any dtype; written in `config.param_dtype`; gathered to host).
      tokenizer: a `tokenizers.Tokenizer` or a transformers tokenizer, saved alongside.
      max_shard_bytes: split the weights into shards of at most this size with an index.

    Returns the folder.
    """
    from safetensors.numpy import save_file

    config = model if isinstance(model, ModelConfig) else model.config
    folder = pathlib.Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    np_dtype = np.dtype(config.params_dtype)
    tensors: dict[str, np.ndarray] = {}
    for hf_key, our_path, kind in keymaps.key_map(config):
        value = np.asarray(jax.device_get(get_path(params, our_path))).astype(np_dtype)
        tensors[hf_key] = keymaps.to_hf(value, kind)
    with open(folder / "config.json", "w", encoding="utf-8") as f:
        json.dump(config.to_hf_dict(), f, indent=2)
    for stale in (SAFE_SINGLE, SAFE_INDEX):
        (folder / stale).unlink(missing_ok=True)
    metadata = {"format": "pt"}
    if not max_shard_bytes:
        save_file(tensors, str(folder / SAFE_SINGLE), metadata=metadata)
    else:
        shards: list[dict[str, np.ndarray]] = [{}]
        size = 0
        for key, value in tensors.items():
            if shards[-1] and size + value.nbytes > max_shard_bytes:
                shards.append({})
                size = 0
            shards[-1][key] = value
            size += value.nbytes
        weight_map = {}
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(folder / name), metadata=metadata)
            weight_map.update({k: name for k in shard})
        index = {"metadata": {"total_size": int(sum(v.nbytes for v in tensors.values()))},
                 "weight_map": weight_map}
        with open(folder / SAFE_INDEX, "w", encoding="utf-8") as f:
            json.dump(index, f, indent=2)
    if tokenizer is not None:
        save_tokenizer(folder, tokenizer, config)
    return folder

