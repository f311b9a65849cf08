"""ORM and PRM heads on the DeBERTa-v2/v3 encoder (`jaxstep.models.deberta`).

    model, params = init_from_encoder(encoder, encoder_params, "prm", key)
    logits = model.apply({"params": params}, ids, attention_mask=mask, positions=None,
                         step_ends=ends, step_mask=smask)         # [batch, time] float32

Both keep the reward-model contract of `jaxstep.rewards.scoring`: `[batch, time]` float32
logits whose sigmoid is the probability that the solution / step is correct.

  * ORM (`kind="orm"`): transformers' `DebertaV2ForSequenceClassification` head: the
    ContextPooler (Dense + activation on the hidden state of the first token, the [CLS]
    token of a DeBERTa tokenizer) and a Dense classifier. The first REAL token is pooled
    (transformers pools index 0; the same for right padding, and left-padded rows still
    pool their [CLS]). An encoder has no "last token so far": the one score is returned at
    every position, so `scoring.score_outcome` reading the last real token gets it.
  * PRM (`kind="prm"`): transformers' `DebertaV2ForTokenClassification` head (a Dense
    classifier on every token), read at each step's last token. A bidirectional encoder
    would let a step's score depend on LATER steps (a wrong step 3 would lower the
    score of step 1), which a PRM must not. With `block_causal` (the default) the
    attention mask is block-causal over steps in one forward pass: token t belongs to
    block `b(t)` = the number of step ends strictly before t (`block_ids`), and a query
    sees a key iff `b(key) <= b(query)`. Block 0 is the question together with the first
    step (the step ends alone do not say where the question stops; the question never
    sees a later step, so this changes nothing for the rule); block k is step k, and
    tokens after the last step end (EOS, padding) form the last block. So a step's score
    depends only on the question and the steps up to it, in every layer. The model needs
    the step ends inside the forward: it declares `needs_step_ends`, and
    `jaxstep.rewards.scoring` then passes `step_ends` / `step_mask`.

Step ends for these models come from the tokenizer's character offsets (sentencepiece
DeBERTa tokenizers drop the newline delimiter): `step_positions = "offsets"`, see
`jaxstep.data.step_offsets`.

Params: `{"encoder": <DebertaEncoder params>, "classifier": {"kernel" [hidden, labels],
"bias" [labels]}}` plus `"pooler": {"kernel" [hidden, pooler], "bias"}` for the ORM.
HF folders (`save_hf` / `load_hf`) use transformers' names (`deberta.*`, `pooler.dense.*`,
`classifier.*`), so transformers loads them as the task models; `load_hf` also reads
public `DebertaV2ForSequenceClassification` / `DebertaV2ForTokenClassification` folders
(registered in `jaxstep.models.hf_reward.ENCODER_LOADERS`).
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxstep.models import deberta_hf, hf_reward
from jaxstep.models.deberta import ACTIVATIONS, DebertaConfig, DebertaEncoder
from jaxstep.models.hf_files import read_config_json, tensor_reader

KINDS = ("orm", "prm")
ARCHITECTURES = {"orm": "DebertaV2ForSequenceClassification", "prm": "DebertaV2ForTokenClassification"}
HEAD_INIT_STD = 0.02
# config.json fields of our exports (transformers ignores unknown fields).
BLOCK_CAUSAL_FIELD = "jaxstep_block_causal"
STEP_POSITIONS_FIELD = "jaxstep_step_positions"


def block_ids(step_ends: jax.Array, step_mask: jax.Array, time: int) -> jax.Array:
    """Block of every position: the number of real step ends strictly before it.

    Args:
      step_ends: int `[batch, steps]` index of each step's last token.
      step_mask: bool `[batch, steps]` real steps (others are ignored).
      time: T.

    Returns:
      int32 `[batch, time]`: 0 up to and including the first step end, k after the
      k-th step end.
    """
    ends = jnp.where(jnp.asarray(step_mask, bool), jnp.asarray(step_ends, jnp.int32), time)
    t = jnp.arange(time, dtype=jnp.int32)
    return jnp.sum(ends[:, None, :] < t[None, :, None], axis=-1).astype(jnp.int32)


def block_causal_mask(step_ends: jax.Array, step_mask: jax.Array, time: int) -> jax.Array:
    """bool `[batch, time, time]` (query, key): True where `block(key) <= block(query)`."""
    blocks = block_ids(step_ends, step_mask, time)
    return blocks[:, None, :] <= blocks[:, :, None]


def first_token_index(mask: jax.Array) -> jax.Array:
    """Index of the first position where `mask [batch, time]` is set -> `[batch]` int32."""
    return jnp.argmax(jnp.asarray(mask, bool), axis=1).astype(jnp.int32)


def _dense(features: int, axes: tuple, name: str, param_dtype) -> nn.Dense:
    return nn.Dense(features, dtype=jnp.float32, param_dtype=param_dtype, name=name,
                    kernel_init=nn.with_logical_partitioning(nn.initializers.normal(HEAD_INIT_STD), axes),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes[-1],)))


class DebertaRewardModel(nn.Module):
    """A DeBERTa encoder with an ORM (pooled) or PRM (per-token) head; see the module docstring.

    Attributes:
      config: the encoder architecture.
      kind: "orm" or "prm".
      block_causal: PRM only: block-causal attention over steps when step ends are given.
      num_labels: 1 (the logit) or 2 (logit(1) - logit(0), `hf_reward.class_logit`).
      pooler_size: ORM pooler width (0 = hidden_size); pooler_act: its activation.
      remat: rematerialise each encoder layer in the backward pass.
      layout, step_positions: how responses are written for it and where its steps end
        (read by the rollout and the reward-model encoders).
    """

    config: DebertaConfig
    kind: str = "prm"
    block_causal: bool = True
    num_labels: int = 1
    pooler_size: int = 0
    pooler_act: str = "gelu"
    remat: bool = False
    layout: str = "plain"
    step_positions: str = "offsets"

    @property
    def needs_step_ends(self) -> bool:
        """Whether the forward takes `step_ends` / `step_mask` (block-causal PRM)."""
        return self.kind == "prm" and self.block_causal

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, positions=None, step_ends=None, step_mask=None):
        """`[batch, time]` float32 logits.

        Args:
          input_ids: int `[batch, time]`; attention_mask: `[batch, time]` 1 on real tokens.
          positions: `[batch, time]` absolute positions (used only by encoders with
            `position_biased_input`; None = 0..time-1).
          step_ends, step_mask: `[batch, steps]` (PRM with `block_causal`): the blocks of
            the attention mask. None = plain bidirectional attention.
        """
        if self.kind not in KINDS:
            raise ValueError(f"DebertaRewardModel.kind must be one of {KINDS}, got {self.kind!r}")
        cfg = self.config
        B, T = input_ids.shape
        mask = jnp.ones((B, T), bool) if attention_mask is None else jnp.asarray(attention_mask, bool)
        pair_mask = None
        if self.needs_step_ends and step_ends is not None:
            smask = jnp.ones(step_ends.shape, bool) if step_mask is None else step_mask
            pair_mask = block_causal_mask(step_ends, smask, T)
        hidden = DebertaEncoder(cfg, remat=self.remat, name="encoder")(
            input_ids, mask, position_ids=positions if cfg.position_biased_input else None,
            pair_mask=pair_mask)
        if self.kind == "prm":
            return hf_reward.class_logit(_dense(self.num_labels, ("embed", None), "classifier",
                                                cfg.params_dtype)(hidden))
        first = jnp.take_along_axis(hidden, first_token_index(mask)[:, None, None], axis=1)[:, 0]
        pooled = _dense(self.pooler_size or cfg.hidden_size, ("embed", None), "pooler", cfg.params_dtype)(first)
        pooled = ACTIVATIONS[self.pooler_act](pooled)
        logit = hf_reward.class_logit(_dense(self.num_labels, (None, None), "classifier",
                                             cfg.params_dtype)(pooled))
        return jnp.broadcast_to(logit[:, None], (B, T))


def init_from_encoder(encoder: DebertaEncoder, encoder_params: dict, kind: str, key: jax.Array, *,
                      block_causal: bool = True, remat: bool = False) -> tuple[DebertaRewardModel, dict]:
    """`(DebertaRewardModel, params)`: the encoder's weights and a fresh head (kernels
    N(0, 0.02^2) from `key`, biases 0), as transformers initialises its task heads."""
    model = DebertaRewardModel(encoder.config, kind=kind, block_causal=block_causal, remat=remat)
    shapes = nn.meta.unbox(jax.eval_shape(lambda: model.init(key, jnp.zeros((1, 2), jnp.int32))["params"]))
    params = {"encoder": encoder_params}
    for i, name in enumerate(sorted(k for k in shapes if k != "encoder")):  # pooler, classifier
        kernel, bias = shapes[name]["kernel"], shapes[name]["bias"]
        params[name] = {"kernel": HEAD_INIT_STD * jax.random.normal(jax.random.fold_in(key, i), kernel.shape,
                                                                      kernel.dtype),
                        "bias": jnp.zeros(bias.shape, bias.dtype)}
    return model, params


# ----------------------------------------------------------------------------- HF folders


def head_tensors(model: DebertaRewardModel, params: dict) -> dict[str, np.ndarray]:
    """transformers' head tensors (`classifier.*`, ORM also `pooler.dense.*`), float32."""
    def linear(p):
        return (np.asarray(jax.device_get(p["kernel"]), np.float32).T,
                np.asarray(jax.device_get(p["bias"]), np.float32))
    out = dict(zip(("classifier.weight", "classifier.bias"), linear(params["classifier"])))
    if model.kind == "orm":
        out.update(zip(("pooler.dense.weight", "pooler.dense.bias"), linear(params["pooler"])))
    return out


def save_hf(path: str | os.PathLike, model: DebertaRewardModel, params: dict, tokenizer=None) -> pathlib.Path:
    """Writes the model as a transformers `DebertaV2ForSequenceClassification` (ORM) or
    `DebertaV2ForTokenClassification` (PRM) folder, plus the tokenizer when given.
    config.json also records `jaxstep_block_causal` and `jaxstep_step_positions`
    (transformers itself runs the PRM bidirectionally)."""
    n = model.num_labels
    extra = {"architectures": [ARCHITECTURES[model.kind]], "num_labels": n,
             "id2label": {str(i): f"LABEL_{i}" for i in range(n)},
             "label2id": {f"LABEL_{i}": i for i in range(n)},
             "pooler_hidden_size": model.pooler_size or model.config.hidden_size,
             "pooler_hidden_act": model.pooler_act, "pooler_dropout": 0.0,
             "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
             BLOCK_CAUSAL_FIELD: bool(model.block_causal and model.kind == "prm"),
             STEP_POSITIONS_FIELD: model.step_positions}
    return deberta_hf.save(path, model.config, params["encoder"], tokenizer, prefix=deberta_hf.PREFIX,
                           extra_tensors=head_tensors(model, params), extra_config=extra)


def module_from_hf_dict(config: DebertaConfig, hf_dict: dict, source: str = "config.json") -> DebertaRewardModel:
    """The `DebertaRewardModel` (no weights) of a DeBERTa classification folder's config.json
    dict: kind from `architectures`, labels, pooler, block-causal flag and step positions.
    Raises ValueError naming `source` for another architecture."""
    arch = (hf_dict.get("architectures") or [""])[0]
    kinds = {v: k for k, v in ARCHITECTURES.items()}
    if arch not in kinds:
        raise ValueError(f"{source}: architectures={hf_dict.get('architectures')}; "
                         f"expected one of {sorted(kinds)}")
    kind = kinds[arch]
    num_labels = int(hf_dict.get("num_labels") or len(hf_dict.get("id2label") or {}) or 2)
    return DebertaRewardModel(
        config, kind=kind, block_causal=bool(hf_dict.get(BLOCK_CAUSAL_FIELD, False)), num_labels=num_labels,
        pooler_size=int(hf_dict.get("pooler_hidden_size") or 0) if kind == "orm" else 0,
        pooler_act=hf_dict.get("pooler_hidden_act", "gelu"),
        step_positions=hf_dict.get(STEP_POSITIONS_FIELD, "offsets"))


def load_hf(path: str | os.PathLike, hf_dict: dict | None = None, dtype=jnp.float32, param_dtype=None):
    """A DeBERTa classification folder as `(DebertaRewardModel, params, kind)`.

    Our exports keep their block-causal flag; a public `DebertaV2ForTokenClassification`
    folder (no flag) is a bidirectional PRM read at each step's last token.
    """
    folder = pathlib.Path(path)
    hf_dict = hf_dict if hf_dict is not None else read_config_json(folder / "config.json")
    config = deberta_hf.load_config(folder, dtype, param_dtype)
    model = module_from_hf_dict(config, hf_dict, str(folder / "config.json"))
    kind, arch, num_labels = model.kind, ARCHITECTURES[model.kind], model.num_labels
    keys, get = tensor_reader(folder)
    np_dtype = np.dtype(config.params_dtype)
    params = {"encoder": deberta_hf.params_from_tensors(config, keys, get, source=str(folder))}
    keyset = set(keys)
    for ours, hf_name in (("classifier", "classifier"), ("pooler", "pooler.dense"))[:2 if kind == "orm" else 1]:
        if f"{hf_name}.weight" not in keyset:
            raise KeyError(f"{folder}: tensor {hf_name + '.weight'!r} missing (a {arch} checkpoint has one)")
        weight = np.asarray(get(f"{hf_name}.weight"), np.float32)
        bias = (np.asarray(get(f"{hf_name}.bias"), np.float32) if f"{hf_name}.bias" in keyset
                else np.zeros(weight.shape[0], np.float32))
        params[ours] = {"kernel": jnp.asarray(weight.T.astype(np_dtype)), "bias": jnp.asarray(bias.astype(np_dtype))}
    expected = (model.pooler_size or config.hidden_size) if kind == "orm" else config.hidden_size
    if params["classifier"]["kernel"].shape != (expected, num_labels):
        raise ValueError(f"{folder}: 'classifier.weight' has shape {params['classifier']['kernel'].T.shape}, "
                         f"expected {(num_labels, expected)}")
    return model, params, kind


def _load_for_registry(folder, hf_dict, dtype, param_dtype):
    return load_hf(folder, hf_dict, dtype, param_dtype)


for _arch in ARCHITECTURES.values():  # public DeBERTa reward-model folders (no reward_model.json)
    hf_reward.ENCODER_LOADERS[_arch] = _load_for_registry


def save_reward_model(path: str, model: DebertaRewardModel, params: dict, tokenizer, kind: str, *,
                      metadata: dict | None = None) -> str:
    """A reward-model folder (`jaxstep.models.reward_io` layout: reward_model.json with
    `backbone: deberta`) whose weights are an HF classification folder (`save_hf`)."""
    from jaxstep import paths  # noqa: PLC0415
    from jaxstep.data import formatting  # noqa: PLC0415
    from jaxstep.models import reward_io  # noqa: PLC0415  (reward_io imports this module)
    from jaxstep.parallel import placement  # noqa: PLC0415

    if kind != model.kind:
        raise ValueError(f"save_reward_model: kind {kind!r} but the model is an {model.kind.upper()}")
    params = placement.to_host(params)
    if placement.is_main_process():
        target = path
        if paths.is_remote(target):
            path = paths.join(paths.local_dir("jaxstep_export_"), paths.basename(target))
        tmp = path + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        save_hf(tmp, model, params, tokenizer)
        info = {"format": reward_io.FORMAT, "version": reward_io.FORMAT_VERSION, "kind": kind,
                "backbone": "deberta", "block_causal": bool(model.needs_step_ends),
                "step_positions": model.step_positions,
                "score_position": "step_ends" if kind == "prm" else "last_token",
                "score_activation": "sigmoid", "prompt_template": formatting.PROMPT_TEMPLATE,
                "step_delimiter": formatting.DEFAULT_DELIMITER, **(metadata or {})}
        with open(os.path.join(tmp, reward_io.RM_CONFIG_FILE), "w", encoding="utf-8") as f:
            json.dump(info, f, indent=2)
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
        if target != path:
            path = paths.upload_folder(path, target)
    placement.sync("jaxstep_save_deberta_reward_model")
    return path
