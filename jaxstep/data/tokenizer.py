"""Tokenizers: a tiny BPE trained on the synthetic corpus, or any HF tokenizer folder.

The tiny tokenizer (built with `tokenizers`, wrapped as a
`transformers.PreTrainedTokenizerFast`, so a model exported with its
tokenizer.json loads in transformers):
  * digits are single tokens ("▁1" for a digit after a space, "1" otherwise), so
    numbers are spelled digit by digit and arithmetic stays learnable;
  * "\\n" is always its own token (the default step delimiter);
  * spaces become "▁" (Metaspace) and decode back exactly;
  * digits, arithmetic signs and punctuation are always in the vocabulary; other
    characters only if the corpus has them (else <unk>: use an HF tokenizer for
    real-world text);
  * special tokens: <pad>=0, <bos>=1, <eos>=2, <unk>=3.
Training is deterministic: the same corpus and vocab size give the same tokenizer.
"""
from __future__ import annotations

import contextlib
import os
import string
from typing import TYPE_CHECKING, Any, Iterable

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from jaxstep import paths
from jaxstep.data.hub import resolve_path
from jaxstep.data.sources import synthetic_difficulty
from jaxstep.data import formatting, synthetic

if TYPE_CHECKING:  # transformers is imported lazily: it is slow to import
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
TOKENIZER_FILE = "tokenizer.json"
_SPACE = "\u2581"  # "▁"
# Always in the vocabulary, whatever the corpus: digits, arithmetic and punctuation.
_ALPHABET = sorted(set(string.digits + "+-*/=#.,:;?!$%()") | {_SPACE, "\n"})


def _blank_tokenizer() -> tokenizers.Tokenizer:
    tok = tokenizers.Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split("\n", behavior="isolated"),
        pre_tokenizers.Metaspace(replacement=_SPACE, prepend_scheme="never", split=True),
        # One token per digit; a digit keeps the "▁" of the space before it.
        pre_tokenizers.Split(tokenizers.Regex(_SPACE + r"?\d"), behavior="isolated"),
    ])
    tok.decoder = decoders.Metaspace(replacement=_SPACE, prepend_scheme="never", split=True)
    return tok


def as_hf(tok: tokenizers.Tokenizer) -> PreTrainedTokenizerFast:
    """Wraps a `tokenizers.Tokenizer` with our special tokens as a transformers tokenizer."""
    from transformers import PreTrainedTokenizerFast  # noqa: PLC0415

    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, bos_token=BOS,
                                   eos_token=EOS, unk_token=UNK)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 256) -> PreTrainedTokenizerFast:
    """Trains the tiny BPE on `texts` (see the module docstring)."""
    if vocab_size < len(SPECIAL_TOKENS) + len(_ALPHABET):
        raise ValueError(f"vocab_size must be at least {len(SPECIAL_TOKENS) + len(_ALPHABET)}, got {vocab_size}")
    tok = _blank_tokenizer()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=_ALPHABET, show_progress=False)
    tok.train_from_iterator(list(texts), trainer)
    return as_hf(tok)


def synthetic_corpus(num_problems: int = 5000, *, seed: int = 0, delimiter: str = "\n",
                     **difficulty: Any) -> list[str]:
    """Prompt + rendered solution of `num_problems` synthetic train problems."""

    problems = synthetic.generate(num_problems, split="train", seed=seed, **difficulty)
    return [formatting.format_prompt(p) + formatting.render_solution(p.steps, p.answer, delimiter)
            for p in problems]


def build_tokenizer(vocab_size: int = 256, *, num_problems: int = 5000, seed: int = 0,
                    delimiter: str = "\n", **difficulty: Any) -> PreTrainedTokenizerFast:
    """The tiny tokenizer trained on the synthetic corpus (deterministic in its arguments)."""
    return train_tokenizer(synthetic_corpus(num_problems, seed=seed, delimiter=delimiter, **difficulty),
                           vocab_size)


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, folder: str | os.PathLike) -> str:
    """Saves tokenizer.json (+ the transformers config files) into `folder`; returns the folder."""
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    tokenizer.save_pretrained(folder)
    return folder


def load_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerBase:
    """A tokenizer from a tokenizer.json file or an HF tokenizer/model folder (local files only)."""
    path = os.fspath(path)
    if os.path.isfile(path):
        with _naming(path):
            return as_hf(tokenizers.Tokenizer.from_file(path))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"tokenizer {path!r}: no such file or folder")
    if os.path.isfile(os.path.join(path, TOKENIZER_FILE)):
        # Read tokenizer.json as saved. AutoTokenizer would follow a model folder's
        # config.json (e.g. model_type qwen2) and rebuild a class-specific tokenizer
        # from the vocabulary alone, losing our Metaspace/digit pre-tokenizer.
        from transformers import PreTrainedTokenizerFast  # noqa: PLC0415

        with _naming(os.path.join(path, TOKENIZER_FILE)):
            return PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)
    from transformers import AutoTokenizer  # noqa: PLC0415

    with _naming(path):
        return AutoTokenizer.from_pretrained(path, local_files_only=True)


@contextlib.contextmanager
def _naming(path: str):
    """Re-raises a tokenizer-loading failure as a ValueError naming `path`."""
    try:
        yield
    except Exception as e:  # tokenizers/transformers raise many types for a bad file
        raise ValueError(f"{path}: not a readable tokenizer ({type(e).__name__}: {e}); "
                         "re-download or re-export it") from e


def special_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int | None]:
    """pad/bos/eos ids; pad falls back to eos when a tokenizer has no pad token (e.g. Llama)."""
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    if pad is None:
        raise ValueError("tokenizer has neither a pad nor an eos token")
    return {"pad": pad, "bos": tokenizer.bos_token_id, "eos": eos}


# ----------------------------------------------------------------------------- a stage's tokenizer

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def has_tokenizer(path: str) -> bool:
    """Whether local folder `path` holds tokenizer files."""
    return bool(path) and os.path.isdir(path) and any(
        os.path.isfile(os.path.join(path, f)) for f in _TOKENIZER_FILES)


def resolve_tokenizer(config, model_path: str = ""):
    """The stage's tokenizer (a transformers tokenizer).

    Order: `config.data.tokenizer` (a folder, a tokenizer.json or a hub name); else the
    tokenizer saved in `model_path` (an export folder or HF checkpoint, local or hub);
    else the tiny BPE trained on `config.data.num_train` synthetic train problems
    (deterministic in the seed and the data knobs, so every stage rebuilds the same one).
    """
    spec = paths.local_copy(config.data.tokenizer)  # a URL is downloaded once
    if spec:
        return _load_tokenizer(spec)
    model_path = paths.local_copy(model_path)
    if model_path:
        if has_tokenizer(model_path):
            return load_tokenizer_folder(model_path)
        if not os.path.exists(model_path):  # a hub name
            return _load_tokenizer(model_path)
    return build_tokenizer(
        config.data.tokenizer_vocab_size, num_problems=max(config.data.num_train, 1),
        seed=config.seed, delimiter=config.data.step_delimiter, **synthetic_difficulty(config))


def load_tokenizer_folder(folder: str):
    """The tokenizer saved in `folder`, read faithfully from its tokenizer.json when it has one.

    transformers 5's AutoTokenizer rebuilds the tokenizer of a `qwen2` config.json from
    the vocabulary alone (ByteLevel pre-tokenizer), which breaks any other pipeline, such
    as the tiny Metaspace BPE; `PreTrainedTokenizerFast` keeps tokenizer.json as saved
    and takes the special tokens from tokenizer_config.json.
    """
    folder = os.fspath(folder)
    if os.path.isfile(os.path.join(folder, "tokenizer.json")):
        from transformers import PreTrainedTokenizerFast  # noqa: PLC0415 (slow import)
        with _naming(os.path.join(folder, TOKENIZER_FILE)):
            return PreTrainedTokenizerFast.from_pretrained(folder, local_files_only=True)
    return load_tokenizer(folder)


def _load_tokenizer(spec: str):
    if os.path.isdir(spec):
        return load_tokenizer_folder(spec)
    if os.path.exists(spec):
        return load_tokenizer(spec)
    folder = resolve_path(spec)  # downloads a hub name (only when asked for one)
    return load_tokenizer_folder(folder)
