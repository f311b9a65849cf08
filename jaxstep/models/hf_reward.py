"""Public Hugging Face reward models as jaxstep reward models (no reward_model.json needed).

`jaxstep.models.reward_io.load_reward_model(path)` comes here for a folder without
reward_model.json and dispatches on config.json's `architectures`:

  * `<Decoder>ForSequenceClassification` (Llama, Qwen2, Mistral, Qwen3, OPT): an ORM.
    transformers' `score` Linear (no bias) on the last hidden state, read at the last
    non-pad token.
  * `<Decoder>ForTokenClassification` (TRL's PRM format): a PRM. `score` Linear (with
    bias unless `token_classification_bias` is false) at every token; a step's score
    is read at the step separator that follows it (layout "separator": the separator,
    `data.step_delimiter`, after every step, the last one included).
  * `<Decoder>ForCausalLM` (Math-Shepherd style): a PRM whose step score is the LM's
    preference of the "good" over the "bad" token at a step-tag token placed after
    each step (layout "step_tag": `step <tag><delimiter>` per step). Math-Shepherd's
    defaults: tag "ки", good "+", bad "-".
  * `DebertaV2ForSequenceClassification` / `DebertaV2ForTokenClassification`: the
    DeBERTa encoder reward models; registered in `ENCODER_LOADERS` by
    `jaxstep.models.deberta` when that wiring exists.

Every model keeps the reward-model contract of `jaxstep.rewards.scoring`:
`model.apply({"params": p}, ids, attention_mask=mask, positions=pos)` -> `[batch, time]`
float32 logits whose sigmoid is the probability that the step / solution is correct:
one label -> that logit; two labels -> logit(class 1) - logit(class 0) (so sigmoid =
softmax probability of class 1); Math-Shepherd -> logit(good) - logit(bad) (so sigmoid =
p(good) / (p(good) + p(bad))). `layout_of(model)` says how a response is written for it
(`format_response`); `jaxstep.rl.rollout.reward_model_batch` applies it.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxstep.data import formatting
from jaxstep.data import tokenizer as tokenizer_lib
from jaxstep.data.hub import resolve_path
from jaxstep.models import hf
from jaxstep.models.config import ModelConfig, UnsupportedModelError
from jaxstep.models.decoder import Decoder
from jaxstep.models.hf_files import read_config_json, tensor_reader

# Math-Shepherd's step tag and label tokens (peiyi9979/math-shepherd-mistral-7b-prm).
STEP_TAG, GOOD_TOKEN, BAD_TOKEN = "ки", "+", "-"

LAYOUTS = ("plain", "separator", "step_tag")

# architecture name -> loader(folder, hf_config_dict, dtype, param_dtype) -> (model, params, kind),
# for the encoder reward models that live elsewhere (DeBERTa: jaxstep.models.deberta).
ENCODER_LOADERS: dict[str, Callable] = {}


@dataclasses.dataclass(frozen=True)
class Layout:
    """How a response is written for a reward model and where its steps end.

    name: "plain" (the response as generated; a step ends at the token holding its
      delimiter, the answer line at its last token), "separator" (the delimiter after
      every step, the last one included; a step ends at its separator) or "step_tag"
      (`step <tag><delimiter>` per step; a step ends at its tag token).
    step_tag: the tag of "step_tag".
    """
    name: str = "plain"
    step_tag: str = ""


def class_logit(logits: jnp.ndarray) -> jnp.ndarray:
    """`[..., num_labels]` classifier logits -> `[...]` float32 "correct" logit.

    One label: that logit. Two labels: logit(1) - logit(0), whose sigmoid is the
    softmax probability of class 1.
    """
    logits = jnp.asarray(logits, jnp.float32)
    if logits.shape[-1] == 1:
        return logits[..., 0]
    if logits.shape[-1] == 2:
        return logits[..., 1] - logits[..., 0]
    raise ValueError(f"a reward classifier needs 1 or 2 labels, got {logits.shape[-1]}")


def format_response(text: str, layout: Layout, delimiter: str) -> tuple[str, str]:
    """`(text, marker)`: the response written for `layout` and the string whose token ends
    each step there (`jaxstep.data.batching.step_ends_from_tokens` finds it).

    "plain": `(text, delimiter)`. "separator": steps `a`, `b` -> `"a<d>b<d>"`.
    "step_tag": -> `"a <tag><d>b <tag><d>"`, marker the tag.
    """
    if layout.name == "plain":
        return text, delimiter
    steps = formatting.split_steps(text, delimiter)
    if layout.name == "separator":
        return "".join(s + delimiter for s in steps), delimiter
    if layout.name == "step_tag":
        return "".join(f"{s} {layout.step_tag}{delimiter}" for s in steps), layout.step_tag
    raise ValueError(f"unknown reward-model layout {layout.name!r}; expected one of {LAYOUTS}")


def layout_of(model) -> Layout:
    """The layout a reward model reads (our own ScalarModel and the ORMs: "plain")."""
    return Layout(getattr(model, "layout", "plain"), getattr(model, "step_tag", ""))


class ClassifierRM(nn.Module):
    """A decoder with transformers' `score` Linear: ids `[batch, time]` -> `[batch, time]`
    float32 `class_logit` of the per-position classifier logits (Sequence- and
    TokenClassification share the head; the first reads one position, the second many)."""

    config: ModelConfig
    num_labels: int = 1
    use_bias: bool = False
    layout: str = "plain"  # "separator" for a TokenClassification PRM

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, positions=None):
        hidden = Decoder(self.config, name="decoder")(input_ids, attention_mask, positions, lm_head=False)
        head = nn.Dense(self.num_labels, use_bias=self.use_bias, dtype=jnp.float32,
                        param_dtype=self.config.params_dtype, name="score",
                        kernel_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ("embed", None)),
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (None,)))
        return class_logit(head(hidden.astype(jnp.float32)))


class StepTagRM(nn.Module):
    """Math-Shepherd: a causal LM's logit(good) - logit(bad) at every position, `[batch, time]`
    float32. Only the two LM-head columns are kept (`tag_head` `[embed, 2]`: bad, good, as
    a two-label classifier whose class 1 is good), so no `[batch, time, vocab]` logits
    are formed."""

    config: ModelConfig
    step_tag: str = STEP_TAG
    layout: str = "step_tag"

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, positions=None):
        hidden = Decoder(self.config, name="decoder")(input_ids, attention_mask, positions, lm_head=False)
        head = nn.Dense(2, use_bias=False, dtype=jnp.float32, param_dtype=self.config.params_dtype,
                        name="tag_head",
                        kernel_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ("embed", None)))
        return class_logit(head(hidden.astype(jnp.float32)))  # good - bad


def single_token_id(tokenizer, text: str, what: str) -> int:
    """The id of `text` as the tokenizer writes it inside a text (the last token of its
    encoding); a ValueError naming `what` when it is not exactly one token."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"{what} {text!r} is {len(ids)} tokens ({ids}) in this reward model's tokenizer; "
                         "it must be exactly one")
    return int(ids[0])


def _decoder_params(folder, config: ModelConfig) -> dict:
    keys, get = tensor_reader(folder)
    keys = [k for k in keys if not k.startswith("score.")]  # the classifier head is read apart
    return hf.params_from_tensors(config, keys, get, source=str(folder))


def _score_head(folder, embed_dim: int, num_labels: int, use_bias: bool, np_dtype) -> dict:
    keys, get = tensor_reader(folder)
    if "score.weight" not in keys:
        raise KeyError(f"{folder}: tensor 'score.weight' missing (a *ForSequenceClassification / "
                       "*ForTokenClassification checkpoint has one)")
    weight = np.asarray(get("score.weight"), np.float32)
    if weight.shape != (num_labels, embed_dim):
        raise ValueError(f"{folder}: 'score.weight' has shape {weight.shape}, expected {(num_labels, embed_dim)}")
    head = {"kernel": jnp.asarray(weight.T.astype(np_dtype))}
    if use_bias:
        bias = np.asarray(get("score.bias"), np.float32) if "score.bias" in keys else np.zeros(num_labels)
        head["bias"] = jnp.asarray(bias.reshape(num_labels).astype(np_dtype))
    return head


def load(path: str | os.PathLike, dtype=jnp.float32, param_dtype=None, *, step_tag: str = STEP_TAG,
         good_token: str = GOOD_TOKEN, bad_token: str = BAD_TOKEN):
    """A public HF reward-model folder as `(model, params, tokenizer, kind)`.

    Args:
      path: a local folder (or hub name) with config.json, weights and tokenizer files.
      dtype, param_dtype: compute and parameter dtypes (param_dtype default: dtype).
      step_tag, good_token, bad_token: Math-Shepherd's tag and label tokens (a
        `*ForCausalLM` folder); each must be one token of the folder's tokenizer.

    Returns:
      The model (`ClassifierRM` or `StepTagRM`: `[batch, time]` float32 logits), its
      params (`{"decoder", "score"}` or `{"decoder", "tag_head"}`), the tokenizer and
      "orm" (SequenceClassification) or "prm" (TokenClassification, Math-Shepherd).
    """
    folder = resolve_path(path)
    hf_dict = read_config_json(folder / "config.json")
    arch = (hf_dict.get("architectures") or [""])[0]
    if arch in ENCODER_LOADERS:
        model, params, kind = ENCODER_LOADERS[arch](folder, hf_dict, dtype, param_dtype)
        return model, params, tokenizer_lib.load_tokenizer(str(folder)), kind
    if hf_dict["model_type"] == "deberta-v2":
        raise UnsupportedModelError(f"{folder / 'config.json'}: {arch or 'DeBERTa'} reward models load "
                                    "through jaxstep.models.deberta, which has not registered a loader "
                                    "for this architecture yet (hf_reward.ENCODER_LOADERS)")
    config = hf.load_config(folder, dtype, param_dtype)
    tokenizer = tokenizer_lib.load_tokenizer(str(folder))
    np_dtype = np.dtype(config.params_dtype)
    num_labels = int(hf_dict.get("num_labels") or len(hf_dict.get("id2label") or {}) or 2)
    if arch.endswith(("ForSequenceClassification", "ForTokenClassification")):
        token = arch.endswith("ForTokenClassification")
        use_bias = token and bool(hf_dict.get("token_classification_bias", True))
        # No LM head in a classifier checkpoint: load the backbone as tied (the head is unused).
        config = config.replace(tie_word_embeddings=True)
        model = ClassifierRM(config, num_labels=num_labels, use_bias=use_bias,
                             layout="separator" if token else "plain")
        class_logit(jnp.zeros((num_labels,)))  # raises for > 2 labels
        params = {"decoder": _decoder_params(folder, config),
                  "score": _score_head(folder, config.embed_dim, num_labels, use_bias, np_dtype)}
        return model, params, tokenizer, "prm" if token else "orm"
    if arch.endswith("ForCausalLM"):
        ids = [single_token_id(tokenizer, t, w) for t, w in
               ((good_token, "ppo.rm_good_token"), (bad_token, "ppo.rm_bad_token"))]
        single_token_id(tokenizer, step_tag, "ppo.rm_step_tag")
        decoder = _decoder_params(folder, config)
        kernel = decoder["embed"]["embedding"].T if config.tie_word_embeddings else decoder.pop("lm_head")
        params = {"decoder": decoder, "tag_head": {"kernel": jnp.asarray(kernel[:, ids[::-1]])}}  # bad, good
        return StepTagRM(config, step_tag=step_tag), params, tokenizer, "prm"
    raise UnsupportedModelError(
        f"{folder / 'config.json'}: architectures={hf_dict.get('architectures')} is not a reward model "
        "jaxstep reads: expected *ForSequenceClassification (ORM), *ForTokenClassification (TRL PRM), "
        "*ForCausalLM (Math-Shepherd PRM) or a folder with reward_model.json")
