"""Tiny DeBERTa reward-model pieces for the tests: random-weight transformers task models,
a sentencepiece DeBERTa tokenizer trained on synthetic problems, and a DeBERTa-v3 style
HF folder (config.json + model.safetensors + spm.model) to train reward models from."""
from __future__ import annotations

import io
import pathlib

import numpy as np

from jaxstep import config_lib
from jaxstep.data import formatting, sources

TINY = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0, pooler_dropout=0.0, pad_token_id=0)
# DeBERTa-v3's options: relative attention with c2p and p2c, log buckets, shared keys.
V3 = dict(relative_attention=True, position_biased_input=False, pos_att_type=["p2c", "c2p"],
          position_buckets=8, max_relative_positions=-1, share_att_key=True, norm_rel_ebd="layer_norm")


def randomize(model, seed: int = 0, std: float = 0.2):
    """Non-trivial random weights (LayerNorm scales around 1, biases and embeddings too)."""
    import torch
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            elif "embeddings" in name:
                p.copy_(torch.randn_like(p))
            else:
                p.copy_(std * torch.randn_like(p))
    return model


def random_task_model(cls_name: str, seed: int = 0, num_labels: int = 1, **extra):
    """An eager float32 transformers `DebertaV2For<...>` with random weights."""
    import transformers
    config = transformers.DebertaV2Config(**{**TINY, **V3, **extra}, num_labels=num_labels)
    model = getattr(transformers, cls_name)(config).float().eval()
    model.config._attn_implementation = "eager"
    return randomize(model, seed)


def synthetic_texts(n: int = 300) -> tuple[list, list[str]]:
    """`n` synthetic train problems and their reference solutions (steps on lines)."""
    c = config_lib.base_config("deberta_helpers", "prm")
    c.data.num_train = n
    problems = sources.load_problems(c, "synthetic", "train")[:n]
    return problems, [formatting.reference_solution(p, "\n") for p in problems]


def train_spm(vocab_size: int = 200) -> bytes:
    """A unigram sentencepiece model in DeBERTa-v3's layout ([PAD] 0, [UNK] 1, [CLS] 2,
    [SEP] 3, [MASK]) trained on synthetic prompts and solutions."""
    import sentencepiece as spm
    problems, solutions = synthetic_texts()
    texts = [formatting.format_prompts([p], formatting.PROMPT_TEMPLATE)[0] + s
             for p, s in zip(problems, solutions)]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(t.replace("\n", " ") for t in texts), model_writer=buf, vocab_size=vocab_size,
        model_type="unigram", pad_id=0, unk_id=1, bos_id=2, eos_id=3, pad_piece="[PAD]",
        unk_piece="[UNK]", bos_piece="[CLS]", eos_piece="[SEP]", user_defined_symbols=["[MASK]"],
        hard_vocab_limit=False, minloglevel=2, num_threads=1)
    return buf.getvalue()


def deberta_folder(path, *, seed: int = 0, vocab_size: int = 256) -> pathlib.Path:
    """A DeBERTa-v3 style encoder folder with random weights and a sentencepiece tokenizer
    (what `rm.init_from` points at; microsoft/deberta-v3-large in the real presets)."""
    import transformers
    folder = pathlib.Path(path)
    config = transformers.DebertaV2Config(**{**TINY, **V3, "vocab_size": vocab_size})
    model = randomize(transformers.DebertaV2Model(config).float().eval(), seed, std=0.1)
    model.save_pretrained(folder)
    (folder / "spm.model").write_bytes(train_spm())
    return folder


def padded(vocab: int, lengths, total: int, seed: int = 0):
    """Random ids `[len(lengths), total]` (1..vocab-1), right-padded with 0, and the mask."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(4, vocab, size=(len(lengths), total)).astype(np.int32)
    mask = (np.arange(total)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
    return np.where(mask == 1, ids, 0).astype(np.int32), mask
