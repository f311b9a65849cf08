"""Per-architecture maps between HF checkpoint keys and our parameter paths (Tunix style).

Each entry is `(hf_key, our_path, kind)`:
  - kind `("linear", n_in)`: an HF `nn.Linear` weight `[out, in]` <-> our kernel whose
    first `n_in` axes are the input (e.g. q_proj `[embed, heads, head_dim]`, o_proj
    `[heads, head_dim, embed]`): ours = W.T reshaped; HF = ours flattened to 2-D, .T.
  - kind `"bias"`: an HF vector <-> our bias of shape e.g. `[heads, head_dim]`.
  - kind `"copy"`: same array both sides (embeddings, norm scales).
All conversions are exact (transposes and reshapes only).
"""
from __future__ import annotations

import math
import numpy as np

from jaxstep.models.config import ModelConfig

Entry = tuple[str, tuple[str, ...], object]

# HF keys that carry no parameters we need (recomputed buffers).
IGNORED_SUFFIXES = ("rotary_emb.inv_freq", "masked_bias", "attn.bias")


def _path(s: str) -> tuple[str, ...]:
    return tuple(s.split("/"))


def _llama_family(cfg: ModelConfig) -> list[Entry]:
    lin1, lin2, vec, copy = ("linear", 1), ("linear", 2), "bias", "copy"
    entries: list[Entry] = [("model.embed_tokens.weight", _path("embed/embedding"), copy),
                            ("model.norm.weight", _path("final_norm/scale"), copy)]
    for i in range(cfg.num_layers):
        hf, ours = f"model.layers.{i}", f"layers_{i}"
        for name in ("q_proj", "k_proj", "v_proj"):
            entries.append((f"{hf}.self_attn.{name}.weight", _path(f"{ours}/attn/{name}/kernel"), lin1))
            if cfg.attention_bias:
                entries.append((f"{hf}.self_attn.{name}.bias", _path(f"{ours}/attn/{name}/bias"), vec))
        entries.append((f"{hf}.self_attn.o_proj.weight", _path(f"{ours}/attn/o_proj/kernel"), lin2))
        if cfg.attention_out_bias:
            entries.append((f"{hf}.self_attn.o_proj.bias", _path(f"{ours}/attn/o_proj/bias"), vec))
        if cfg.qk_norm:
            entries.append((f"{hf}.self_attn.q_norm.weight", _path(f"{ours}/attn/q_norm/scale"), vec))
            entries.append((f"{hf}.self_attn.k_norm.weight", _path(f"{ours}/attn/k_norm/scale"), vec))
        for name in ("gate_proj", "up_proj", "down_proj"):
            entries.append((f"{hf}.mlp.{name}.weight", _path(f"{ours}/mlp/{name}/kernel"), lin1))
            if cfg.mlp_bias:
                entries.append((f"{hf}.mlp.{name}.bias", _path(f"{ours}/mlp/{name}/bias"), vec))
        entries.append((f"{hf}.input_layernorm.weight", _path(f"{ours}/attn_norm/scale"), vec))
        entries.append((f"{hf}.post_attention_layernorm.weight", _path(f"{ours}/mlp_norm/scale"), vec))
    return entries


def _opt(cfg: ModelConfig) -> list[Entry]:
    lin1, lin2, vec = ("linear", 1), ("linear", 2), "bias"
    d = "model.decoder"
    entries: list[Entry] = [(f"{d}.embed_tokens.weight", _path("embed/embedding"), "copy"),
                            (f"{d}.embed_positions.weight", _path("pos_embed"), "copy")]
    if cfg.embed_dim != cfg.hidden_size:
        entries += [(f"{d}.project_in.weight", _path("project_in/kernel"), lin1),
                    (f"{d}.project_out.weight", _path("project_out/kernel"), lin1)]
    if cfg.do_layer_norm_before and not cfg.remove_final_layer_norm:
        entries += [(f"{d}.final_layer_norm.weight", _path("final_norm/scale"), vec),
                    (f"{d}.final_layer_norm.bias", _path("final_norm/bias"), vec)]
    for i in range(cfg.num_layers):
        hf, ours = f"{d}.layers.{i}", f"layers_{i}"
        for hf_name, name, kind in (("q_proj", "q_proj", lin1), ("k_proj", "k_proj", lin1),
                                    ("v_proj", "v_proj", lin1), ("out_proj", "o_proj", lin2)):
            entries.append((f"{hf}.self_attn.{hf_name}.weight", _path(f"{ours}/attn/{name}/kernel"), kind))
            if cfg.enable_bias:
                entries.append((f"{hf}.self_attn.{hf_name}.bias", _path(f"{ours}/attn/{name}/bias"), vec))
        for hf_name, name in (("fc1", "up_proj"), ("fc2", "down_proj")):
            entries.append((f"{hf}.{hf_name}.weight", _path(f"{ours}/mlp/{name}/kernel"), lin1))
            if cfg.enable_bias:
                entries.append((f"{hf}.{hf_name}.bias", _path(f"{ours}/mlp/{name}/bias"), vec))
        for hf_name, name in (("self_attn_layer_norm", "attn_norm"), ("final_layer_norm", "mlp_norm")):
            entries.append((f"{hf}.{hf_name}.weight", _path(f"{ours}/{name}/scale"), vec))
            entries.append((f"{hf}.{hf_name}.bias", _path(f"{ours}/{name}/bias"), vec))
    return entries


def key_map(cfg: ModelConfig) -> list[Entry]:
    """Every `(hf_key, our_path, kind)` of the architecture `cfg` (lm_head when untied)."""
    entries = _opt(cfg) if cfg.is_opt else _llama_family(cfg)
    if not cfg.tie_word_embeddings:
        entries.append(("lm_head.weight", ("lm_head",), ("linear", 1)))
    return entries


def to_ours(hf_value: np.ndarray, kind, our_shape: tuple[int, ...]) -> np.ndarray:
    """HF tensor -> our parameter of `our_shape` (raises ValueError on a size mismatch)."""
    if kind in ("copy", "bias"):
        if hf_value.size != math.prod(our_shape) or (kind == "copy" and hf_value.shape != tuple(our_shape)):
            raise ValueError(f"shape {hf_value.shape}, expected {tuple(our_shape)}")
        return hf_value.reshape(our_shape)
    if hf_value.ndim != 2 or hf_value.size != math.prod(our_shape):
        raise ValueError(f"shape {hf_value.shape} does not fit a kernel of shape {tuple(our_shape)}")
    return np.ascontiguousarray(hf_value.T).reshape(our_shape)


def to_hf(value: np.ndarray, kind) -> np.ndarray:
    """Our parameter -> HF tensor."""
    if kind == "copy":
        return np.ascontiguousarray(value)
    if kind == "bias":
        return np.ascontiguousarray(value.reshape(-1))
    _, n_in = kind
    rows = math.prod(value.shape[:n_in])
    return np.ascontiguousarray(value.reshape(rows, -1).T)


def canonical_hf_key(key: str, cfg: ModelConfig) -> str:
    """Adds the `model.` prefix some checkpoints (e.g. facebook/opt-*) leave out."""
    if key.startswith(("model.", "lm_head.")):
        return key
    return "model." + key
