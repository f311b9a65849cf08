"""`ModelConfig`: the architecture of a decoder, and its HF `config.json` mapping.

One frozen (hashable) dataclass covers the Llama/Qwen2 family (llama, qwen2, mistral,
qwen3) and OPT. `ModelConfig.from_hf_dict` reads a transformers `config.json` (v4 style
`rope_theta`/`rope_scaling` or v5 style `rope_parameters`); `to_hf_dict` writes one that
`transformers.AutoConfig` reads back to the same architecture.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

# model_type -> HF class name written to `architectures`.
HF_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "opt": "OPTForCausalLM",
}
SUPPORTED_MODEL_TYPES = tuple(HF_ARCHITECTURES)
LLAMA_FAMILY = ("llama", "qwen2", "mistral", "qwen3")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


class UnsupportedModelError(ValueError):
    """A checkpoint whose architecture this package does not implement."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Decoder architecture. Field names follow HF where one exists.

    Llama family: RMSNorm, RoPE, GQA, SwiGLU; `attention_bias` adds q/k/v biases
    (Qwen2 always has them), `attention_out_bias` an o_proj bias (Llama's
    `attention_bias` sets both), `qk_norm` per-head RMSNorm on q and k (Qwen3).
    OPT: learned positions (offset 2), LayerNorm before (`do_layer_norm_before`) or
    after each block, ReLU MLP, `project_in`/`project_out` when
    `word_embed_proj_dim != hidden_size`.
    """

    model_type: str = "qwen2"
    vocab_size: int = 256
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 0  # 0 = hidden_size // num_heads (filled in on construction)
    intermediate_size: int = 344
    max_position_embeddings: int = 2048
    norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    # Llama family.
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, Any], ...] | None = None  # sorted (key, value) pairs
    attention_bias: bool = False
    attention_out_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    sliding_window: int | None = None
    # OPT.
    do_layer_norm_before: bool = True
    word_embed_proj_dim: int = 0  # 0 = hidden_size
    enable_bias: bool = True
    activation: str = "silu"  # silu (gated SwiGLU) | relu | gelu (OPT, plain MLP)
    remove_final_layer_norm: bool = False
    # Token ids (kept for export and the sampler).
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    # Numerics: compute dtype and stored parameter dtype.
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        if not self.head_dim:  # store the derived size, so configs compare equal
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedModelError(
                f"model_type {self.model_type!r} is not supported; supported: "
                f"{', '.join(SUPPORTED_MODEL_TYPES)}.")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} must be a multiple of "
                             f"num_kv_heads={self.num_kv_heads}.")
        if self.rope_scaling is not None:
            rope_type = dict(self.rope_scaling).get("rope_type", "default")
            if rope_type not in SUPPORTED_ROPE_TYPES:
                raise UnsupportedModelError(
                    f"rope_type {rope_type!r} is not supported; supported: "
                    f"{', '.join(SUPPORTED_ROPE_TYPES)}.")

    # Derived sizes.
    @property
    def is_opt(self) -> bool:
        return self.model_type == "opt"

    @property
    def head_size(self) -> int:
        """Per-head size (`head_dim`, else hidden_size // num_heads)."""
        return self.head_dim

    @property
    def embed_dim(self) -> int:
        """Width of the token embedding and of the LM head input (OPT's proj dim)."""
        return self.word_embed_proj_dim or self.hidden_size

    @property
    def gated_mlp(self) -> bool:
        return self.activation == "silu" and not self.is_opt

    @property
    def rope_scaling_dict(self) -> dict[str, Any]:
        return dict(self.rope_scaling or ())

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    @property
    def params_dtype(self):
        return jnp.dtype(self.param_dtype)

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    # HF interop.
    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], source: str = "config.json") -> "ModelConfig":
        """Builds a config from a transformers `config.json` dict.

        Raises `UnsupportedModelError` naming `source` and the supported model types
        when `model_type` (or a feature such as a RoPE type) is not implemented.
        """
        model_type = d.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedModelError(
                f"{source}: model_type {model_type!r} (architectures="
                f"{d.get('architectures')}) is not supported; supported model types: "
                f"{', '.join(SUPPORTED_MODEL_TYPES)}.")
        common = dict(
            model_type=model_type,
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            num_layers=d["num_hidden_layers"],
            num_heads=d["num_attention_heads"],
            max_position_embeddings=d.get("max_position_embeddings", 2048),
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=_as_hashable(d.get("eos_token_id")),
            pad_token_id=d.get("pad_token_id"),
        )
        if model_type == "opt":
            if not d.get("layer_norm_elementwise_affine", True):
                raise UnsupportedModelError(
                    f"{source}: OPT with layer_norm_elementwise_affine=False is not supported.")
            activation = d.get("activation_function", "relu")
            if activation not in ("relu", "gelu"):
                raise UnsupportedModelError(
                    f"{source}: OPT activation_function {activation!r} is not supported "
                    "(relu, gelu).")
            return cls(
                **common,
                num_kv_heads=d["num_attention_heads"],
                intermediate_size=d["ffn_dim"],
                norm_eps=1e-5,
                tie_word_embeddings=d.get("tie_word_embeddings", True),
                do_layer_norm_before=d.get("do_layer_norm_before", True),
                word_embed_proj_dim=d.get("word_embed_proj_dim") or d["hidden_size"],
                enable_bias=d.get("enable_bias", True),
                activation=activation,
                remove_final_layer_norm=d.get("_remove_final_layer_norm", False),
            )
        rope = dict(d.get("rope_parameters") or d.get("rope_scaling") or {})
        if rope and any(isinstance(v, dict) for v in rope.values()):
            raise UnsupportedModelError(f"{source}: per-layer-type rope_parameters are not supported.")
        rope_theta = rope.pop("rope_theta", d.get("rope_theta", 10000.0))
        if "type" in rope and "rope_type" not in rope:
            rope["rope_type"] = rope.pop("type")
        rope_type = rope.get("rope_type", "default")
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise UnsupportedModelError(
                f"{source}: rope_type {rope_type!r} is not supported; supported: "
                f"{', '.join(SUPPORTED_ROPE_TYPES)}.")
        if rope.get("partial_rotary_factor", d.get("partial_rotary_factor", 1.0)) != 1.0:
            raise UnsupportedModelError(f"{source}: partial_rotary_factor != 1 is not supported.")
        rope.pop("partial_rotary_factor", None)
        sliding_window = None
        if model_type == "mistral":
            sliding_window = d.get("sliding_window")
        elif model_type in ("qwen2", "qwen3") and d.get("use_sliding_window", False):
            raise UnsupportedModelError(
                f"{source}: {model_type} with use_sliding_window=True is not supported.")
        attention_bias = d.get("attention_bias", False)
        return cls(
            **common,
            num_kv_heads=d.get("num_key_value_heads") or d["num_attention_heads"],
            head_dim=d.get("head_dim") or 0,
            intermediate_size=d["intermediate_size"],
            norm_eps=d.get("rms_norm_eps", 1e-6),
            tie_word_embeddings=d.get("tie_word_embeddings", False),
            rope_theta=float(rope_theta),
            rope_scaling=(tuple(sorted(rope.items())) if rope_type != "default" else None),
            attention_bias=True if model_type == "qwen2" else attention_bias,
            attention_out_bias=attention_bias if model_type == "llama" else False,
            mlp_bias=d.get("mlp_bias", False) if model_type == "llama" else False,
            qk_norm=model_type == "qwen3",
            sliding_window=sliding_window,
            activation=d.get("hidden_act", "silu"),
        )

    def to_hf_dict(self) -> dict[str, Any]:
        """A transformers `config.json` dict for this architecture (float32 weights)."""
        d: dict[str, Any] = dict(
            architectures=[HF_ARCHITECTURES[self.model_type]],
            model_type=self.model_type,
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            max_position_embeddings=self.max_position_embeddings,
            tie_word_embeddings=self.tie_word_embeddings,
            bos_token_id=self.bos_token_id,
            eos_token_id=(list(self.eos_token_id) if isinstance(self.eos_token_id, tuple)
                          else self.eos_token_id),
            pad_token_id=self.pad_token_id,
            torch_dtype=self.param_dtype,
            dtype=self.param_dtype,
        )
        if self.is_opt:
            d.update(
                ffn_dim=self.intermediate_size,
                do_layer_norm_before=self.do_layer_norm_before,
                word_embed_proj_dim=self.embed_dim,
                enable_bias=self.enable_bias,
                activation_function=self.activation,
                _remove_final_layer_norm=self.remove_final_layer_norm,
                layer_norm_elementwise_affine=True,
                dropout=0.0,
                attention_dropout=0.0,
            )
            return d
        rope = {"rope_type": "default", **self.rope_scaling_dict, "rope_theta": self.rope_theta}
        d.update(
            num_key_value_heads=self.num_kv_heads,
            head_dim=self.head_size,
            intermediate_size=self.intermediate_size,
            rms_norm_eps=self.norm_eps,
            hidden_act=self.activation,
            rope_theta=self.rope_theta,
            rope_parameters=rope,
            attention_dropout=0.0,
        )
        if self.rope_scaling is not None:
            d["rope_scaling"] = dict(rope)  # transformers v4 readers
        if self.model_type == "llama":
            d.update(attention_bias=self.attention_bias, mlp_bias=self.mlp_bias)
        if self.model_type == "qwen3":
            d.update(attention_bias=self.attention_bias)
        if self.model_type in ("qwen2", "qwen3"):
            d.update(use_sliding_window=False, sliding_window=None,
                     max_window_layers=self.num_layers)
        if self.model_type == "mistral":
            d.update(sliding_window=self.sliding_window)
        return d


def _as_hashable(value):
    return tuple(value) if isinstance(value, list) else value


def tiny(vocab_size: int = 256, *, model_type: str = "qwen2", hidden_size: int = 128,
         num_layers: int = 4, num_heads: int = 4, num_kv_heads: int = 2,
         intermediate_size: int = 344, max_position_embeddings: int = 512,
         tie_word_embeddings: bool = True, **overrides) -> ModelConfig:
    """The built-in small model trained from scratch (Qwen2-style by default).

    `model_type="opt"` gives an OPT of the same width (ReLU MLP, learned positions);
    `"llama"` a Llama without biases. Extra keyword arguments override any field.
    """
    if model_type == "opt":
        base = dict(num_kv_heads=num_heads, activation="relu", norm_eps=1e-5)
    elif model_type == "qwen2":
        base = dict(num_kv_heads=num_kv_heads, attention_bias=True)
    else:
        base = dict(num_kv_heads=num_kv_heads)
    fields = dict(model_type=model_type, vocab_size=vocab_size, hidden_size=hidden_size,
                  num_layers=num_layers, num_heads=num_heads,
                  intermediate_size=intermediate_size,
                  max_position_embeddings=max_position_embeddings,
                  tie_word_embeddings=tie_word_embeddings, **base)
    fields.update(overrides)
    return ModelConfig(**fields)
