"""Random tiny transformers models and their conversion, shared by the model tests."""
from __future__ import annotations

import numpy as np

TINY = dict(vocab_size=96, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=128)

# name -> (model_type, extra HF config fields)
HF_CASES = {
    "qwen2_tied": ("qwen2", dict(num_key_value_heads=2, intermediate_size=112,
                                 tie_word_embeddings=True, rope_theta=10000.0)),
    "qwen2_untied": ("qwen2", dict(num_key_value_heads=2, intermediate_size=112,
                                   tie_word_embeddings=False, rope_theta=1000000.0)),
    "llama3_rope": ("llama", dict(num_key_value_heads=2, intermediate_size=112,
                                  tie_word_embeddings=False, attention_bias=True,
                                  rope_scaling=dict(rope_type="llama3", factor=8.0,
                                                    low_freq_factor=1.0, high_freq_factor=4.0,
                                                    original_max_position_embeddings=16))),
    "opt_proj": ("opt", dict(ffn_dim=112, word_embed_proj_dim=32, do_layer_norm_before=True,
                             tie_word_embeddings=True)),
    "opt_postnorm": ("opt", dict(ffn_dim=112, do_layer_norm_before=False,
                                 tie_word_embeddings=False)),
}


def hf_config(name: str):
    import transformers

    model_type, extra = HF_CASES[name]
    cls = {"qwen2": transformers.Qwen2Config, "llama": transformers.LlamaConfig,
           "opt": transformers.OPTConfig}[model_type]
    fields = dict(TINY, **extra)
    if model_type == "opt":
        fields.update(dropout=0.0, attention_dropout=0.0, pad_token_id=1, bos_token_id=2,
                      eos_token_id=2)
    else:
        fields.update(bos_token_id=1, eos_token_id=2)
    return cls(**fields)


def random_hf_model(name: str, seed: int = 0, std: float = 0.08):
    """A transformers causal LM with random weights large enough for peaked logits."""
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(hf_config(name), attn_implementation="eager")
    model = model.float().eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname and pname.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif pname.endswith("bias"):
                p.copy_(0.05 * torch.randn_like(p))
            else:
                p.copy_(std * torch.randn_like(p))
    return model


def jax_from_hf(hf_model):
    """(Decoder, params) converted in memory from a transformers model."""
    from jaxstep.models import hf
    from jaxstep.models.config import ModelConfig
    from jaxstep.models.decoder import Decoder

    config = ModelConfig.from_hf_dict(hf_model.config.to_dict())
    state = {k: v.detach().numpy() for k, v in hf_model.state_dict().items()}
    return Decoder(config), hf.params_from_tensors(config, state.keys(), state.__getitem__)


def padded_batch(vocab: int, lengths, total: int, side: str, seed: int = 0):
    """int32 ids and 0/1 mask `[batch, total]` with `lengths` real tokens per row."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, size=(len(lengths), total)).astype(np.int32)
    mask = np.zeros((len(lengths), total), np.int32)
    for i, n in enumerate(lengths):
        if side == "left":
            mask[i, total - n:] = 1
        else:
            mask[i, :n] = 1
    ids = np.where(mask == 1, ids, 0).astype(np.int32)
    return ids, mask


def hf_logits(hf_model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """transformers logits with generate-style position ids (cumsum - 1) for padding."""
    import torch

    ids_t, mask_t = torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)
    kwargs = {}
    if hf_model.config.model_type != "opt":
        pos = mask_t.cumsum(-1) - 1
        kwargs["position_ids"] = pos.masked_fill(mask_t == 0, 1)
    with torch.no_grad():
        return hf_model(input_ids=ids_t, attention_mask=mask_t, **kwargs).logits.float().numpy()


def hf_greedy(hf_model, ids: np.ndarray, mask: np.ndarray, max_new_tokens: int, eos_token_id) -> np.ndarray:
    """transformers' greedy `generate` on `ids`/`mask` (numpy) left-padded with 0: the new tokens
    `[batch, <= max_new_tokens]` (it stops early when every row has hit EOS)."""
    import torch

    with torch.no_grad():
        out = hf_model.generate(
            input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
            max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos_token_id,
            pad_token_id=0, top_k=None, top_p=None, temperature=None)
    return out.numpy()[:, ids.shape[1]:]
