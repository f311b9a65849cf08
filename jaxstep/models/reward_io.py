"""Reward-model folders: `save_reward_model` / `load_reward_model` and the model built
from a generator.

A reward-model folder is an HF causal-LM folder of the backbone (with the generator's
LM head) plus `score.safetensors` (the scalar head) and `reward_model.json` (kind,
likelihood feature, metadata); `load_reward_model(path)` reads it back in one call.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxstep.data import tokenizer as tokenizer_lib
from jaxstep.models import hf
import logging
import shutil
from typing import Any
from jaxstep import models, paths
from jaxstep.data import formatting
from jaxstep.parallel import placement
from safetensors.numpy import load_file, save_file
from jaxstep.models import hf_files, hf_reward
from jaxstep.models import deberta_heads  # also registers DeBERTa folders in hf_reward.ENCODER_LOADERS

logger = logging.getLogger(__name__)
KINDS = ("orm", "prm")


RM_CONFIG_FILE = "reward_model.json"


SCORE_FILE = "score.safetensors"


FORMAT = "jaxstep-reward-model"


FORMAT_VERSION = 1


def reward_model_from_generator(model: models.Decoder, params: dict, key: jax.Array,
                                boundary_ids: Sequence[int] = (), remat: bool | str | None = None):
    """`(ScalarModel, rm_params, lm_head)` from a generator: same backbone, fresh head.

    `boundary_ids` (the step delimiter's token ids) turns on the likelihood feature
    (`jaxstep.models.heads`); the LM head is then part of the params. Otherwise
    `lm_head` is the generator's untied LM head (None when tied), kept only so the
    export stays a loadable causal LM. `remat` (a `REMAT_POLICIES` name; None: the
    generator's) rematerialises the backbone's layers in training.
    """
    boundary_ids = tuple(int(i) for i in boundary_ids)
    remat = model.remat if remat is None else remat
    rm = models.ScalarModel(model.config, remat=remat, boundary_ids=boundary_ids, attention=model.attention)
    rm_params = models.scalar_params_from_decoder(params, key, model.config, likelihood=bool(boundary_ids))
    return rm, rm_params, params.get("lm_head")


def boundary_token_ids(tokenizer, delimiter: str) -> tuple[int, ...]:
    """Ids of every vocabulary token whose text contains the step delimiter (e.g. "\n", ".\n")."""
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    ids = sorted(i for i in vocab.values() if delimiter in tokenizer.decode([i]))
    if not ids:
        raise ValueError(f"no token of the tokenizer contains the step delimiter {delimiter!r}; "
                         "the likelihood feature needs one (set rm.likelihood_feature=False)")
    return tuple(ids)


def save_reward_model(path: str, model: models.ScalarModel, params: dict, tokenizer, kind: str, *,
                      lm_head: Any = None, metadata: dict | None = None) -> str:
    """Writes a reward model as an HF causal-LM folder + `score.safetensors` + `reward_model.json`.

    Args:
      path: output folder (replaced; written beside it, then renamed).
      model, params: the ScalarModel and its `{"decoder", "score"}` params.
      tokenizer: saved with it.
      kind: "orm" or "prm".
      lm_head: the generator's LM head `[embed, vocab]` for an untied model (None: tied,
        or zeros are written for an untied one; it is never used for scoring).
      metadata: extra JSON fields for reward_model.json (labels, loss, ...).
    """


    if kind not in KINDS:
        raise ValueError(f"reward-model kind must be one of {KINDS}, got {kind!r}")
    if isinstance(model, deberta_heads.DebertaRewardModel):  # an encoder: HF classification folder
        return deberta_heads.save_reward_model(path, model, params, tokenizer, kind, metadata=metadata)
    config = model.config
    params = placement.to_host(params)
    if placement.is_main_process():
        target = path  # a remote folder is written locally, then copied
        if paths.is_remote(target):
            path = paths.join(paths.local_dir("jaxstep_export_"), paths.basename(target))
        decoder = dict(params["decoder"])
        if not config.tie_word_embeddings and "lm_head" in decoder:
            lm_head = decoder.pop("lm_head")  # the likelihood feature's trained LM head
        if not config.tie_word_embeddings:
            if lm_head is None:
                logger.warning("save_reward_model: untied model without an LM head; writing zeros")
                lm_head = np.zeros((config.embed_dim, config.vocab_size), np.float32)
            decoder["lm_head"] = np.asarray(jax.device_get(lm_head))
        tmp = path + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        hf.save(tmp, config, decoder, tokenizer=tokenizer)
        kernel = np.asarray(params["score"]["kernel"], np.float32)  # [embed, 1]
        bias = np.asarray(params["score"]["bias"], np.float32).reshape(1)
        head = {"score.weight": np.ascontiguousarray(kernel.T), "score.bias": bias}
        if model.boundary_ids:
            head["likelihood.weight"] = np.asarray(params["likelihood"]["weight"], np.float32).reshape(1)
        save_file(head, os.path.join(tmp, SCORE_FILE), metadata={"format": "pt"})
        info = {"format": FORMAT, "version": FORMAT_VERSION, "kind": kind,
                "score_position": "step_ends" if kind == "prm" else "last_token",
                "score_activation": "sigmoid", "score_file": SCORE_FILE,
                "prompt_template": formatting.PROMPT_TEMPLATE,
                "step_delimiter": formatting.DEFAULT_DELIMITER,
                "likelihood_boundary_ids": list(model.boundary_ids), **(metadata or {})}
        with open(os.path.join(tmp, RM_CONFIG_FILE), "w", encoding="utf-8") as f:
            json.dump(info, f, indent=2)
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
        if target != path:
            path = paths.upload_folder(path, target)
    placement.sync("jaxstep_save_reward_model")
    return path


def is_reward_model(path: str) -> bool:
    """Whether `path` (local or a URL) is a folder written by `save_reward_model`."""
    return bool(path) and paths.isfile(paths.join(path, RM_CONFIG_FILE))


def read_reward_model_info(path: str) -> dict:
    """The folder's reward_model.json (kind, score position, delimiter, training metadata)."""
    file = os.path.join(path, RM_CONFIG_FILE)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{file}: not found (expected a reward-model folder written by "
                                "jaxstep.train.reward_models.save_reward_model)")
    info = hf_files.read_json(pathlib.Path(file), RM_CONFIG_FILE)
    if info.get("format") != FORMAT or info.get("kind") not in KINDS:
        raise ValueError(f"{file}: not a {FORMAT} file (format={info.get('format')!r}, "
                         f"kind={info.get('kind')!r})")
    return info


def load_reward_model(path: str, dtype=jnp.float32, param_dtype=jnp.float32, **hf_options):
    """Loads a reward-model folder in one call.

    Args:
      path: a folder written by `save_reward_model` (e.g. `<prm workdir>/export`), or a
        public HF reward-model folder without reward_model.json (SequenceClassification
        ORM, TokenClassification PRM, Math-Shepherd causal LM: `jaxstep.models.hf_reward`).
      dtype: compute dtype of the model; param_dtype: dtype of the returned params.
      hf_options: `step_tag`, `good_token`, `bad_token` for `jaxstep.models.hf_reward.load`.

    Returns:
      `(model, params, tokenizer, kind)`: a `ScalarModel`, its params
      `{"decoder": ..., "score": {"kernel" [embed, 1], "bias" [1]}}`, the tokenizer
      saved with it, and "orm" or "prm" (for a public folder, `hf_reward.load`'s model).
      Score with `jaxstep.rewards.scoring`.
    """
    path = paths.local_copy(path)  # a URL is downloaded once
    if not os.path.isfile(os.path.join(path, RM_CONFIG_FILE)) and os.path.isfile(os.path.join(path, "config.json")):
        return hf_reward.load(path, dtype=dtype, param_dtype=param_dtype, **hf_options)
    info = read_reward_model_info(path)
    if info.get("backbone") == "deberta":  # jaxstep.models.deberta_heads
        model, params, kind = deberta_heads.load_hf(path, dtype=dtype, param_dtype=param_dtype)
        return model, params, tokenizer_lib.load_tokenizer(path), kind
    decoder, decoder_params = hf.load(path, dtype=dtype, param_dtype=param_dtype)
    boundary_ids = tuple(int(i) for i in info.get("likelihood_boundary_ids") or ())
    if not boundary_ids:
        decoder_params = {k: v for k, v in decoder_params.items() if k != "lm_head"}
    head_file = os.path.join(path, info.get("score_file", SCORE_FILE))
    if not os.path.isfile(head_file):
        raise FileNotFoundError(f"{head_file}: the reward model's score head is missing")
    try:
        head = load_file(head_file)
    except Exception as e:  # safetensors raises SafetensorError / OSError
        raise ValueError(f"{head_file}: not a readable safetensors file ({e}); re-download or "
                         "re-export it") from None
    weight = head.get("score.weight")
    if weight is None or weight.shape != (1, decoder.config.embed_dim):
        raise ValueError(f"{head_file}: expected 'score.weight' of shape (1, {decoder.config.embed_dim}), "
                         f"got {None if weight is None else weight.shape}")
    bias = head.get("score.bias", np.zeros((1,), np.float32)).reshape(1)
    params = {"decoder": decoder_params,
              "score": {"kernel": jnp.asarray(weight.T, param_dtype), "bias": jnp.asarray(bias, param_dtype)}}
    if boundary_ids:
        if "likelihood.weight" not in head:
            raise ValueError(f"{head_file}: reward_model.json names likelihood boundary ids but "
                             "'likelihood.weight' is missing")
        params["likelihood"] = {"weight": jnp.asarray(head["likelihood.weight"].reshape(1), jnp.float32)}
    tokenizer = tokenizer_lib.load_tokenizer(path)
    return models.ScalarModel(decoder.config, boundary_ids=boundary_ids), params, tokenizer, info["kind"]
