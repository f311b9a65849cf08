"""DeBERTa ORM/PRM heads (jaxstep.models.deberta_heads) against transformers' task models,
the block-causal PRM's prefix property, HF folders and reward-model folders."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from deberta_helpers import TINY, padded, random_task_model  # noqa: E402
from jaxstep.models import deberta_heads, hf_reward, reward_io  # noqa: E402
from jaxstep.rewards import scoring  # noqa: E402

TOL = 1e-4


def _from_torch(hf_model, tmp_path, name):
    hf_model.save_pretrained(tmp_path / name)
    return deberta_heads.load_hf(tmp_path / name)


def test_block_ids_and_mask_hand_values():
    ends = jnp.array([[1, 4, 6], [2, 0, 0]])
    smask = jnp.array([[True, True, False], [True, False, False]])
    blocks = deberta_heads.block_ids(ends, smask, 8)
    # Row 0: ends at 1 and 4 (the third is masked): 0,0 | 1,1,1 | 2,2,2.
    np.testing.assert_array_equal(blocks, [[0, 0, 1, 1, 1, 2, 2, 2], [0, 0, 0, 1, 1, 1, 1, 1]])
    mask = np.asarray(deberta_heads.block_causal_mask(ends, smask, 8))
    assert mask[0, 1, 1] and not mask[0, 1, 2]  # step 0 does not see step 1
    assert mask[0, 3, 0] and mask[0, 3, 4] and not mask[0, 4, 5]  # step 1 sees the question, not step 2
    assert mask[0, 7].all()  # the last block sees everything
    np.testing.assert_array_equal(deberta_heads.first_token_index(jnp.array([[0, 0, 1, 1], [1, 1, 0, 0]])),
                                  [2, 0])


def test_orm_matches_sequence_classification(tmp_path):
    hf_model = random_task_model("DebertaV2ForSequenceClassification", seed=1)
    model, params, kind = _from_torch(hf_model, tmp_path, "orm")
    assert kind == "orm" and model.kind == "orm" and not model.needs_step_ends
    ids, mask = padded(TINY["vocab_size"], [12, 7, 3], 12, seed=2)
    with torch.no_grad():
        expected = hf_model(input_ids=torch.tensor(ids, dtype=torch.long),
                            attention_mask=torch.tensor(mask)).logits[:, 0].numpy()
    logits = np.asarray(model.apply({"params": params}, ids, attention_mask=mask))
    assert logits.shape == ids.shape and logits.dtype == np.float32
    got = np.asarray(scoring.score_outcome(model, params, jnp.asarray(ids), jnp.asarray(mask), probabilities=False))
    np.testing.assert_allclose(got, expected, atol=TOL)
    # Left padding (the PPO layout): the [CLS] is the first real token, relative
    # positions do not move, so the score is the same.
    left_ids, left_mask = np.zeros_like(ids), np.zeros_like(mask)
    for b, n in enumerate(mask.sum(1)):
        left_ids[b, 12 - n:], left_mask[b, 12 - n:] = ids[b, :n], 1
    left = scoring.score_outcome(model, params, jnp.asarray(left_ids), jnp.asarray(left_mask), probabilities=False)
    np.testing.assert_allclose(np.asarray(left), expected, atol=TOL)


def _hf_block_causal_token_logits(hf_model, ids, mask, pair_mask):
    """transformers' TokenClassification logits with a 3-D (query, key) attention mask,
    fed to its encoder (the model's own forward would also apply it to the embeddings)."""
    with torch.no_grad():
        ids_t, mask_t = torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)
        emb = hf_model.deberta.embeddings(input_ids=ids_t, mask=mask_t)
        full = torch.tensor(pair_mask & mask[:, :, None].astype(bool) & mask[:, None, :].astype(bool),
                            dtype=torch.long)
        hidden = hf_model.deberta.encoder(emb, full, output_hidden_states=False).last_hidden_state
        return hf_model.classifier(hidden)[..., 0].numpy()


def test_block_causal_prm_matches_transformers_with_the_same_mask(tmp_path):
    hf_model = random_task_model("DebertaV2ForTokenClassification", seed=3)
    model, params, kind = _from_torch(hf_model, tmp_path, "prm")
    assert kind == "prm" and not model.block_causal  # a public folder: bidirectional
    model = model.clone(block_causal=True)
    ids, mask = padded(TINY["vocab_size"], [16, 11], 16, seed=4)
    ends = np.array([[4, 9, 15], [3, 7, 10]], np.int32)
    smask = np.array([[True, True, True], [True, True, False]])
    pair = np.asarray(deberta_heads.block_causal_mask(ends, smask, 16))
    expected = _hf_block_causal_token_logits(hf_model, ids, mask, pair)
    got = np.asarray(model.apply({"params": params}, ids, attention_mask=mask, step_ends=ends, step_mask=smask))
    diff = np.abs(got - expected)[mask == 1].max()
    assert diff <= TOL, diff
    # Without step ends it is transformers' bidirectional token classifier.
    with torch.no_grad():
        plain = hf_model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask)).logits
    np.testing.assert_allclose(np.asarray(model.apply({"params": params}, ids, attention_mask=mask))[mask == 1],
                               plain[..., 0].numpy()[mask == 1], atol=TOL)


def test_earlier_step_scores_do_not_depend_on_later_steps(tmp_path):
    hf_model = random_task_model("DebertaV2ForTokenClassification", seed=5)
    model, params, _ = _from_torch(hf_model, tmp_path, "prm")
    causal, bidirectional = model.clone(block_causal=True), model.clone(block_causal=False)
    ids, mask = padded(TINY["vocab_size"], [18], 18, seed=6)
    ends, smask = np.array([[5, 10, 17]], np.int32), np.ones((1, 3), bool)
    changed = ids.copy()
    changed[0, 11:18] = (changed[0, 11:18] + 7) % (TINY["vocab_size"] - 4) + 4  # rewrite step 2
    assert (changed != ids).sum() == 7

    def scores(m, x):
        return np.asarray(scoring.score_steps(m, params, jnp.asarray(x), jnp.asarray(mask), ends, smask,
                                              probabilities=False))

    a, b = scores(causal, ids), scores(causal, changed)
    np.testing.assert_allclose(a[0, :2], b[0, :2], atol=1e-6)  # steps 0 and 1 unchanged
    assert abs(a[0, 2] - b[0, 2]) > 1e-3  # step 2 itself changed
    a, b = scores(bidirectional, ids), scores(bidirectional, changed)
    assert np.abs(a[0, :2] - b[0, :2]).max() > 1e-3  # a plain encoder fails the property


@pytest.mark.parametrize("kind", ["orm", "prm"])
def test_save_hf_reloads_in_transformers_and_back(tmp_path, kind):
    from jaxstep.models import deberta_hf

    encoder = random_task_model("DebertaV2ForTokenClassification", seed=7)  # its deberta.* weights
    enc_cfg = deberta_heads.DebertaConfig.from_hf_dict(encoder.config.to_dict())
    state = {k: v.numpy() for k, v in encoder.state_dict().items()}
    enc_params = deberta_hf.params_from_tensors(enc_cfg, state.keys(), state.__getitem__)
    model, params = deberta_heads.init_from_encoder(deberta_heads.DebertaEncoder(enc_cfg), enc_params, kind,
                                                    jax.random.key(0))
    params = jax.tree.map(lambda x: x + 0.05, params)  # a non-zero bias too
    folder = deberta_heads.save_hf(tmp_path / kind, model, params)
    cls = transformers.AutoModelForSequenceClassification if kind == "orm" else \
        transformers.AutoModelForTokenClassification
    reloaded, info = cls.from_pretrained(folder, output_loading_info=True, attn_implementation="eager")
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ids, mask = padded(TINY["vocab_size"], [9, 5], 9, seed=8)
    with torch.no_grad():
        expected = reloaded.float().eval()(input_ids=torch.tensor(ids, dtype=torch.long),
                                           attention_mask=torch.tensor(mask)).logits[..., 0].numpy()
    plain = model.clone(block_causal=False)  # transformers runs the PRM bidirectionally
    got = np.asarray(plain.apply({"params": params}, ids, attention_mask=mask))
    if kind == "orm":
        got = got[:, 0]
    else:
        got, expected = got[mask == 1], expected[mask == 1]
    np.testing.assert_allclose(got, expected, atol=TOL)
    again, params2, kind2 = deberta_heads.load_hf(folder)
    assert kind2 == kind and again.block_causal == (kind == "prm") and again.step_positions == "offsets"
    jax.tree.map(np.testing.assert_array_equal, params, params2)
    # The public-format loader reaches it too (registered in hf_reward.ENCODER_LOADERS).
    assert deberta_heads.ARCHITECTURES[kind] in hf_reward.ENCODER_LOADERS


def test_reward_model_folder_round_trip(tmp_path):
    from deberta_helpers import deberta_folder
    from jaxstep.data import tokenizer as tokenizer_lib
    from jaxstep.models import deberta_hf

    base = deberta_folder(tmp_path / "base", seed=9)
    encoder, enc_params = deberta_hf.load(base)
    tokenizer = tokenizer_lib.load_tokenizer(str(base))
    model, params = deberta_heads.init_from_encoder(encoder, enc_params, "prm", jax.random.key(1))
    path = reward_io.save_reward_model(str(tmp_path / "export"), model, params, tokenizer, "prm",
                                       metadata={"labels": "exact"})
    assert reward_io.is_reward_model(path)
    info = reward_io.read_reward_model_info(path)
    assert info["backbone"] == "deberta" and info["block_causal"] and info["labels"] == "exact"
    loaded, loaded_params, loaded_tok, kind = reward_io.load_reward_model(path)
    assert kind == "prm" and loaded.needs_step_ends and loaded_tok("so we add")["input_ids"] == \
        tokenizer("so we add")["input_ids"]
    ids, mask = padded(200, [10, 6], 10, seed=10)
    ends, smask = np.array([[3, 9], [2, 5]], np.int32), np.ones((2, 2), bool)
    a = scoring.score_steps(model, params, ids, mask, ends, smask)
    b = scoring.score_steps(loaded, loaded_params, ids, mask, ends, smask)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_losses_give_the_block_causal_prm_its_step_ends(tmp_path):
    """rm.loss bce and bt on a DeBERTa PRM: the training losses equal hand-computed BCE /
    Bradley-Terry values of the model's block-causal scores at the targets."""
    from deberta_helpers import deberta_folder, synthetic_texts
    from jaxstep.data import tokenizer as tokenizer_lib
    from jaxstep.models import deberta_hf
    from jaxstep.rewards import losses
    from jaxstep.rm import encoding
    from jaxstep.rm import labels as labels_lib

    base = deberta_folder(tmp_path / "base", seed=11)
    encoder, enc_params = deberta_hf.load(base)
    tok = tokenizer_lib.load_tokenizer(str(base))
    model, params = deberta_heads.init_from_encoder(encoder, enc_params, "prm", jax.random.key(2))
    params["classifier"]["kernel"] = params["classifier"]["kernel"] * 50  # scores away from 0
    problems, _ = synthetic_texts(4)
    steps = ("Dan has 3 + 2 = 5 apples.", "Tom has 5 - 1 = 4 apples.", "#### 4")
    record = labels_lib.StepLabels(problem=problems[0], steps=steps, labels=(1.0, 0.0, 1.0), correct=True)
    enc = encoding.encode_labeled([record], tok, 96, kind="prm", step_positions="offsets")
    batch = {k: jnp.asarray(v) for k, v in enc.items() if k in ("ids", "mask", "step_ends", "step_mask",
                                                                 "labels", "label_mask", "lm_mask")}
    logits = np.asarray(model.apply({"params": params}, enc["ids"], attention_mask=enc["mask"],
                                    step_ends=enc["step_ends"], step_mask=enc["step_mask"]))
    z = logits[0, enc["step_ends"][0, :3]]
    want = np.mean([np.log1p(np.exp(-z[0])), np.log1p(np.exp(z[1])), np.log1p(np.exp(-z[2]))])
    value, _ = losses.batch_loss(model, params, batch, "bce")
    np.testing.assert_allclose(float(value), want, rtol=1e-5)
    # Bradley-Terry: chosen and rejected alternatives of step 1 after the same prefix.
    pair = labels_lib.StepPreference(problems[0], steps[:1], "Tom has 5 - 1 = 4 apples.", "Tom has 9 apples.")
    enc = encoding.encode_pairs([pair], tok, 96, step_positions="offsets", with_steps=True)
    assert enc["step_ends"].shape[:2] == (1, 2) and enc["step_mask"][0].sum(-1).tolist() == [2, 2]
    scores = []
    for side in range(2):
        ids, mask = enc["ids"][:, side], enc["mask"][:, side]
        out = np.asarray(model.apply({"params": params}, ids, attention_mask=mask,
                                     step_ends=enc["step_ends"][:, side], step_mask=enc["step_mask"][:, side]))
        scores.append(out[0, enc["target"][0, side]])
    want = np.log1p(np.exp(-(scores[0] - scores[1])))
    value, _ = losses.batch_loss(model, params, {k: jnp.asarray(v) for k, v in enc.items()}, "bt")
    np.testing.assert_allclose(float(value), want, rtol=1e-5)
