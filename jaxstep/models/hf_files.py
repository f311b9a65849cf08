"""Reading and writing the files of a Hugging Face model folder: config.json, safetensors
(single or sharded; pytorch_model.bin when torch is installed) and tokenizer files.

Every read names the file it failed on (a truncated download, a corrupt config.json)."""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import numpy as np

from jaxstep.models.config import ModelConfig, UnsupportedModelError

SAFE_SINGLE = "model.safetensors"


SAFE_INDEX = "model.safetensors.index.json"


TORCH_SINGLE = "pytorch_model.bin"


def read_json(file: pathlib.Path, what: str = "JSON") -> dict:
    """The JSON object in `file`; a ValueError naming the file when it is not one."""
    try:
        d = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{file}: not a readable {what} file ({e}); re-download or "
                         "re-export it") from None
    if not isinstance(d, dict):
        raise ValueError(f"{file}: expected a JSON object, got {type(d).__name__}")
    return d


def read_config_json(file: pathlib.Path) -> dict:
    """An HF config.json as a dict; ValueError naming the file if it is not valid JSON or
    has no model_type."""
    d = read_json(file, "config.json")
    if not d.get("model_type"):
        raise UnsupportedModelError(f"{file}: no 'model_type' field; an HF model folder's config.json "
                         "names its architecture (e.g. \"qwen2\", \"llama\")")
    return d


def safe_open_file(file: pathlib.Path):
    from safetensors import safe_open

    try:
        return safe_open(str(file), framework="numpy")
    except Exception as e:  # safetensors raises SafetensorError / OSError
        raise ValueError(f"{file}: not a readable safetensors file ({e}); re-download or "
                         "re-export it") from None


def tensor_reader(folder: pathlib.Path):
    """Returns (keys, get(key) -> np.ndarray) over the folder's checkpoint files."""
    index_file, single = folder / SAFE_INDEX, folder / SAFE_SINGLE
    if index_file.is_file():
        weight_map = read_json(index_file, SAFE_INDEX).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index_file}: no 'weight_map' object; re-download or re-export it")
    elif single.is_file():
        with safe_open_file(single) as f:
            weight_map = {k: SAFE_SINGLE for k in f.keys()}
    elif (folder / TORCH_SINGLE).is_file():
        return torch_reader(folder / TORCH_SINGLE)
    else:
        raise FileNotFoundError(
            f"{folder}: no {SAFE_SINGLE}, {SAFE_INDEX} or {TORCH_SINGLE} found.")
    handles: dict[str, Any] = {}

    def get(key: str) -> np.ndarray:
        name = weight_map[key]
        if name not in handles:
            file = folder / name
            if not file.is_file():
                raise FileNotFoundError(f"{file}: listed in {SAFE_INDEX} for {key!r} but missing.")
            handles[name] = safe_open_file(file)
        try:
            return handles[name].get_tensor(key)
        except Exception as e:  # a file cut short after its header
            raise ValueError(f"{folder / name}: tensor {key!r} not readable ({e}); "
                             "re-download or re-export it") from None

    return list(weight_map), get


def torch_reader(file: pathlib.Path):
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"{file}: reading .bin checkpoints needs torch; convert the "
                          "checkpoint to safetensors or install torch.") from e
    state = torch.load(str(file), map_location="cpu", weights_only=True)
    return list(state), lambda key: state[key].float().numpy()


def set_path(tree: dict, path: tuple[str, ...], value) -> None:
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


def get_path(tree: dict, path: tuple[str, ...]):
    for name in path:
        tree = tree[name]
    return tree


def save_tokenizer(folder: str | os.PathLike, tokenizer, config: ModelConfig | None = None) -> None:
    """Saves a `tokenizers.Tokenizer` (wrapped as a fast tokenizer) or a transformers one."""
    import tokenizers

    if isinstance(tokenizer, tokenizers.Tokenizer):
        from transformers import PreTrainedTokenizerFast

        special = {}
        if config is not None:
            for name, token_id in (("bos_token", config.bos_token_id),
                                   ("eos_token", config.eos_token_id),
                                   ("pad_token", config.pad_token_id)):
                if isinstance(token_id, tuple):
                    token_id = token_id[0]
                if token_id is not None and tokenizer.id_to_token(token_id) is not None:
                    special[name] = tokenizer.id_to_token(token_id)
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokenizer, **special)
    tokenizer.save_pretrained(str(folder))
